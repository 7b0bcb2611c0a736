# A role that takes the strongest lock it can on a table all roles share (ACCESS EXCLUSIVE: PUBLIC
# may DELETE there) and keeps it in an open transaction does not make the delivery worker wait:
# the worker skips its rounds, reports the stall once per table (no WARNING flood), and delivers
# the other roles' events as soon as the lock is gone.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start;
my $node = CourierTest::node('lock_stall');
my $url = $sink->url('/hook');

$node->safe_psql('postgres', q{
	CREATE ROLE bob LOGIN;
	CREATE ROLE mallory LOGIN;
	CREATE SCHEMA bob AUTHORIZATION bob;
});
$node->safe_psql('postgres', qq{SET ROLE bob; SELECT courier.create_outbox('bob.events', '$url')});
$node->safe_psql('postgres', q{SET ROLE bob; SELECT courier.send('bob.events', '{"n": 0}', 'k')});
ok($sink->wait_for(sub { $_[0]->stats->{unique} >= 1 }, timeout => 30, what => 'first event'), 'delivery works');

my $n = 1;
for my $table (qw(outboxes dead_letters delivered_events))
{
	my $log_start = -s $node->logfile;
	my $m = $node->background_psql('postgres');
	$m->query_safe(q{SET ROLE mallory});
	$m->query_safe(q{BEGIN});
	$m->query_safe("LOCK TABLE courier.$table IN ACCESS EXCLUSIVE MODE");

	# bob commits an event meanwhile (his outbox is his own table: not locked)
	$node->safe_psql('postgres', qq{SET ROLE bob; SELECT courier.send('bob.events', '{"n": $n}', 'k')});
	$n++;
	ok(CourierTest::wait_until(sub { slurp_file($node->logfile, $log_start) =~ /table courier\.$table is locked by another transaction/ },
		timeout => 30, what => "stall on $table reported"), "$table: the stall is reported");
	# a few more polls (500 ms each) go by: the worker never waits for the lock
	my $pid = CourierTest::worker_pid($node);
	for (1 .. 5)
	{
		is($node->safe_psql('postgres', "SELECT wait_event_type IS DISTINCT FROM 'Lock' FROM pg_stat_activity WHERE pid = $pid"),
			't', "$table: the worker is not waiting on a lock");
		my $polls = $node->safe_psql('postgres', q{SELECT pg_catalog.clock_timestamp()});
		CourierTest::wait_until(sub {
			$node->safe_psql('postgres', "SELECT pg_catalog.clock_timestamp() - '$polls' > interval '500 ms'") eq 't' },
			timeout => 10, what => 'a poll interval');
	}
	$m->query_safe(q{COMMIT});
	$m->quit;
	ok($sink->wait_for(sub { $_[0]->stats->{unique} >= $n }, timeout => 30, what => "event after $table released"),
		"$table: bob's event is delivered once the lock is gone");
	my $log = slurp_file($node->logfile, $log_start);
	my $warnings = () = $log =~ /WARNING:.*is locked by another transaction/g;
	is($warnings, 1, "$table: reported once, not at every round");
	ok(CourierTest::wait_until(sub { slurp_file($node->logfile, $log_start) =~ /courier\.$table is no longer locked/ },
		timeout => 30, what => "release of $table logged"), "$table: the end of the stall is logged");
}

$node->stop;
$sink->stop;
done_testing();
