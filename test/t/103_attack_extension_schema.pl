# Attack: pre-create the extension's schema.  The control file says schema = courier; a role that
# creates `courier` first (or may create objects in it) would own what the superuser worker runs.
# CREATE EXTENSION (and ALTER EXTENSION ... UPDATE) must refuse such a schema with a clear error and
# create nothing; a superuser-owned empty schema is fine; after DROP SCHEMA it works.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start;
my $node = CourierTest::node('attack_schema', create => 0);
my $url = $sink->url('/hook');

$node->safe_psql('postgres', q{
	CREATE ROLE eve LOGIN;
	GRANT CREATE ON DATABASE postgres TO eve;
});

# nothing of pg_courier exists (in this database): no extension, and nothing but eve's own in the schema
sub nothing_created
{
	my ($what) = @_;
	is($node->safe_psql('postgres', q{
		SELECT (SELECT count(*) FROM pg_extension WHERE extname = 'pg_courier') || ','
		    || (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'courier') || ','
		    || (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
		         WHERE n.nspname = 'courier' AND p.proowner <> 'eve'::regrole)}),
		'0,0,0', "$what: nothing was created");
}

# 1. eve owns the schema and planted a function in it.
$node->safe_psql('postgres', q{
	SET ROLE eve;
	CREATE SCHEMA courier;
	CREATE FUNCTION courier._table_owner(rel oid) RETURNS oid LANGUAGE sql AS 'SELECT 10::oid';
});
my ($rc, $out, $err) = $node->psql('postgres', 'CREATE EXTENSION pg_courier');
isnt($rc, 0, 'CREATE EXTENSION fails on a schema eve owns');
like($err, qr/schema "courier" cannot hold pg_courier: it is owned by role eve, not by a superuser/, 'with our error');
like($err, qr/HINT:  Drop the schema/, 'and a hint');
nothing_created('eve-owned schema');

# 2. A superuser owns it, but eve may create objects in it.
$node->safe_psql('postgres', q{
	ALTER SCHEMA courier OWNER TO postgres;
	GRANT CREATE ON SCHEMA courier TO eve;
});
($rc, $out, $err) = $node->psql('postgres', 'CREATE EXTENSION pg_courier');
like($err, qr/cannot hold pg_courier: role eve may create objects in it/, 'a schema eve may create in is refused');
nothing_created('CREATE granted to eve');
$node->safe_psql('postgres', q{GRANT CREATE ON SCHEMA courier TO PUBLIC; REVOKE CREATE ON SCHEMA courier FROM eve});
($rc, $out, $err) = $node->psql('postgres', 'CREATE EXTENSION pg_courier');
like($err, qr/cannot hold pg_courier: role PUBLIC may create objects in it/, 'a schema everyone may create in is refused');

# 3. Her right was revoked, but what she planted is still there.
$node->safe_psql('postgres', q{REVOKE CREATE ON SCHEMA courier FROM PUBLIC});
($rc, $out, $err) = $node->psql('postgres', 'CREATE EXTENSION pg_courier');
like($err, qr/cannot hold pg_courier: it holds objects owned by role eve/, 'objects eve planted are refused');
nothing_created('planted objects');

# 4. After DROP SCHEMA it works, and delivers.
$node->safe_psql('postgres', 'DROP SCHEMA courier CASCADE');
$node->safe_psql('postgres', 'CREATE EXTENSION pg_courier');
is($node->safe_psql('postgres', q{SELECT nspowner::regrole FROM pg_namespace WHERE nspname = 'courier'}), 'postgres',
	'the schema belongs to the superuser that created the extension');
$node->safe_psql('postgres', qq{SELECT courier.create_outbox('ev', '$url'); SELECT courier.send('ev', '{"n": 1}')});
ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'ev') == 0 }, timeout => 60, what => 'delivered'),
	'the extension works after the schema was dropped');

# 5. A superuser's empty schema is accepted; a schema given to eve later stops ALTER EXTENSION UPDATE.
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('other', q{CREATE SCHEMA courier; CREATE EXTENSION pg_courier VERSION '0.1.0'});
is($node->safe_psql('other', q{SELECT extversion FROM pg_extension WHERE extname = 'pg_courier'}), '0.1.0',
	'a superuser-created empty schema is accepted');
$node->safe_psql('other', 'ALTER SCHEMA courier OWNER TO eve');
($rc, $out, $err) = $node->psql('other', q{ALTER EXTENSION pg_courier UPDATE TO '0.2.0'});
like($err, qr/cannot hold pg_courier: it is owned by role eve/, 'the upgrade refuses a schema eve was given');
is($node->safe_psql('other', q{SELECT extversion FROM pg_extension WHERE extname = 'pg_courier'}), '0.1.0',
	'and changes nothing');
$node->safe_psql('other', q{ALTER SCHEMA courier OWNER TO postgres; ALTER EXTENSION pg_courier UPDATE TO '0.2.0'});
is($node->safe_psql('other', q{SELECT extversion FROM pg_extension WHERE extname = 'pg_courier'}), '0.2.0',
	'given back, the upgrade runs');

CourierTest::no_takeover($node);

$node->stop;
$sink->stop;
done_testing();
