# Tenancy of idempotency keys and consume_once markers: each role has its own key space; sharing
# goes through role membership and courier.key_space (doc/security.md#tenancy).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use CourierTest;

my $node = CourierTest::node('tenancy_keys');
$node->safe_psql('postgres', q{
	CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; CREATE ROLE carol LOGIN; CREATE ROLE dave LOGIN;
	CREATE ROLE team NOLOGIN;
	GRANT team TO alice, carol;
});

# as(ROLE, SQL): run SQL connected as ROLE; dies on error.  try(ROLE, SQL): (stdout, stderr).
sub as { my ($role, $sql) = @_; return $node->safe_psql('postgres', $sql, extra_params => ['-U', $role]); }
sub try
{
	my ($role, $sql) = @_;
	my ($rc, $out, $err) = $node->psql('postgres', $sql, extra_params => ['-U', $role, '-v', 'VERBOSITY=verbose']);
	return ($out, $err);
}

# --- idempotency keys ---
my $secret = '{"card": "4242 4242 4242 4242"}';
is(as('alice', qq{SELECT outcome FROM courier.idempotency_begin('pay-1');
	SELECT courier.idempotency_complete('pay-1', 200, '$secret');}), "started\nt", 'alice stores an answer');
is(as('alice', q{SELECT outcome || ' ' || (response->>'card') FROM courier.idempotency_begin('pay-1')}),
	'replay 4242 4242 4242 4242', 'alice replays it');
is(as('bob', q{SELECT outcome || ' ' || COALESCE(response::text, '-') FROM courier.idempotency_begin('pay-1')}),
	'started -', "bob's begin of the same key starts a key of his own, without alice's answer");
is(as('bob', q{SELECT courier.idempotency_complete('pay-1', 201, '{"bob": 1}')}), 't', 'bob completes his own key');
is(as('alice', q{SELECT outcome || ' ' || status_code || ' ' || (response->>'card') FROM courier.idempotency_begin('pay-1')}),
	'replay 200 4242 4242 4242 4242', "alice's answer is not overwritten by bob's");

# a key alice holds in progress: bob can neither complete, abandon nor extend it
as('alice', q{SELECT courier.idempotency_begin('pay-2', lease => '1 hour')});
my $held = q{SELECT state || ' ' || lease_expires_at FROM courier.idempotency_keys WHERE owner = 'alice'::regrole AND key = 'pay-2'};
my $before = $node->safe_psql('postgres', $held);
like($before, qr/^in_progress /, "alice's key is in progress");
my (undef, $err) = try('bob', q{SELECT courier.idempotency_complete('pay-2', 200, '{"forged": true}')});
like($err, qr/55000: idempotency key "pay-2" in scope "" is not in progress/, "bob cannot complete alice's key (as if it did not exist)");
is(as('bob', q{SELECT courier.idempotency_abandon('pay-2')}), 'f', "bob's abandon finds no key of his");
(undef, $err) = try('bob', q{SELECT courier.idempotency_extend('pay-2', '10 hours')});
like($err, qr/is not in progress/, "bob cannot extend alice's lease");
is($node->safe_psql('postgres', $held), $before, "alice's key is untouched: same state, same lease");
is(as('alice', q{SELECT courier.idempotency_complete('pay-2', 200, '{}')}), 't', 'alice still completes it');
(undef, $err) = try('bob', q{SELECT count(*) FROM courier.idempotency_keys});
like($err, qr/permission denied for table idempotency_keys/, 'the keys table stays closed to roles');

# SET ROLE counts as that role: a superuser session that becomes alice uses alice's keys
is($node->safe_psql('postgres', q{SET ROLE alice; SELECT outcome FROM courier.idempotency_begin('pay-1')}), 'replay',
	'SET ROLE alice uses alice\'s key space');
is($node->safe_psql('postgres', q{SET ROLE alice; SELECT courier.key_space()}), 'alice', 'courier.key_space() says so');

# sharing: members of "team" that set courier.key_space = team share its keys
is(as('alice', q{SET courier.key_space = team;
	SELECT outcome FROM courier.idempotency_begin('shared-1');
	SELECT courier.idempotency_complete('shared-1', 200, '{"by": "alice"}');}), "started\nt", 'alice writes in the team space');
is(as('carol', q{SET courier.key_space = team; SELECT outcome || ' ' || (response->>'by') FROM courier.idempotency_begin('shared-1')}),
	'replay alice', 'carol, a member of team, replays it');
is(as('carol', q{SET ROLE team; SELECT outcome FROM courier.idempotency_begin('shared-1')}), 'replay',
	'so does carol after SET ROLE team');
is(as('carol', q{SELECT outcome FROM courier.idempotency_begin('shared-1')}), 'started',
	"without the setting carol uses her own space");
(undef, $err) = try('dave', q{SET courier.key_space = team; SELECT outcome FROM courier.idempotency_begin('shared-1')});
like($err, qr/42501: permission denied to use the key space of role "team"/, 'dave, not a member, cannot use the team space');
(undef, $err) = try('dave', q{SET courier.key_space = nobody_here; SELECT courier.idempotency_abandon('shared-1')});
like($err, qr/42704: key space role "nobody_here" does not exist/, 'an unknown role is an error, not a fallback');
as('alice', q{SET courier.key_space = team; SELECT courier.idempotency_begin('shared-2', lease => '1 hour')});
(undef, $err) = try('dave', q{SET courier.key_space = team; SELECT courier.idempotency_abandon('shared-2')});
like($err, qr/42501/, 'dave cannot abandon a team key');
is(as('carol', q{SET courier.key_space = team; SELECT courier.idempotency_abandon('shared-2')}), 't',
	'carol can (members share the space)');

# --- consume_once markers ---
my $e1 = 'aaaaaaaa-0000-4000-8000-000000000001';
my $e2 = 'aaaaaaaa-0000-4000-8000-000000000002';
is(as('alice', qq{SELECT courier.consume_once('billing', '$e1')}), 't', 'alice applies event 1');
is(as('alice', qq{SELECT courier.consume_once('billing', '$e1')}), 'f', 'alice skips its duplicate');
is(as('bob', qq{SELECT courier.consume_once('billing', '$e1')}), 't',
	"bob's consumer of the same name is not told alice's event was consumed");
is(as('bob', q{SELECT count(*) FROM courier.consumed_events}), '1', 'bob sees his marker only');
is(as('bob', q{DELETE FROM courier.consumed_events WHERE owner = 'alice'::regrole RETURNING 1}), '',
	"bob cannot delete alice's markers");
(undef, $err) = try('bob', qq{INSERT INTO courier.consumed_events (owner, consumer, event_id) VALUES ('alice', 'billing', '$e2')});
like($err, qr/row-level security/, 'nor plant one in her space');
is(as('alice', qq{SELECT courier.consume_once('billing', '$e2')}), 't', 'so alice still applies event 2');
is(as('alice', q{SET courier.key_space = team; SELECT courier.consume_once('shipping', '} . $e1 . q{')}), 't',
	'alice applies event 1 for the team');
is(as('carol', q{SET courier.key_space = team; SELECT courier.consume_once('shipping', '} . $e1 . q{')}), 'f',
	'carol (team) sees it consumed');
(undef, $err) = try('dave', q{SET courier.key_space = team; SELECT courier.consume_once('shipping', '} . $e1 . q{')});
like($err, qr/42501/, 'dave cannot use the team markers');

# --- upgrade: 0.1.0 rows have no writer; they go to the extension's owner ---
$node->safe_psql('postgres', 'CREATE DATABASE up');
$node->safe_psql('up', q{
	CREATE EXTENSION pg_courier VERSION '0.1.0';
	INSERT INTO courier.idempotency_keys (scope, key, state, status_code, response, created_at, expires_at)
	VALUES ('', 'old-key', 'completed', 200, '{"old": 1}', now(), now() + interval '1 day');
	SELECT courier.consume_once('old', 'aaaaaaaa-0000-4000-8000-0000000000ff');
	ALTER EXTENSION pg_courier UPDATE;
});
is($node->safe_psql('up', q{SELECT owner::text, key FROM courier.idempotency_keys}), "postgres|old-key",
	'a 0.1.0 key belongs to the extension owner after the update');
is($node->safe_psql('up', q{SELECT owner::text, consumer FROM courier.consumed_events}), "postgres|old",
	'so does a 0.1.0 marker');
is($node->safe_psql('up', q{SELECT outcome FROM courier.idempotency_begin('old-key')}), 'replay',
	'and is replayed for it');
is($node->safe_psql('up', q{SET ROLE alice; SELECT outcome FROM courier.idempotency_begin('old-key')}), 'started',
	'not for another role');

done_testing();
