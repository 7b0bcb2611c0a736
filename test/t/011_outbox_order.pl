# Per-key order across transactions that commit out of id order.
#
# Session A inserts key K (lower id) and stays open; session B inserts K (higher id) and key L,
# and commits.  L must flow at once; K from B must wait for A; after A commits, K arrives in id
# order.  Then many concurrent producers write the same few keys: arrival order per key must be
# id order.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start;
$sink->config(record_data => JSON::PP::true, order_field => 'n');
my $node = CourierTest::node('order');
my $url = $sink->url('/hook');
$node->safe_psql('postgres', qq{SELECT courier.create_outbox('ob', '$url')});

my $a = $node->background_psql('postgres');
my $b = $node->background_psql('postgres');

$a->query_safe(q{BEGIN});
$a->query_safe(q{SELECT courier.send('ob', '{"n": 1, "who": "A"}', 'K')});
$b->query_safe(q{BEGIN});
$b->query_safe(q{SELECT courier.send('ob', '{"n": 2, "who": "B"}', 'K')});
$b->query_safe(q{SELECT courier.send('ob', '{"n": 1, "who": "B"}', 'L')});
$b->query_safe(q{COMMIT});


sub received
{
	my ($key) = @_;
	return [ map { $_->{data}{who} . $_->{data}{n} } grep { ($_->{key} // '') eq $key } @{ $sink->events(from => 1) } ];
}

ok($sink->wait_for(sub { @{ received('L') } == 1 }, timeout => 30, what => 'L delivered'),
	'another key of the committed transaction flows while A is open');
# The worker read B's transaction (L proves it); K from B must still be held back.
is_deeply(received('K'), [], 'K from B is held back: an earlier K (A) is still uncommitted');
is(CourierTest::pending($node, 'ob'), 1, 'the held event is pending');

$a->query_safe(q{COMMIT});
ok($sink->wait_for(sub { @{ received('K') } == 2 }, timeout => 30, what => 'both K delivered'),
	'both K events delivered after A commits');
is_deeply(received('K'), [ 'A1', 'B2' ], 'K delivered in id order, not commit order');

# The same with a rollback: the holder aborts, the held row then flows.
$a->query_safe(q{BEGIN});
$a->query_safe(q{SELECT courier.send('ob', '{"n": 3, "who": "A"}', 'K')});
$node->safe_psql('postgres', q{SELECT courier.send('ob', '{"n": 4, "who": "C"}', 'K'); SELECT courier.send('ob', '{"n": 2, "who": "C"}', 'L')});
ok($sink->wait_for(sub { @{ received('L') } == 2 }, timeout => 30, what => 'second L'), 'L flows again');
is_deeply(received('K'), [ 'A1', 'B2' ], 'K from C waits behind A\'s open transaction');
$a->query_safe(q{ROLLBACK});
ok($sink->wait_for(sub { @{ received('K') } == 3 }, timeout => 30, what => 'K after rollback'),
	'after A rolls back, the held K is delivered');
is_deeply(received('K'), [ 'A1', 'B2', 'C4' ], 'the rolled-back event never appears');

$a->quit;
$b->quit;

# Many producers, few keys: each transaction inserts an event with a per-key counter taken
# under the key's row lock, so counters follow id order per key; delivery must follow it too.
$node->safe_psql('postgres', q{
	CREATE TABLE keys (k int PRIMARY KEY, n int NOT NULL DEFAULT 100);
	INSERT INTO keys SELECT g FROM generate_series(1, 5) g;
	CREATE FUNCTION produce(key int) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE v int;
	BEGIN
		UPDATE keys SET n = n + 1 WHERE k = key RETURNING n INTO v;
		PERFORM courier.send('ob', jsonb_build_object('n', v, 'who', 'P'), 'P' || key);
		PERFORM pg_sleep(random() * 0.002);   -- widen the window between id and commit
	END $$;
});
my $script = PostgreSQL::Test::Utils::tempdir() . '/p.sql';
open my $fh, '>', $script or die;
print $fh "\\set k random(1, 5)\nSELECT produce(:k);\n";
close $fh;
command_ok([ 'pgbench', '-n', '-c', '6', '-j', '2', '-t', '200', '-f', $script,
	'-h', $node->host, '-p', $node->port, 'postgres' ], '6 producers, 5 keys, 1200 transactions');
ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'ob') == 0 }, timeout => 120, what => 'drained'),
	'outbox drained');
my $stats = $sink->stats;
is($stats->{order_violations}, 0, 'per-key order held under concurrent producers of the same keys')
  or diag explain $stats->{violation_examples};
is($stats->{duplicates}, 0, 'no duplicates');
is($stats->{unique}, 1200 + 5, 'every event delivered (1200 + A1, B2, L1, L2, C4)');

$node->stop;
$sink->stop;
done_testing();
