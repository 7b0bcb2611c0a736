# The backend-local ring/map cache: changes become visible to other sessions at commit, never
# before, rolled-back changes never; the cache survives DROP/CREATE EXTENSION; rings and maps
# are user configuration that pg_dump carries over.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";    # the Makefile's PROVE_FLAGS is overridden by PGXS
use CourierTest;
use Test::More;

my $node = CourierTest::node('shard_cache');
my $q = sub { $node->safe_psql('postgres', $_[0]) };

$q->(q{SELECT courier.ring_create('r', ARRAY['a', 'b', 'c'])});
$q->(q{SELECT courier.map_create('m', 'directory', 'default')});
$q->(q{SELECT courier.map_set('m', 'acme', 'one')});

my $reader = $node->background_psql('postgres', on_error_stop => 1);
my $writer = $node->background_psql('postgres', on_error_stop => 1);

# a fingerprint of where 5000 keys go, and how many go to node d
my $routes = q{SELECT md5(string_agg(courier.ring_route('r', i::text), ',' ORDER BY i)) || ' ' ||
                      count(*) FILTER (WHERE courier.ring_route('r', i::text) = 'd')
                 FROM generate_series(1, 5000) i};
# the same computed from the table, without the cache
my $by_sql = q{SELECT md5(string_agg(n, ',' ORDER BY i)) || ' ' || count(*) FILTER (WHERE n = 'd')
                 FROM (SELECT i, coalesce(
                          (SELECT p.node FROM courier.ring_points p WHERE p.ring = 'r'
                            AND p.pos >= hashtextextended(i::text, 0) ORDER BY p.pos LIMIT 1),
                          (SELECT p.node FROM courier.ring_points p WHERE p.ring = 'r' ORDER BY p.pos LIMIT 1)) n
                         FROM generate_series(1, 5000) i) s};

my $initial = $reader->query_safe($routes);
is($initial, $q->($by_sql), 'cached routes equal the routes computed from courier.ring_points');
like($initial, qr/ 0$/, 'no key goes to d before d exists');

# uncommitted: invisible to the reader, visible to the writer itself
$writer->query_safe(q{BEGIN});
$writer->query_safe(q{SELECT courier.ring_add_node('r', 'd')});
$writer->query_safe(q{SELECT courier.map_set('m', 'acme', 'two')});
unlike($writer->query_safe($routes), qr/ 0$/, 'the writing session routes to d inside its transaction');
is($reader->query_safe($routes), $initial, 'an uncommitted ring change is not visible to other sessions');
is($reader->query_safe(q{SELECT courier.map_route('m', 'acme')}), 'one', 'an uncommitted map change is not visible');

$writer->query_safe(q{COMMIT});
my $after = $reader->query_safe($routes);
isnt($after, $initial, 'after commit the other session routes with the new ring');
unlike($after, qr/ 0$/, 'keys now go to d');
is($after, $q->($by_sql), 'and its cached routes equal the committed table');
is($reader->query_safe(q{SELECT courier.map_route('m', 'acme')}), 'two', 'the committed map change is visible');

# rolled back: never visible, and the writer's own cache is restored
$writer->query_safe(q{BEGIN});
$writer->query_safe(q{SELECT courier.ring_remove_node('r', 'a')});
$writer->query_safe(q{SELECT courier.map_drop('m')});
$writer->query_safe(q{ROLLBACK});
is($reader->query_safe($routes), $after, 'a rolled-back change is never seen by others');
is($writer->query_safe($routes), $after, 'nor by the session that rolled it back');
is($writer->query_safe(q{SELECT courier.map_route('m', 'acme')}), 'two', 'the rolled-back map drop left the map');

# a change committed while the reader is inside a transaction is seen from its next transaction
$reader->query_safe(q{BEGIN});
my $in_txn = $reader->query_safe($routes);
$q->(q{SELECT courier.ring_remove_node('r', 'd')});
$reader->query_safe(q{COMMIT});
is($reader->query_safe($routes), $initial, 'the next transaction sees the committed removal of d');

# the extension dropped and created again: the cache relearns its tables
$writer->query_safe(q{DROP EXTENSION pg_courier});
$writer->query_safe(q{CREATE EXTENSION pg_courier});
$writer->query_safe(q{SELECT courier.ring_create('r', ARRAY['x', 'y'])});
like($reader->query_safe(q{SELECT courier.ring_route('r', 'k')}), qr/^[xy]$/,
    'after DROP/CREATE EXTENSION the other session routes with the new ring');
my ($ok, $stdout, $stderr) = (0, '', '');
$node->psql('postgres', q{SELECT courier.map_route('m', 'acme')}, stdout => \$stdout, stderr => \$stderr);
like($stderr, qr/map "m" does not exist/, 'the dropped map is gone');

$reader->quit;
$writer->quit;

# rings and maps are configuration: pg_dump carries them (points included) to another database
$q->(q{SELECT courier.ring_add_node('r', 'z', 40)});
$q->(q{SELECT courier.map_create('ids', 'range')});
$q->(q{SELECT courier.map_set('ids', 0, 1000000, 's0')});
my $dump = $node->basedir . '/shard.sql';
$node->command_ok([ 'pg_dump', '-d', $node->connstr('postgres'), '-f', $dump ], 'pg_dump');
$q->(q{CREATE DATABASE restored});
$node->command_ok([ 'psql', '-X', '-v', 'ON_ERROR_STOP=1', '-q', '-d', $node->connstr('restored'), '-f', $dump ],
    'restore the dump');
my $fp = q{SELECT md5(string_agg(pos || node, ',' ORDER BY pos)) FROM courier.ring_points};
is($node->safe_psql('restored', $fp), $q->($fp), 'ring points survive dump and restore');
is($node->safe_psql('restored', q{SELECT courier.map_route('ids', 5) || courier.ring_route('r', 'k')}),
    $q->(q{SELECT courier.map_route('ids', 5) || courier.ring_route('r', 'k')}), 'routing in the restored database agrees');

$node->stop;
done_testing();
