# Idempotency keys under concurrency: sessions racing on one key get exactly one 'started', the others
# 'in_progress' at once - while the winner's transaction is still open, so nobody waited for it - and no
# unique violation or deadlock ever reaches the caller.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../perl";    # PROVE_FLAGS from the Makefile does not reach prove
use CourierTest;

my $node = CourierTest::node('idem_race');
my $N = 6;

my $ctl = $node->background_psql('postgres');
my @s = map { $node->background_psql('postgres') } 1 .. $N;

# race(SQL, open_tx): every session runs SQL at the same moment (released together from a barrier:
# an advisory lock the controller holds).  With open_tx each session's transaction stays open
# afterwards.  Returns the sessions' outputs.  A session that waited for another's transaction would
# never answer while all of them are open: query() would time out and the test die.
sub race
{
	my ($sql, $open_tx) = @_;
	$ctl->query_safe('SELECT pg_advisory_lock(4242)');
	for my $i (0 .. $#s)
	{
		$s[$i]->query_safe('BEGIN') if $open_tx;
		$s[$i]->query_until(qr/armed $i/,
			"\\echo armed $i\nSELECT pg_advisory_lock_shared(4242);\nSELECT pg_advisory_unlock_shared(4242);\n$sql;\n");
	}
	CourierTest::wait_until(sub {
			$ctl->query_safe("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND NOT granted")
			  == scalar(@s) },
		what => 'all racers at the barrier', timeout => 60) or BAIL_OUT('racers did not arrive');
	$ctl->query_safe('SELECT pg_advisory_unlock(4242)');
	my @out;
	for my $i (0 .. $#s)
	{
		my $o = $s[$i]->query_safe("SELECT 'end-of-race'");
		$o =~ s/^t?\n?t?\n?//;           # the barrier's output
		$o =~ s/\n?end-of-race$//;
		$o =~ s/^\n+//;
		push @out, $o;
	}
	return @out;
}

sub count_of
{
	my ($word, @out) = @_;
	return scalar grep { $_ eq $word } @out;
}

# 1. single-transaction shape, many rounds on fresh keys
for my $round (1 .. 10)
{
	my @out = race("SELECT outcome FROM courier.idempotency_begin('fresh-$round')", 1);
	is(count_of('started', @out), 1, "round $round: exactly one session started");
	is(count_of('in_progress', @out), $N - 1, "round $round: the others were told in_progress at once")
	  or diag(explain \@out);
	my ($winner) = grep { $out[$_] eq 'started' } 0 .. $#out;
	if ($round % 2)
	{
		# the winner commits its answer: the losers, still in their transactions, now get the replay
		$s[$winner]->query_safe("SELECT courier.idempotency_complete('fresh-$round', 201, '{\"n\": $round}')");
		$s[$winner]->query_safe('COMMIT');
		my @after = map { $s[$_]->query_safe(
			"SELECT outcome || ' ' || status_code || ' ' || response::text FROM courier.idempotency_begin('fresh-$round')") }
		  grep { $_ != $winner } 0 .. $#s;
		is(scalar(grep { $_ eq "replay 201 {\"n\": $round}" } @after), $N - 1, "round $round: losers replay the answer");
	}
	else
	{
		# the winner rolls back: the key is free again
		$s[$winner]->query_safe('ROLLBACK');
		my $other = ($winner + 1) % $N;
		is($s[$other]->query_safe("SELECT outcome FROM courier.idempotency_begin('fresh-$round')"),
			'started', "round $round: after the winner's rollback a retry starts");
	}
	$s[$_]->query_safe('ROLLBACK') for grep { $_ != $winner } 0 .. $#s;
}

# 2. multi-transaction shape (autocommit): one owner, the others see its committed lease
my @out = race("SELECT outcome FROM courier.idempotency_begin('auto-1', lease => '1 hour')", 0);
is(count_of('started', @out), 1, 'autocommit race: exactly one started');
is(count_of('in_progress', @out), $N - 1, 'autocommit race: the others in_progress');

# 3. racing to recover a key whose holder's lease expired, and to reuse an expired key
$node->safe_psql('postgres', q{
	SELECT courier.idempotency_begin('lapsed');
	UPDATE courier.idempotency_keys SET lease_expires_at = now() - interval '1 second' WHERE key = 'lapsed';
	SELECT courier.idempotency_begin('old');
	SELECT courier.idempotency_complete('old', 200, '{}');
	UPDATE courier.idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = 'old';
});
@out = race("SELECT concat_ws(' ', outcome, attempt) FROM courier.idempotency_begin('lapsed')", 1);
is(count_of('started 2', @out), 1, 'lease-expiry race: exactly one recovers the key (attempt 2)');
is(scalar(grep { /^in_progress/ } @out), $N - 1, 'lease-expiry race: the others in_progress');
$_->query_safe('COMMIT') for @s;
@out = race("SELECT concat_ws(' ', outcome, attempt) FROM courier.idempotency_begin('old')", 1);
is(count_of('started 1', @out), 1, 'expired-key race: exactly one starts it afresh');
is(scalar(grep { /^in_progress/ } @out), $N - 1, 'expired-key race: the others in_progress');
$_->query_safe('COMMIT') for @s;
is($node->safe_psql('postgres', "SELECT count(*) FROM courier.idempotency_keys WHERE key IN ('lapsed', 'old')"),
	'2', 'still one row per key');

# 4. no deadlock: two transactions taking two keys in opposite orders
$s[0]->query_safe('BEGIN');
$s[1]->query_safe('BEGIN');
is($s[0]->query_safe("SELECT outcome FROM courier.idempotency_begin('x')"), 'started', 'A takes x');
is($s[1]->query_safe("SELECT outcome FROM courier.idempotency_begin('y')"), 'started', 'B takes y');
is($s[0]->query_safe("SELECT outcome FROM courier.idempotency_begin('y')"), 'in_progress', 'A is told y is busy');
is($s[1]->query_safe("SELECT outcome FROM courier.idempotency_begin('x')"), 'in_progress', 'B is told x is busy');
$s[0]->query_safe('COMMIT');
$s[1]->query_safe('COMMIT');

# 5. nothing leaked into the server log
my $log = slurp_file($node->logfile);
unlike($log, qr/duplicate key value|deadlock detected/, 'no unique violation or deadlock in the log');

$_->quit for @s, $ctl;
$node->stop;
done_testing();
