# courier.cache_get_or_load: N sessions on one cold key run the loader once; a loader error is
# reported to every waiter; a loader that is terminated does not leave waiters stuck; waiting is
# bounded by courier.cache_load_timeout.  The loader blocks on an advisory lock held by the test, so
# every session is provably waiting before the load is allowed to finish (no sleeps).
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";    # the Makefile's PROVE_FLAGS do not reach prove
use CourierTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $N = 5;
my $node = CourierTest::node('cache_stampede');
$node->safe_psql('postgres', q{
	CREATE SEQUENCE loader_runs;
	-- counts its runs (sequences are not transactional), then waits for the test's go
	CREATE FUNCTION slow_loader(key text) RETURNS text LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM nextval('loader_runs');
		PERFORM pg_advisory_lock_shared(1);
		PERFORM pg_advisory_unlock_shared(1);
		IF key LIKE 'fail:%' THEN
			RAISE EXCEPTION 'loader failed for %', key USING ERRCODE = 'data_exception';
		END IF;
		RETURN 'loaded ' || key;
	END $$;
});

my $ctl = $node->background_psql('postgres');
my @s = map { $node->background_psql('postgres', on_error_stop => 0) } 1 .. $N;

sub runs { $node->safe_psql('postgres', 'SELECT last_value - 1 + (is_called::int) FROM loader_runs') }

# start(session, sql): send a statement without waiting for its result
sub start
{
	my ($sess, $sql) = @_;
	$sess->query_until(qr/started\n/, "\\echo started\n$sql;\n");
}

# finish(session): the output and the errors of the statement started last
sub finish
{
	my ($sess) = @_;
	my ($out) = $sess->query('SELECT 1 AS sync');
	my $err = $sess->{stderr};
	$sess->{stderr} = '';
	$out =~ s/\n?1$//;
	return ($out, $err);
}

sub waiting_sessions
{
	my ($what) = @_;
	return $node->safe_psql('postgres', qq{
		SELECT count(*) FROM pg_stat_activity
		 WHERE query LIKE '%cache_get_or_load%' AND pid <> pg_backend_pid() AND $what});
}

# all sessions in place: one loader blocked on the advisory lock, N-1 waiting on the cache
sub wait_in_place
{
	my ($n_waiters, $label) = @_;
	ok(CourierTest::wait_until(sub {
		waiting_sessions("wait_event_type = 'Lock' AND wait_event = 'advisory'") == 1
		  && waiting_sessions("wait_event_type = 'Extension'") == $n_waiters },
		timeout => 60, what => $label), $label);
}

sub stampede
{
	my ($key) = @_;
	$ctl->query_safe('SELECT pg_advisory_lock(1)');
	start($_, "SELECT courier.cache_get_or_load('$key', 'slow_loader', '1 hour')") for @s;
	wait_in_place($N - 1, "$key: one loader and " . ($N - 1) . " waiters");
	$ctl->query_safe('SELECT pg_advisory_unlock(1)');
	return map { [ finish($_) ] } @s;
}

# ---- one cold key, N sessions: one load ----
$node->safe_psql('postgres', 'SELECT courier.cache_stats_reset()');
my $before = runs();
my @r = stampede('hot:1');
is(runs() - $before, 1, "$N sessions on one cold key: the loader ran once");
is(scalar(grep { $_->[0] eq 'loaded hot:1' && $_->[1] eq '' } @r), $N, 'every session got the loaded value');
is($node->safe_psql('postgres', "SELECT courier.cache_get('hot:1')"), 'loaded hot:1', 'the value is cached');
is($node->safe_psql('postgres', q{SELECT stampede_waits || ' ' || loads FROM courier.cache_stats}),
	($N - 1) . ' 1', 'stats: N-1 stampede waits, one load');

# ---- the loader fails: each waiter gets the error ----
$before = runs();
@r = stampede('fail:1');
is(runs() - $before, 1, 'a failing loader also ran once');
is(scalar(grep { $_->[1] =~ /loader failed for fail:1/ } @r), $N, 'every session reports the loader error');
is(scalar(grep { $_->[1] =~ /failed in another session/ } @r), $N - 1, '... the waiters saying it came from another session');
is($node->safe_psql('postgres', "SELECT courier.cache_get('fail:1') IS NULL"), 't', 'nothing is cached');

# ---- the loader is terminated: a waiter takes over ----
$before = runs();
$ctl->query_safe('SELECT pg_advisory_lock(1)');
start($_, "SELECT courier.cache_get_or_load('kill:1', 'slow_loader', '1 hour')") for @s;
wait_in_place($N - 1, 'kill:1: one loader and the waiters');
my $loader_pid = $node->safe_psql('postgres', q{
	SELECT pid FROM pg_stat_activity WHERE wait_event = 'advisory' AND query LIKE '%cache_get_or_load%'});
$node->safe_psql('postgres', "SELECT pg_terminate_backend($loader_pid)");
wait_in_place($N - 2, 'a waiter took the load over from the terminated loader');
$ctl->query_safe('SELECT pg_advisory_unlock(1)');
my ($ok, $killed) = (0, 0);
for my $sess (@s)
{
	my ($out, $err) = eval { finish($sess) };
	if (!defined $out || $err =~ /terminat|server closed|connection/) { $killed++; next; }
	$ok++ if $out eq 'loaded kill:1' && $err eq '';
}
is($killed, 1, 'the terminated loader lost its session');
is($ok, $N - 1, 'the other sessions got the value');
is(runs() - $before, 2, 'the loader ran twice: the terminated run and the take-over');

# ---- waiting is bounded ----
$ctl->query_safe('SELECT pg_advisory_lock(1)');
my $loader = $node->background_psql('postgres');
start($loader, "SELECT courier.cache_get_or_load('slow:1', 'slow_loader')");
ok(CourierTest::wait_until(sub { waiting_sessions("wait_event = 'advisory'") == 1 }, timeout => 60,
	what => 'loader blocked'), 'a loader is blocked');
my ($rc, $out, $err) = $node->psql('postgres',
	"SET courier.cache_load_timeout = '100ms'; SELECT courier.cache_get_or_load('slow:1', 'slow_loader')");
like($err, qr/timed out waiting for another session to load cache key "slow:1"/, 'a waiter gives up after courier.cache_load_timeout');
$ctl->query_safe('SELECT pg_advisory_unlock(1)');
is((finish($loader))[0], 'loaded slow:1', 'the loader itself completes');

eval { $_->quit } for @s, $ctl, $loader;    # one session was terminated on purpose
$node->stop;
done_testing();
