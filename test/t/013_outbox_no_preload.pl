# Without shared_preload_libraries: the SQL functions work, nothing is delivered, and pg_courier says
# so; functions that need shared memory fail with a clear error and a hint.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('no_preload');
$node->init;
# (a placeholder until the library loads on demand; 127.0.0.1 is refused by default)
$node->append_conf('postgresql.conf', "courier.allow_private_endpoints = on\n");
$node->start;

is($node->psql('postgres', 'CREATE EXTENSION pg_courier'), 0, 'CREATE EXTENSION works without preload');
my ($rc, $out, $err) = $node->psql('postgres',
	q{SELECT courier.create_outbox('ob', 'http://127.0.0.1:9/x')});
is($rc, 0, 'create_outbox works');
like($err, qr/no pg_courier delivery worker is running for database "postgres"/, 'and says no worker runs');
like($err, qr/shared_preload_libraries/, 'with a hint');
is($node->safe_psql('postgres', q{SELECT courier.send('ob', '{"a": 1}', 'k') IS NOT NULL}), 't', 'send works');
is($node->safe_psql('postgres', 'SELECT count(*) FROM ob'), '1', 'the event waits in the outbox');
is($node->safe_psql('postgres', 'SELECT count(*) FROM courier.worker_status()'), '0', 'worker_status: none');
is($node->safe_psql('postgres', q{SELECT pending FROM courier.outbox_stats}), '1', 'outbox_stats works');
($rc, $out, $err) = $node->psql('postgres', q{SELECT courier.cache_get('k')});
isnt($rc, 0, 'the shared-memory cache refuses');
like($err, qr/shared_preload_libraries/, 'with a hint to preload');

$node->stop;
done_testing();
