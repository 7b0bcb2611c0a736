# Least privilege between roles: saga types are visible to their owners only, saga errors do not
# reveal another role's saga types, _breaker_state answers only for the caller's endpoints (or
# pg_monitor), and saga_define serialises on a lock no SQL caller can take.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use CourierTest;

my $node = CourierTest::node('least_privilege',
	conf => ['courier.breaker_failure_threshold = 1', "courier.breaker_reset_ms = '1h'",
			 "courier.retry_base_ms = 100"]);
$node->safe_psql('postgres', q{
	CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; CREATE ROLE watcher LOGIN IN ROLE pg_monitor;
	GRANT CREATE ON SCHEMA public TO alice, bob;
});

sub as { my ($role, $sql) = @_; return $node->safe_psql('postgres', $sql, extra_params => ['-U', $role]); }
sub try
{
	my ($role, $sql) = @_;
	my ($rc, $out, $err) = $node->psql('postgres', $sql, extra_params => ['-U', $role, '-v', 'VERBOSITY=verbose']);
	$err =~ s/\nLOCATION:.*//s;
	return $err;
}

# --- saga types ---
as('alice', q{SELECT courier.saga_define('alice_secret_payout', '[{"name": "reserve"}, {"name": "pay"}]');
	SELECT courier.saga_start('alice_secret_payout', '{}', '00000000-0000-4000-8000-00000000000a');});
as('bob', q{SELECT courier.saga_define('bob_order', '[{"name": "a"}]')});
is(as('alice', q{SELECT string_agg(saga_type, ',') FROM courier.saga_types}), 'alice_secret_payout',
	'alice sees her saga type only');
is(as('bob', q{SELECT string_agg(saga_type, ',') FROM courier.saga_types}), 'bob_order', 'bob sees his only');
is(as('watcher', q{SELECT count(*) FROM courier.saga_types}), '0', 'a role without types sees none');
is($node->safe_psql('postgres', q{SELECT count(*) FROM courier.saga_types}), '2', 'a superuser sees all');

# saga_start on alice's saga id: the error does not name her type, and is the one for bob's own
my $foreign = try('bob', q{SELECT courier.saga_start('bob_order', '{}', '00000000-0000-4000-8000-00000000000a')});
unlike($foreign, qr/alice_secret_payout/, "saga_start with alice's saga id does not reveal its type");
as('bob', q{SELECT courier.saga_define('bob_other', '[{"name": "b"}]');
	SELECT courier.saga_start('bob_other', '{}', '00000000-0000-4000-8000-00000000000b');});
my $own = try('bob', q{SELECT courier.saga_start('bob_order', '{}', '00000000-0000-4000-8000-00000000000b')});
$own =~ s/0000000b/0000000a/;
is($foreign, $own, "the error is the same as for bob's own saga of another type");
like($foreign, qr/42710: saga 00000000-0000-4000-8000-00000000000a already exists with another saga type/, 'which is');

# alice's type and saga do not exist for bob: the same errors as for unknown names and ids
my $type_err = try('bob', q{SELECT courier.saga_start('alice_secret_payout', '{}', gen_random_uuid())});
my $unknown_type = try('bob', q{SELECT courier.saga_start('no_such_type', '{}', gen_random_uuid())});
$unknown_type =~ s/no_such_type/alice_secret_payout/;
is($type_err, $unknown_type, "starting alice's type fails as for an unknown type");
my $next_err = try('bob', q{SELECT courier.saga_next('00000000-0000-4000-8000-00000000000a')});
my $unknown_id = try('bob', q{SELECT courier.saga_next('00000000-0000-4000-8000-0000000000ff')});
$unknown_id =~ s/0000000000ff/00000000000a/;
is($next_err, $unknown_id, "alice's saga id fails as an unknown id for bob");
unlike($next_err . try('bob', q{SELECT courier.saga_abort('00000000-0000-4000-8000-00000000000a')}),
	qr/alice_secret_payout|alice/, 'no error names alice or her type');
like(try('bob', q{SELECT courier.saga_define('alice_secret_payout', '[{"name": "x"}]')}),
	qr/42710: saga type "alice_secret_payout" is already defined by another role/, 'redefining it says the name is taken, not by whom');
unlike(try('bob', q{SELECT courier.saga_define('alice_secret_payout', '[{"name": "x"}]')}), qr/alice"/,
	'(the owner is not named)');

# --- saga_define's lock ---
# bob holds the advisory lock saga_define took before (class 1396786497, hashtext(type)): no effect
my $bob = $node->background_psql('postgres', extra_params => ['-U', 'bob']);
$bob->query_safe(q{BEGIN; SELECT pg_advisory_xact_lock(1396786497, hashtext('alice_secret_payout'))});
is(as('alice', q{SET lock_timeout = '60s'; SELECT courier.saga_define('alice_secret_payout', '[{"name": "reserve"}, {"name": "pay"}, {"name": "notify"}]')}),
	'2', "bob's advisory lock does not block alice's saga_define");
$bob->query_safe('COMMIT');
# two definers of one type are still serialised: the second waits for the first's transaction
my $a1 = $node->background_psql('postgres', extra_params => ['-U', 'alice']);
$a1->query_safe(q{BEGIN; SELECT courier.saga_define('alice_secret_payout', '[{"name": "v3"}]')});
my $lock = $node->safe_psql('postgres', q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 17226 AND granted});
is($lock, '1', "the definer holds a lock of pg_courier's own class (17226), which no SQL function takes");
my $a2 = $node->background_psql('postgres', extra_params => ['-U', 'alice']);
my $a2_pid = $a2->query_safe('SELECT pg_backend_pid()');
$a2->query_until(qr/sent/, "\\echo sent\nSELECT courier.saga_define('alice_secret_payout', '[{\"name\": \"v4\"}]');\n");
ok(CourierTest::wait_until(sub {
			$node->safe_psql('postgres', "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $a2_pid") eq 'Lock' },
		what => 'the second definer waiting'), 'a second definer of the type waits');
$a1->query_safe('COMMIT');
my $v = $a2->query_safe("SELECT 'done'");
like($v, qr/^4\ndone$/, 'and gets the next version, gapless, once the first committed');
$_->quit for ($bob, $a1, $a2);

# --- _breaker_state ---
as('alice', q{SELECT courier.create_outbox('alice_ob', 'http://127.0.0.1:9/alice-only-hook');
	SELECT courier.send('alice_ob', '{"n": 1}', 'k');});
my $origin = q{courier._origin('http://127.0.0.1:9/alice-only-hook')};
ok(CourierTest::wait_until(sub { $node->safe_psql('postgres', "SELECT courier._breaker_state($origin)") eq 'open' },
		what => 'the breaker to open', timeout => 60), "alice's endpoint failed: its breaker is open");
is(as('alice', "SELECT courier._breaker_state($origin)"), 'open', 'alice sees the state of her endpoint');
is(as('alice', q{SELECT breaker_state FROM courier.outbox_stats WHERE outbox = 'alice_ob'::regclass}), 'open',
	'also in outbox_stats');
is(as('bob', "SELECT courier._breaker_state($origin) IS NULL"), 't',
	"bob is not told that alice's origin is in use (NULL, as for an origin without a breaker)");
is(as('watcher', "SELECT courier._breaker_state($origin)"), 'open', 'pg_monitor members are told');

done_testing();
