# Invalidation on commit across sessions: a rollback evicts nothing, a commit evicts at commit (not
# before), and a get_or_load that read the old row before a concurrent commit does not store that
# stale value after the commit (READ COMMITTED and REPEATABLE READ).  DROP EXTENSION leaves no
# trigger behind.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";    # the Makefile's PROVE_FLAGS do not reach prove
use CourierTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = CourierTest::node('cache_inval');
my $q = sub { $node->safe_psql('postgres', shift) };
$q->(q{
	CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL);
	INSERT INTO orders SELECT g, 'new' FROM generate_series(1, 10) g;
	SELECT courier.cache_invalidate_on('orders', 'order:{id}');
	-- reads the row, then waits for the test's go: the read happens before a concurrent commit
	CREATE FUNCTION read_then_wait(key text) RETURNS text LANGUAGE plpgsql AS $$
	DECLARE v text;
	BEGIN
		SELECT status INTO v FROM orders WHERE id = split_part(key, ':', 2)::int;
		PERFORM pg_advisory_lock_shared(2);
		PERFORM pg_advisory_unlock_shared(2);
		RETURN v;
	END $$;
});

my $writer = $node->background_psql('postgres');
my $reader = $node->background_psql('postgres');
my $ctl = $node->background_psql('postgres');

# ---- commit vs rollback, seen from another session ----
$q->("SELECT courier.cache_set('order:1', 'cached')");
$writer->query_safe("BEGIN; UPDATE orders SET status = 'paid' WHERE id = 1");
is($q->("SELECT courier.cache_get('order:1')"), 'cached', 'an uncommitted update does not evict');
$writer->query_safe('ROLLBACK');
is($q->("SELECT courier.cache_get('order:1')"), 'cached', 'a rollback does not evict');
$writer->query_safe("BEGIN; UPDATE orders SET status = 'paid' WHERE id = 1");
is($q->("SELECT courier.cache_get('order:1')"), 'cached', 'still cached before the commit');
$writer->query_safe('COMMIT');
is($q->("SELECT courier.cache_get('order:1') IS NULL"), 't', 'evicted once the update committed');

# ---- the race: a loader read the old row, the writer commits, the loader finishes ----
$ctl->query_safe('SELECT pg_advisory_lock(2)');
$reader->query_until(qr/started\n/,
	"\\echo started\nSELECT courier.cache_get_or_load('order:2', 'read_then_wait', '1 hour') AS loaded;\n");
ok(CourierTest::wait_until(sub {
	$q->("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory' AND query LIKE '%order:2%'") == 1 },
	timeout => 60, what => 'the loader has read the old row'), 'the loader has read the old row and waits');
$writer->query_safe("UPDATE orders SET status = 'shipped' WHERE id = 2");    # commits, invalidates order:2
$ctl->query_safe('SELECT pg_advisory_unlock(2)');
my ($out) = $reader->query('SELECT 1 AS sync');
like($out, qr/^new\n/, 'the loader returns what its snapshot saw (the old value) to its caller');
is($q->("SELECT courier.cache_get('order:2') IS NULL"), 't', 'but does not store it after the invalidation');
is($q->("SELECT courier.cache_get_or_load('order:2', 'read_then_wait')"), 'shipped', 'the next load stores the new value');

# ---- REPEATABLE READ: the snapshot predates the commit and the load ----
$reader->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1');
$writer->query_safe("UPDATE orders SET status = 'shipped' WHERE id = 3");
is($reader->query_safe("SELECT courier.cache_get_or_load('order:3', 'SELECT status FROM orders WHERE id = 3')"),
	'new', 'a REPEATABLE READ loader sees its old snapshot');
$reader->query_safe('COMMIT');
is($q->("SELECT courier.cache_get('order:3') IS NULL"), 't', 'and does not store what it read');
is($q->("SELECT courier.cache_get_or_load('order:3', 'SELECT status FROM orders WHERE id = 3')"), 'shipped',
	'a fresh load stores the committed value');

# ---- DROP EXTENSION ----
my ($rc, $o, $err) = $node->psql('postgres', 'DROP EXTENSION pg_courier');
like($err, qr/cannot drop extension pg_courier because other objects depend on it.*trigger courier_cache_inval_/s,
	'DROP EXTENSION refuses while tables have cache invalidation, naming the triggers');
$q->('DROP EXTENSION pg_courier CASCADE');
is($q->("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'orders'::regclass"), '0', 'DROP EXTENSION ... CASCADE leaves no trigger behind');
is($q->("UPDATE orders SET status = 'done' WHERE id = 4; SELECT status FROM orders WHERE id = 4"), 'done', 'and the table keeps working');

$_->quit for $writer, $reader, $ctl;
$node->stop;
done_testing();
