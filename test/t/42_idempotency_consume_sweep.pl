# Consumer deduplication under concurrency, and the delivery worker's sweep of expired rows.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../perl";    # PROVE_FLAGS from the Makefile does not reach prove
use CourierTest;

my $node = CourierTest::node('idem_consume',
	conf => ["courier.idempotency_sweep_ms = '1s'", 'courier.idempotency_sweep_batch = 10',
			 "courier.dedupe_retention = '1h'"]);

my $a = $node->background_psql('postgres');
my $b = $node->background_psql('postgres');
my $b_pid = $b->query_safe('SELECT pg_backend_pid()');

# consume(EVENT, SECOND_ENDS_WITH): A consumes inside an open transaction; B's duplicate must wait
# for A's outcome (answering before it is known would lose the event if A rolls back).
sub consume_race
{
	my ($event, $a_ends) = @_;
	$a->query_safe('BEGIN');
	is($a->query_safe("SELECT courier.consume_once('billing', '$event')"), 't', "$a_ends: A applies the event first");
	$b->query_until(qr/sent/, "\\echo sent\nSELECT courier.consume_once('billing', '$event');\n");
	ok(CourierTest::wait_until(sub {
				$node->safe_psql('postgres', "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $b_pid") eq 'Lock' },
			what => 'B waiting for A'), "$a_ends: the duplicate waits for A's outcome");
	$a->query_safe($a_ends);
	my $out = $b->query_safe("SELECT 'done'");
	$out =~ s/\n?done$//;
	return $out;
}

is(consume_race('11111111-1111-4111-8111-111111111111', 'ROLLBACK'), 't',
	'A rolled back: the duplicate applies the event');
is(consume_race('22222222-2222-4222-8222-222222222222', 'COMMIT'), 'f',
	'A committed: the duplicate is skipped');
is($node->safe_psql('postgres', "SELECT count(*) FROM courier.consumed_events"), '2', 'one record per applied event');

# the worker sweeps expired keys and old dedupe records in batches of 10, until none is left
$node->safe_psql('postgres', q{
	SELECT courier.idempotency_begin('live-' || i) FROM generate_series(1, 5) i;
	SELECT courier.idempotency_begin('gone-' || i) FROM generate_series(1, 35) i;
	UPDATE courier.idempotency_keys SET expires_at = now() - interval '1 minute' WHERE key LIKE 'gone-%';
	INSERT INTO courier.consumed_events (consumer, event_id, consumed_at)
	SELECT 'old', gen_random_uuid(), now() - interval '2 hours' FROM generate_series(1, 25);
});
ok(CourierTest::wait_until(sub {
			$node->safe_psql('postgres',
				"SELECT (SELECT count(*) FROM courier.idempotency_keys WHERE key LIKE 'gone-%') = 0
				    AND (SELECT count(*) FROM courier.consumed_events WHERE consumer = 'old') = 0") eq 't' },
		what => 'the worker to sweep', timeout => 60), 'the worker removed every expired row');
is($node->safe_psql('postgres', "SELECT count(*) FROM courier.idempotency_keys"), '5', 'live keys are kept');
is($node->safe_psql('postgres', "SELECT count(*) FROM courier.consumed_events"), '2', 'recent dedupe records are kept');

# a sweep does not wait for (nor touch) a row a request is working on
$node->safe_psql('postgres', "UPDATE courier.idempotency_keys SET expires_at = now() - interval '1 minute' WHERE key = 'live-1'");
$a->query_safe('BEGIN');
$a->query_safe("UPDATE courier.idempotency_keys SET attempt = attempt WHERE key = 'live-1'");
is($node->safe_psql('postgres', 'SELECT keys_removed FROM courier.idempotency_sweep()'), '0',
	'a locked expired row is skipped, without waiting');
$a->query_safe('COMMIT');
is($node->safe_psql('postgres', 'SELECT keys_removed FROM courier.idempotency_sweep()'), '1', 'and removed once free');

# courier.idempotency_sweep_ms = 0 turns the background sweep off
$node->append_conf('postgresql.conf', "courier.idempotency_sweep_ms = 0\n");
$node->reload;
ok(CourierTest::wait_until(sub { $node->safe_psql('postgres', 'SHOW courier.idempotency_sweep_ms') eq '0' },
		what => 'the reload'), 'sweep turned off');
$node->safe_psql('postgres', "UPDATE courier.idempotency_keys SET expires_at = now() - interval '1 minute' WHERE key = 'live-2'");
# let the worker run a few seconds' worth of rounds (maintenance is looked at about once a second)
my $rounds = $node->safe_psql('postgres', "SELECT rounds FROM courier.worker_status() WHERE database = 'postgres'");
ok(CourierTest::wait_until(sub {
			$node->safe_psql('postgres', "SELECT rounds FROM courier.worker_status() WHERE database = 'postgres'") > $rounds + 6 },
		what => 'worker rounds', timeout => 30), 'the worker kept running');
is($node->safe_psql('postgres', "SELECT count(*) FROM courier.idempotency_keys WHERE key = 'live-2'"), '1',
	'with the sweep off, the expired row stays (until courier.idempotency_sweep())');

$_->quit for $a, $b;
$node->stop;
done_testing();
