# Tenancy of the shared-memory cache: entries belong to the role that wrote them (its key space);
# another role can neither read, overwrite, touch nor delete them, and its TRUNCATE of a table with
# courier.cache_invalidate_on reaches only its own entries.  Sharing through courier.key_space.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use CourierTest;

my $node = CourierTest::node('tenancy_cache', conf => ["courier.cache_size = '8MB'"]);
$node->safe_psql('postgres', q{
	CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; CREATE ROLE carol LOGIN; CREATE ROLE dave LOGIN;
	CREATE ROLE team NOLOGIN;
	GRANT team TO alice, carol;
	GRANT CREATE ON SCHEMA public TO alice, bob;
});

sub as { my ($role, $sql) = @_; return $node->safe_psql('postgres', $sql, extra_params => ['-U', $role]); }
sub try
{
	my ($role, $sql) = @_;
	my ($rc, $out, $err) = $node->psql('postgres', $sql, extra_params => ['-U', $role, '-v', 'VERBOSITY=verbose']);
	return ($out, $err);
}

as('alice', q{SELECT courier.cache_set('user:1', 'alice-secret'), courier.cache_set('user:2', 'alice-2'),
	courier.cache_set('user:3', '{"a": 3}'::jsonb), courier.cache_set('other', 'alice-other')});
is(as('alice', q{SELECT courier.cache_get('user:1')}), 'alice-secret', 'alice reads her entry');
is(as('bob', q{SELECT courier.cache_get('user:1') IS NULL, courier.cache_get_jsonb('user:3') IS NULL}), 't|t',
	"bob does not see alice's entries");
as('bob', q{SELECT courier.cache_set('user:1', 'bob-value')});
is(as('bob', q{SELECT courier.cache_get('user:1')}), 'bob-value', 'bob has a key of the same name');
is(as('alice', q{SELECT courier.cache_get('user:1')}), 'alice-secret', "bob's set did not overwrite alice's entry");
is(as('bob', q{SELECT courier.cache_touch('user:2', '1 second')}), 'f', "bob cannot touch alice's entry");
is(as('bob', q{SELECT courier.cache_delete('user:2')}), 'f', "bob's delete does not find alice's entry");
is(as('bob', q{SELECT courier.cache_delete_prefix('user:')}), '1', "bob's prefix delete removes his one entry");
is(as('alice', q{SELECT courier.cache_get('user:1') || ',' || courier.cache_get('user:2')}), 'alice-secret,alice-2',
	"alice's entries survive bob's deletes");
is(as('bob', q{SELECT courier.cache_get_or_load('user:2', 'SELECT ''bob-loaded''')}), 'bob-loaded',
	"bob's get_or_load loads his own value");
is(as('alice', q{SELECT courier.cache_get('user:2')}), 'alice-2', "and does not replace alice's");
my (undef, $err) = try('bob', q{SELECT courier.cache_clear()});
like($err, qr/permission denied for function cache_clear/, 'clearing the cache stays for administrators');

# invalidation: bob's TRUNCATE of his own table reaches his entries only (template '{id}': every key)
as('bob', q{CREATE TABLE bob_t (id int); SELECT courier.cache_invalidate_on('bob_t', '{id}');
	SELECT courier.cache_set('1', 'bob-1');});
as('alice', q{SELECT courier.cache_set('1', 'alice-1')});
as('bob', q{TRUNCATE bob_t});
is(as('bob', q{SELECT courier.cache_get('1') IS NULL}), 't', "bob's TRUNCATE invalidated his entry");
is(as('alice', q{SELECT courier.cache_get('1') || ',' || courier.cache_get('user:1') || ',' || courier.cache_get('other')}),
	'alice-1,alice-secret,alice-other', "alice's entries are all still there");

# the invalidation of alice's table reaches alice's entries, whoever writes the table
as('alice', q{CREATE TABLE alice_t (id int); SELECT courier.cache_invalidate_on('alice_t', 'user:{id}');
	GRANT SELECT, INSERT, UPDATE, DELETE ON alice_t TO bob; INSERT INTO alice_t VALUES (1);});
as('bob', q{SELECT courier.cache_set('user:1', 'bob-again'); DELETE FROM alice_t WHERE id = 1;});
is(as('alice', q{SELECT courier.cache_get('user:1') IS NULL}), 't', "bob's DELETE on alice's table invalidated alice's key");
is(as('bob', q{SELECT courier.cache_get('user:1')}), 'bob-again', 'and left his own key of that name');

# sharing: members of team with courier.key_space = team share entries; others cannot reach them
as('alice', q{SET courier.key_space = team; SELECT courier.cache_set('cfg', 'team-config')});
is(as('carol', q{SET courier.key_space = team; SELECT courier.cache_get('cfg')}), 'team-config', 'carol (team) reads it');
is(as('carol', q{SELECT courier.cache_get('cfg') IS NULL}), 't', 'not from her own space');
(undef, $err) = try('dave', q{SET courier.key_space = team; SELECT courier.cache_get('cfg')});
like($err, qr/42501: permission denied to use the key space of role "team"/, 'dave cannot read the team space');
(undef, $err) = try('dave', q{SET courier.key_space = team; SELECT courier.cache_delete('cfg')});
like($err, qr/42501/, 'nor delete from it');
is(as('carol', q{SET ROLE team; SELECT courier.cache_get('cfg')}), 'team-config', 'SET ROLE team reads it too');

# administrators: cache_clear() empties every key space of the database
is($node->safe_psql('postgres', q{SELECT courier.cache_clear() > 0}), 't', 'a superuser clears the database');
is(as('alice', q{SELECT courier.cache_get('other') IS NULL}), 't', "alice's entries are gone too");

done_testing();
