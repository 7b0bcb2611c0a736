# Idempotency keys when the holder crashes (kill -9 of its backend, which makes the server restart):
# - multi-transaction shape: the committed lease blocks the key until it expires, then exactly one
#   retry recovers it; the crashed holder's token is worthless afterwards;
# - single-transaction shape: the uncommitted claim vanishes with the crash, the key is free at once.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../perl";    # PROVE_FLAGS from the Makefile does not reach prove
use CourierTest;

my $node = CourierTest::node('idem_crash', conf => ['restart_after_crash = on']);

# crash(SESSION, PID): kill -9 the session's backend and wait for the server to be back.
sub crash
{
	my ($session, $pid) = @_;
	kill 'KILL', $pid or die "could not kill $pid";
	CourierTest::wait_until(sub {
			# (psql may fail to connect while the server restarts: not an error here)
			my $up = eval { my ($rc, $out) = $node->psql('postgres', 'SELECT 1'); $rc == 0 && $out eq '1' };
			$up && $node->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE pid = $pid") eq '0' },
		what => 'server back after the crash', timeout => 120) or BAIL_OUT('server did not come back');
	eval { $session->quit };
}

# 1. multi-transaction shape: begin commits a 3-second lease, then the holder dies mid-work
my $holder = $node->background_psql('postgres', on_error_stop => 0);
my $holder_pid = $holder->query_safe('SELECT pg_backend_pid()');
my $token = $holder->query_safe(
	"SELECT lease_token FROM courier.idempotency_begin('charge-1', 'fp', lease => '3 seconds')");
like($token, qr/^[0-9a-f-]{36}$/, 'holder started and committed its lease');
$holder->query_until(qr/working/, "\\echo working\nBEGIN;\nSELECT pg_sleep(600);\n");
CourierTest::wait_until(sub {
		$node->safe_psql('postgres', "SELECT query LIKE '%pg_sleep%' FROM pg_stat_activity WHERE pid = $holder_pid") eq 't' },
	what => 'the holder to be at work') or BAIL_OUT('holder not working');
crash($holder, $holder_pid);

is($node->safe_psql('postgres', "SELECT outcome FROM courier.idempotency_begin('charge-1', 'fp')"),
	'in_progress', 'after the crash the key is still held until the lease ends');
is($node->safe_psql('postgres', "SELECT outcome FROM courier.idempotency_begin('charge-1', 'other')"),
	'mismatch', 'a different request with that key is still a mismatch');

ok(CourierTest::wait_until(sub {
			$node->safe_psql('postgres',
				"SELECT lease_expires_at < clock_timestamp() FROM courier.idempotency_keys WHERE key = 'charge-1'") eq 't' },
		what => 'the lease to expire', timeout => 60), 'the lease expired');

# several retries arrive together: exactly one recovers the key
my @r = map { $node->background_psql('postgres') } 1 .. 4;
$_->query_safe('BEGIN') for @r;
my @out = map { $_->query_safe("SELECT concat_ws(' ', outcome, attempt) FROM courier.idempotency_begin('charge-1', 'fp')") } @r;
is(scalar(grep { $_ eq 'started 2' } @out), 1, 'exactly one retry recovers the key (attempt 2)');
is(scalar(grep { $_ eq 'in_progress' } @out), 3, 'the other retries are told in_progress');
my ($winner) = grep { $out[$_] eq 'started 2' } 0 .. $#out;
$_->query_safe('COMMIT') for @r;

# the crashed request's token cannot complete the key any more
my ($rc, $stdout, $stderr) = $node->psql('postgres',
	"SELECT courier.idempotency_complete('charge-1', 200, '{}', '', '$token')");
isnt($rc, 0, 'the old holder cannot complete');
like($stderr, qr/is held by another request/, 'and is told another request holds the key');

my $newtoken = $node->safe_psql('postgres', "SELECT lease_token FROM courier.idempotency_keys WHERE key = 'charge-1'");
isnt($newtoken, $token, 'the recovering request has its own token');
is($node->safe_psql('postgres',
		"SELECT courier.idempotency_complete('charge-1', 201, '{\"charge\": \"ch_1\", \"amount\": 1000}', '', '$newtoken')"),
	't', 'the new holder completes');
my $replay1 = $node->safe_psql('postgres',
	"SELECT outcome, status_code, response FROM courier.idempotency_begin('charge-1', 'fp')");
is($replay1, 'replay|201|{"amount": 1000, "charge": "ch_1"}', 'retries replay the stored answer');

# replays are byte-identical, also across a server restart
$node->restart;
my $replay2 = $node->safe_psql('postgres',
	"SELECT outcome, status_code, response FROM courier.idempotency_begin('charge-1', 'fp')");
is($replay2, $replay1, 'the replay is byte-identical after a restart');
$_->quit for @r;

# 2. single-transaction shape: the claim is part of the transaction that crashes
my $tx = $node->background_psql('postgres', on_error_stop => 0);
my $tx_pid = $tx->query_safe('SELECT pg_backend_pid()');
$tx->query_safe('BEGIN');
is($tx->query_safe("SELECT outcome FROM courier.idempotency_begin('order-9')"), 'started', 'claimed in an open transaction');
is($node->safe_psql('postgres', "SELECT outcome FROM courier.idempotency_begin('order-9')"),
	'in_progress', 'while it is open, others are told in_progress');
crash($tx, $tx_pid);
is($node->safe_psql('postgres', "SELECT concat_ws(' ', outcome, attempt) FROM courier.idempotency_begin('order-9')"),
	'started 1', 'after the crash the key is free at once');

$node->stop;
done_testing();
