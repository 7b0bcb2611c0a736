# Dropping things: DROP DATABASE of a served database works without FORCE (the worker leaves, and
# comes back if the drop fails; CREATE DATABASE ... TEMPLATE too, and the worker comes back); only who may drop the database makes its worker leave; after a
# drop (with or without FORCE) the launcher starts no worker for the database that is gone, until
# it is created again; DROP EXTENSION pg_courier CASCADE keeps the outbox tables with their rows,
# and courier.adopt_outbox() takes them back under a new installation.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start;
my $url = $sink->url('/hook');
my $node = CourierTest::node('drop', databases => 'postgres, dd');

# make_served_db: create dd with an outbox and wait for its worker.
sub make_served_db
{
	$node->safe_psql('postgres', 'CREATE DATABASE dd');
	$node->safe_psql('dd', 'CREATE EXTENSION pg_courier');
	$node->safe_psql('dd', qq{SELECT courier.create_outbox('ob', '$url')});
	return CourierTest::wait_until(sub { CourierTest::worker_pid($node, 'dd') ne '' }, timeout => 60,
		what => 'worker of dd');
}

# delivered_in_dd(N): an event sent in dd now arrives (the sink then holds N unique events).
sub delivered_in_dd
{
	my ($n, $what) = @_;
	$node->safe_psql('dd', qq{SELECT courier.send('ob', '{"what": "$what"}', 'k')});
	return $sink->wait_for(sub { $sink->stats->{unique} == $n }, timeout => 60, what => $what);
}

ok(make_served_db(), 'dd has its delivery worker');
ok(delivered_in_dd(1, 'first'), 'dd is served');

#--------------------------------------------------------------------------------------------------
# Only who may drop the database makes its worker leave
#--------------------------------------------------------------------------------------------------

$node->safe_psql('postgres', 'CREATE ROLE mallory LOGIN');
my $pid = CourierTest::worker_pid($node, 'dd');
my ($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE dd', extra_params => [ '-U', 'mallory' ]);
like($err, qr/must be owner of database dd/, 'a role that does not own dd cannot drop it');
is(CourierTest::worker_pid($node, 'dd'), $pid, '... and its worker stayed (it was not asked to leave)');

#--------------------------------------------------------------------------------------------------
# A DROP that fails: the worker comes back
#--------------------------------------------------------------------------------------------------

my $session = $node->background_psql('dd');
$session->query_safe('SELECT 1');
($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE dd');
like($err, qr/database "dd" is being accessed by other users/, 'DROP DATABASE fails while a user session is connected');
like($err, qr/There is 1 other session using the database/, '... and the only other session is that user\'s (the worker left)');
ok(CourierTest::wait_until(sub { my $p = CourierTest::worker_pid($node, 'dd'); $p ne '' && $p ne $pid },
		timeout => 60, what => 'worker back in dd'), 'after the failed drop, dd has a worker again');
ok(delivered_in_dd(2, 'after failed drop'), 'and dd is served again');
$session->quit;

# CREATE DATABASE ... TEMPLATE dd also needs dd alone: the worker leaves and comes back.
$pid = CourierTest::worker_pid($node, 'dd');
($ret, $out, $err) = $node->psql('postgres', 'CREATE DATABASE dd_copy TEMPLATE dd');
is($ret, 0, 'CREATE DATABASE ... TEMPLATE of a served database works') or diag($err);
ok(CourierTest::wait_until(sub { my $p = CourierTest::worker_pid($node, 'dd'); $p ne '' && $p ne $pid },
		timeout => 60, what => 'worker back in dd after the copy'), 'and the worker of dd comes back');
$node->safe_psql('postgres', 'DROP DATABASE dd_copy');

#--------------------------------------------------------------------------------------------------
# DROP DATABASE without FORCE
#--------------------------------------------------------------------------------------------------

my $log_offset = -s $node->logfile;
($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE dd');
is($ret, 0, 'DROP DATABASE of a served database works without FORCE') or diag($err);
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_database WHERE datname = 'dd'"), '0', 'dd is gone');

# launcher_quiet: the launcher keeps running its loop (it replaces the worker of postgres, twice)
# and starts nothing for dd meanwhile.
sub launcher_quiet
{
	my ($since) = @_;
	for my $round (1 .. 2)
	{
		my $p = CourierTest::worker_pid($node, 'postgres');
		$node->safe_psql('postgres', "SELECT pg_terminate_backend($p)");
		CourierTest::wait_until(sub { my $q = CourierTest::worker_pid($node, 'postgres'); $q ne '' && $q ne $p },
			timeout => 60, what => "replacement $round of the postgres worker") or return 'no replacement';
	}
	my $log = slurp_file($node->logfile, $since);
	my @started = $log =~ /delivery worker started for database "dd"/g;
	my @fatal = $log =~ /FATAL:  database "dd" does not exist/g;
	my @said = $log =~ /database "dd" in courier.databases does not exist/g;
	return sprintf('%d started, %d failed to connect, said %d times', scalar(@started), scalar(@fatal), scalar(@said));
}
is(launcher_quiet($log_offset), '0 started, 0 failed to connect, said 1 times',
	'no worker is started for the dropped database (the launcher says once that it does not exist)');

ok(make_served_db(), 'a database created again under that name gets its worker');
ok(delivered_in_dd(3, 'recreated'), 'and is served');

#--------------------------------------------------------------------------------------------------
# DROP DATABASE WITH (FORCE): no restart loop afterwards
#--------------------------------------------------------------------------------------------------

$session = $node->background_psql('dd');
$session->query_safe('SELECT 1');
$log_offset = -s $node->logfile;
$node->safe_psql('postgres', 'DROP DATABASE dd WITH (FORCE)');
is(launcher_quiet($log_offset), '0 started, 0 failed to connect, said 1 times',
	'after DROP DATABASE ... WITH (FORCE), no worker is restarted for the database that is gone');
eval { $session->quit };

#--------------------------------------------------------------------------------------------------
# DROP EXTENSION pg_courier CASCADE keeps the outbox tables; adopt_outbox takes them back
#--------------------------------------------------------------------------------------------------

$sink->reset;
$node->safe_psql('postgres', qq{
	CREATE ROLE app LOGIN;
	GRANT CREATE ON SCHEMA public TO app;
});
$node->safe_psql('postgres', qq{
	SET ROLE app;
	SELECT courier.create_outbox('kept', '$url');
	SELECT courier.pause('kept');
	SELECT courier.send('kept', jsonb_build_object('n', i), 'k') FROM generate_series(1, 3) i;
});
$node->safe_psql('postgres', 'DROP EXTENSION pg_courier CASCADE');
is($node->safe_psql('postgres', q{SELECT count(*) FROM kept}), '3', 'after DROP EXTENSION ... CASCADE the outbox table keeps its rows');
is($node->safe_psql('postgres', q{SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'kept'::regclass}), 'app',
	'... and its owner');
$node->safe_psql('postgres', 'CREATE EXTENSION pg_courier');
($ret, $out, $err) = $node->psql('postgres', qq{SET ROLE app; SELECT courier.create_outbox('kept', '$url')});
like($err, qr/already exists/, 'create_outbox does not take an existing table');
$node->safe_psql('postgres', qq{SET ROLE app; SELECT courier.adopt_outbox('kept', '$url')});
ok($sink->wait_for(sub { $sink->stats->{unique} == 3 }, timeout => 60, what => 'kept events'),
	'adopt_outbox takes the table back: the 3 events that waited are delivered');
$node->safe_psql('postgres', q{SET ROLE app; SELECT courier.send('kept', '{"n": 4}', 'k')});
ok($sink->wait_for(sub { $sink->stats->{unique} == 4 }, timeout => 30, what => 'new event'),
	'send works on the adopted outbox');
$node->safe_psql('postgres', qq{SELECT courier.create_outbox('fresh_one', '$url')});
my $triggers = q{SELECT string_agg(tgname || ' ' || tgfoid::regproc, ', ' ORDER BY tgname) FROM pg_trigger
                  WHERE tgrelid = '%s'::regclass AND NOT tgisinternal};
is($node->safe_psql('postgres', sprintf($triggers, 'kept')), $node->safe_psql('postgres', sprintf($triggers, 'fresh_one')),
	'the adopted table has the triggers of a new outbox');

$node->stop;
$sink->stop;
done_testing();
