# A broken outbox is reported, not shouted.  An owner renames a column of one outbox, retypes one
# of another, drops one of a third and makes a fourth refuse the worker's DELETE of delivered rows
# (a trigger that raises), with events waiting in each: the log gets one WARNING per
# outbox (not one per round), outbox_stats and metrics() show each as broken with a reason naming
# the column, another role's outbox keeps delivering, and once the tables are fixed each outbox
# says so with one LOG line and delivers what waited.  Maintenance is contained the same way: a
# retention stored directly that overflows timestamp arithmetic ("100000000 years") fails that
# outbox's purge only, reported once; the other outboxes' retention purge goes on.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start;
my $node = CourierTest::node('broken', conf => ["courier.poll_interval = '200ms'"]);
my $fast = '"retry_base_ms": 20, "retry_max_ms": 200';

$node->safe_psql('postgres', q{
	CREATE ROLE eve LOGIN;
	CREATE SCHEMA eve AUTHORIZATION eve;
	CREATE ROLE alice LOGIN;
	CREATE SCHEMA alice AUTHORIZATION alice;
});
for my $ob (qw(eve.renamed eve.retyped eve.dropped eve.refusing))
{
	$node->safe_psql('postgres', qq{SET ROLE eve; SELECT courier.create_outbox('$ob', '${\ $sink->url("/hook/$ob")}', 'cloudevents', '{$fast}')});
}
$node->safe_psql('postgres', qq{SET ROLE alice; SELECT courier.create_outbox('alice.good', '${\ $sink->url('/hook/good')}', 'cloudevents', '{$fast}')});

# rounds of the worker: a window of at least this many rounds
sub rounds
{
	return $node->safe_psql('postgres', q{SELECT rounds FROM courier.worker_status() WHERE database = current_database()});
}

sub log_since
{
	my ($offset) = @_;
	return slurp_file($node->logfile, $offset);
}

# Events wait in each outbox (paused), then the owner breaks the tables and resumes them.
my $pid = CourierTest::worker_pid($node);
my %sent;
for my $ob (qw(eve.renamed eve.retyped eve.dropped eve.refusing))
{
	$sent{$ob} = [ split /\n/, $node->safe_psql('postgres', qq{
		SET ROLE eve;
		SELECT courier.pause('$ob');
		SELECT courier.send('$ob', jsonb_build_object('n', i), 'k' || (i % 3)) FROM generate_series(1, 5) i}) ];
}
my $log_start = -s $node->logfile;
$node->safe_psql('postgres', q{
	SET ROLE eve;
	ALTER TABLE eve.renamed RENAME COLUMN payload TO body;
	ALTER TABLE eve.retyped ALTER COLUMN event_id DROP DEFAULT, ALTER COLUMN event_id TYPE text;
	ALTER TABLE eve.dropped DROP COLUMN last_error;
	CREATE FUNCTION eve.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN RAISE EXCEPTION 'no deletes here'; END $$;
	CREATE TRIGGER refuse BEFORE DELETE ON eve.refusing FOR EACH ROW EXECUTE FUNCTION eve.refuse();
	SELECT courier.resume('eve.renamed');
	SELECT courier.resume('eve.retyped');
	SELECT courier.resume('eve.dropped');
	SELECT courier.resume('eve.refusing');
});
my $status_sql = q{SELECT string_agg(outbox || ':' || COALESCE(status, '?'), ',' ORDER BY outbox::text)
                     FROM courier.outbox_stats WHERE outbox::text LIKE 'eve.%'};
ok(CourierTest::wait_until(sub { $node->safe_psql('postgres', $status_sql) eq
	'eve.dropped:broken,eve.refusing:broken,eve.renamed:broken,eve.retyped:broken' }, timeout => 30,
	what => 'four broken outboxes'),
	'outbox_stats shows each outbox as broken')
  or diag $node->safe_psql('postgres', $status_sql);
my %reason = map { split /\|/, $_, 2 } split /\n/, $node->safe_psql('postgres',
	q{SELECT outbox || '|' || status_reason FROM courier.outbox_stats WHERE outbox::text LIKE 'eve.%'});
like($reason{'eve.renamed'}, qr/payload/, "the reason names the renamed column ($reason{'eve.renamed'})");
like($reason{'eve.retyped'}, qr/event_id/, "the reason names the retyped column ($reason{'eve.retyped'})");
like($reason{'eve.dropped'}, qr/last_error/, "the reason names the dropped column ($reason{'eve.dropped'})");
like($reason{'eve.refusing'}, qr/no deletes here/, "the reason quotes the error of the refused DELETE ($reason{'eve.refusing'})");
like($node->safe_psql('postgres', 'SELECT courier.metrics()'), qr/^courier_outbox_broken\{database="postgres",outbox="eve\.renamed"\} 1$/m,
	'metrics(): the broken gauge is 1');

# A window of many rounds, during which another role's outbox delivers.
my $rounds = rounds();
my @good = split /\n/, $node->safe_psql('postgres', q{
	SET ROLE alice;
	SELECT courier.send('alice.good', jsonb_build_object('n', i), 'k' || (i % 3)) FROM generate_series(1, 20) i});
ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'alice.good') == 0 }, timeout => 30, what => 'alice delivered'),
	"another role's outbox keeps delivering");
ok(CourierTest::wait_until(sub { rounds() >= $rounds + 40 }, timeout => 60, what => '40 more rounds'),
	'the worker went round at least 40 more times');
is(scalar(grep { $sink->count($_) == 1 } @good), 20, "every one of the other role's events arrived once");
my @warnings = grep { /WARNING:/ } split /\n/, log_since($log_start);
cmp_ok(scalar(@warnings), '<=', 5, 'no WARNING flood: about one line per broken outbox') or diag join("\n", @warnings[0 .. 9]);
is(scalar(grep { /outbox eve\.\w+ is broken/ } @warnings), 4, 'each broken outbox was reported once');
is($node->safe_psql('postgres', q{SELECT sum(pending) FROM courier.outbox_stats WHERE outbox::text LIKE 'eve.%'}), '20',
	'the events wait in the broken outboxes');

# The owner fixes the tables: each outbox says it works again, once, and delivers what waited.
my $fix_start = -s $node->logfile;
$node->safe_psql('postgres', q{
	SET ROLE eve;
	ALTER TABLE eve.renamed RENAME COLUMN body TO payload;
	ALTER TABLE eve.retyped ALTER COLUMN event_id TYPE uuid USING event_id::uuid;
	ALTER TABLE eve.dropped ADD COLUMN last_error text;
	DROP TRIGGER refuse ON eve.refusing;
});
ok(CourierTest::wait_until(sub { $node->safe_psql('postgres', $status_sql) eq
	'eve.dropped:ok,eve.refusing:ok,eve.renamed:ok,eve.retyped:ok' },
	timeout => 60, what => 'recovered'), 'after the fix every outbox is ok again (long before the backoff ran out)')
  or diag $node->safe_psql('postgres', $status_sql);
for my $ob (sort keys %sent)
{
	ok(CourierTest::wait_until(sub { CourierTest::pending($node, $ob) == 0 }, timeout => 30, what => "$ob drained"), "$ob delivers what waited");
	is(scalar(grep { $sink->count($_) >= 1 } @{ $sent{$ob} }), 5, "$ob: every event arrived");
}
my $fixed_log = log_since($fix_start);
is(scalar(() = $fixed_log =~ /LOG: .*pg_courier: outbox eve\.\w+ works again/g), 4, 'one LOG line per recovered outbox');
is(scalar(grep { /WARNING:/ } split /\n/, $fixed_log), 0, 'no WARNING while recovering');

# Maintenance: a retention that cannot be subtracted from now() fails its outbox's purge only.
$node->safe_psql('postgres', qq{
	SET ROLE eve;
	SELECT courier.create_outbox('eve.keep_short', '${\ $sink->url('/hook/ks')}', 'cloudevents', '{"retention": "1 second"}');
	SELECT courier.create_outbox('eve.keep_forever', '${\ $sink->url('/hook/kf')}', 'cloudevents', '{"retention": "1 day"}');
	RESET ROLE;
	SET ROLE alice;
	SELECT courier.create_outbox('alice.keep_short', '${\ $sink->url('/hook/aks')}', 'cloudevents', '{"retention": "1 second"}');
});
$node->safe_psql('postgres', q{
	ALTER TABLE courier.outboxes DISABLE TRIGGER outboxes_check;
	UPDATE courier.outboxes SET options = '{"retention": "100000000 years"}' WHERE outbox = 'eve.keep_forever'::regclass;
	ALTER TABLE courier.outboxes ENABLE TRIGGER outboxes_check;
});
my $maint_start = -s $node->logfile;
my $retained_sql = q{SELECT count(*) FROM courier.delivered_events WHERE outbox = '%s'::regclass};
for my $round (1 .. 2)
{
	$node->safe_psql('postgres', q{
		SET ROLE eve;
		SELECT courier.send('eve.keep_short', '{"n": 1}');
		SELECT courier.send('eve.keep_forever', '{"n": 1}');
		RESET ROLE;
		SET ROLE alice;
		SELECT courier.send('alice.keep_short', '{"n": 1}');
	});
	ok(CourierTest::wait_until(sub {
		CourierTest::pending($node, 'eve.keep_forever') == 0 &&
		$node->safe_psql('postgres', sprintf($retained_sql, 'eve.keep_forever')) == $round },
		timeout => 30, what => 'kept'), "purge round $round: the outbox with the overflowing retention still delivers and keeps");
	ok(CourierTest::wait_until(sub {
		$node->safe_psql('postgres', 'SELECT (' . sprintf($retained_sql, 'eve.keep_short') . ') + (' . sprintf($retained_sql, 'alice.keep_short') . ')') == 0
		  && CourierTest::pending($node, 'eve.keep_short') == 0 && CourierTest::pending($node, 'alice.keep_short') == 0 },
		timeout => 60, what => 'purged'), "purge round $round: the other outboxes' delivered events are purged");
}
is($node->safe_psql('postgres', q{SELECT status || ': ' || status_reason FROM courier.outbox_stats WHERE outbox = 'eve.keep_forever'::regclass}),
	'degraded: retention purge failed: timestamp out of range', 'outbox_stats says why its maintenance fails');
my @maint_warnings = grep { /WARNING:/ } split /\n/, log_since($maint_start);
is(scalar(@maint_warnings), 1, 'the failing purge was reported once, not every 10 s') or diag join("\n", @maint_warnings);
like($maint_warnings[0] // '', qr/maintenance of outbox eve\.keep_forever fails/, 'the WARNING names the outbox');

unlike(log_since(0), qr/terminated by signal/, 'no process was terminated by a signal');
is(CourierTest::worker_pid($node), $pid, 'the worker did not restart');

$node->stop;
$sink->stop;
done_testing();
