# Crash safety: kill -9 of the worker (crash recovery of the whole server), kill -9 of the
# postmaster, in the middle of delivery.  No committed event is lost; duplicates come only from
# requests that were in flight, and carry the same event id.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start;
$sink->config(record_data => JSON::PP::false, order_field => undef);
my $node = CourierTest::node('crash', conf => [ 'restart_after_crash = on' ]);
my $url = $sink->url('/hook');
$node->safe_psql('postgres', qq{
	CREATE TABLE sent (event_id uuid PRIMARY KEY);
	SELECT courier.create_outbox('ob', '$url', 'cloudevents', '{"max_inflight": 16}');
});

# produce(N): commit N events, remembering their ids in the same transaction
sub produce
{
	my ($n) = @_;
	$node->safe_psql('postgres', qq{
		INSERT INTO sent SELECT courier.send('ob', jsonb_build_object('i', i), 'k' || (i % 50))
		  FROM generate_series(1, $n) i});
}

sub check_all_received
{
	my ($what) = @_;
	ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'ob') == 0 }, timeout => 180, what => "$what: drained"),
		"$what: the outbox drains");
	my %got = map { $_ => 1 } @{ $sink->ids };
	my @missing = grep { !$got{$_} } split /\n/, $node->safe_psql('postgres', 'SELECT event_id FROM sent');
	is(scalar(@missing), 0, "$what: no committed event lost");
}

# 1. kill -9 of the worker while requests are in flight (the endpoint is slowed down).
$sink->faults({ delay_ms => { ms => 30, rate => 1 } });
produce(5000);
ok($sink->wait_for(sub { $sink->stats->{accepted} > 100 }, timeout => 30, what => 'delivery under way'),
	'kill -9 worker: delivery under way');
my $pid = CourierTest::worker_pid($node);
kill 'KILL', $pid;
ok(CourierTest::wait_until(sub {
	my $p = eval { CourierTest::worker_pid($node) } // ''; $p ne '' && $p ne $pid }, timeout => 90,
	what => 'worker back after crash recovery'), 'kill -9 worker: the server recovers and a new worker starts');
$sink->clear_faults;
check_all_received('kill -9 worker');
my $dups = $sink->stats->{duplicates};
cmp_ok($dups, '<=', 16, "kill -9 worker: duplicates only from the requests in flight ($dups, max_inflight 16)");
$node->safe_psql('postgres', 'TRUNCATE sent');

# 2. kill -9 of the postmaster: the server is gone until restarted; nothing committed is lost.
$sink->reset;
$sink->faults({ delay_ms => { ms => 30, rate => 1 } });
produce(5000);
ok($sink->wait_for(sub { $sink->stats->{accepted} > 100 }, timeout => 30, what => 'delivery under way'),
	'kill -9 postmaster: delivery under way');
my $postmaster = $node->safe_psql('postgres', 'SELECT 1') && slurp_file($node->data_dir . '/postmaster.pid') =~ /^(\d+)/
  ? $1 : die 'no postmaster pid';
$node->kill9;
ok(CourierTest::wait_until(sub { !kill(0, $postmaster) }, timeout => 30, what => 'postmaster gone'),
	'kill -9 postmaster: it is gone');
# its children notice the postmaster's death and exit (their titles carry the cluster name)
ok(CourierTest::wait_until(sub { system("pgrep -f '^postgres: crash: ' >/dev/null") != 0 }, timeout => 60,
	what => 'orphaned backends gone'), 'kill -9 postmaster: the orphaned processes exit');
$sink->clear_faults;
$node->start;
check_all_received('kill -9 postmaster');

$node->stop;
$sink->stop;
done_testing();
