# Shard routing properties over a million keys: ring balance and minimal movement, jump hash
# movement, and shard_for agreeing with the Citus formula computed independently in SQL.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";    # the Makefile's PROVE_FLAGS is overridden by PGXS
use CourierTest;
use Test::More;

my $node = CourierTest::node('shard_props');
my $q = sub { $node->safe_psql('postgres', $_[0]) };

# --- ring: 10 nodes x 150 vnodes over 1M keys --------------------------------------------------
$q->(q{SELECT courier.ring_create('r10', ARRAY(SELECT 'node' || i FROM generate_series(1, 10) i), 150)});
$q->(q{CREATE TABLE before AS
       SELECT i, courier.ring_route('r10', 'key-' || i) AS node FROM generate_series(1, 1000000) i});

my ($nodes, $min, $max) = split /\|/, $q->(q{
    SELECT count(*), min(n), max(n) FROM (SELECT node, count(*) AS n FROM before GROUP BY node) s});
is($nodes, 10, 'every one of the 10 nodes receives keys');
my $mean = 1000000 / 10;
my $spread = 100 * (($max - $mean) > ($mean - $min) ? ($max - $mean) : ($mean - $min)) / $mean;
note(sprintf('10 nodes x 150 vnodes, 1M keys: min %d, max %d per node, spread +-%.2f%% of the mean',
    $min, $max, $spread));
cmp_ok($min, '>=', 0.9 * $mean, 'least loaded node is within 10% of the mean');
cmp_ok($max, '<=', 1.1 * $mean, 'most loaded node is within 10% of the mean');

# adding an 11th node: ~1/11 of the keys move, all of them onto the new node
my $announced = $q->(q{
    SELECT sum(fraction) FROM courier.ring_moves('r10',
        ARRAY(SELECT 'node' || i FROM generate_series(1, 11) i)) WHERE to_node = 'node11'});
$q->(q{SELECT courier.ring_add_node('r10', 'node11')});
my ($moved, $elsewhere) = split /\|/, $q->(q{
    SELECT count(*) FILTER (WHERE courier.ring_route('r10', 'key-' || i) <> node),
           count(*) FILTER (WHERE courier.ring_route('r10', 'key-' || i) <> node
                              AND courier.ring_route('r10', 'key-' || i) <> 'node11')
      FROM before});
note(sprintf('adding node11 moved %.2f%% of the keys (1/11 = 9.09%%; ring_moves announced %.2f%%)',
    $moved / 10000, 100 * $announced));
is($elsewhere, 0, 'keys only move onto the new node');
cmp_ok(abs($moved / 1000000 - 1 / 11), '<', 0.01, 'about 1/11 of the keys move');
cmp_ok(abs($announced - 1 / 11), '<', 0.001, 'ring_moves announces 1/11 of the hash space');

# removing a node: only its keys move, and the rest stays balanced
$q->(q{CREATE TABLE before11 AS SELECT i, courier.ring_route('r10', 'key-' || i) AS node FROM before});
$q->(q{SELECT courier.ring_remove_node('r10', 'node4')});
is($q->(q{SELECT count(*) FROM before11 WHERE node <> 'node4' AND courier.ring_route('r10', 'key-' || i) <> node}),
    0, 'removing a node moves only the keys it had');
($min, $max) = split /\|/, $q->(q{
    SELECT min(n), max(n) FROM (SELECT courier.ring_route('r10', 'key-' || i) AS node, count(*) AS n
                                  FROM generate_series(1, 1000000) i GROUP BY 1) s});
note("after removing node4: min $min, max $max keys per node (mean 100000)");
ok($min >= 90000 && $max <= 110000, 'still within 10% of the mean after a removal');

# --- jump hash: N -> N+1 moves <= 1/(N+1) + 1%, only into the new bucket ------------------------
for my $n (10, 31)
{
    my ($frac, $wrong) = split /\|/, $q->(qq{
        SELECT count(*) FILTER (WHERE a <> b)::float8 / count(*), count(*) FILTER (WHERE a <> b AND b <> $n)
          FROM (SELECT courier.jump_hash(k, $n) a, courier.jump_hash(k, $n + 1) b
                  FROM generate_series(1::bigint, 1000000) k) s});
    cmp_ok($frac, '<=', 1 / ($n + 1) + 0.01, "jump_hash $n -> @{[$n+1]} buckets moves <= 1/(N+1) + 1% ($frac)");
    is($wrong, 0, "jump_hash $n -> @{[$n+1]}: keys only move into the new bucket");
}
my ($jmin, $jmax) = split /\|/, $q->(q{
    SELECT min(n), max(n) FROM (SELECT courier.jump_hash('user-' || i, 10), count(*) n
                                  FROM generate_series(1, 1000000) i GROUP BY 1) s});
ok($jmin > 95000 && $jmax < 105000, "jump_hash(text) spreads 1M keys evenly over 10 buckets ($jmin..$jmax)");

# --- shard_for = Citus's formula, 1M values per type, power-of-two and other shard counts ------
$q->(q{CREATE FUNCTION citus_index(h integer, n integer) RETURNS integer LANGUAGE sql IMMUTABLE AS
       'SELECT least((h::bigint + 2147483648) / (4294967296 / n), n - 1)::integer'});
for my $n (7, 32, 1000)
{
    my $bad = $q->(qq{
        SELECT count(*) FILTER (WHERE courier.shard_for(i, $n) <> citus_index(hashint4(i), $n))
             + count(*) FILTER (WHERE courier.shard_for(i::bigint << 20, $n) <> citus_index(hashint8(i::bigint << 20), $n))
             + count(*) FILTER (WHERE courier.shard_for('t' || i, $n) <> citus_index(hashtext('t' || i), $n))
             + count(*) FILTER (WHERE courier.shard_for(md5(i::text)::uuid, $n) <> citus_index(uuid_hash(md5(i::text)::uuid), $n))
          FROM generate_series(-500000, 499999) i});
    is($bad, 0, "shard_for agrees with the Citus formula for int4, int8, text and uuid over 1M values, $n shards");
}
# the last shard absorbs the remainder: with 7 shards its range is 4 values longer than the others
is($q->(q{SELECT string_agg((max_hash::bigint - min_hash + 1)::text, ',') FROM courier.shard_ranges(7)}),
    '613566756,613566756,613566756,613566756,613566756,613566756,613566760',
    'shard_ranges: equal ranges of floor(2^32/7), the last one takes the remainder');

$node->stop;
done_testing();
