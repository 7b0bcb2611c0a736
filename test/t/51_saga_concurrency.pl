# 1,000 sagas driven at the same time by four sessions, each walking all sagas in its own order and
# acting on what saga_next() says (so sessions race on every saga).  Transitions on one saga
# serialise on its row; stale decisions are either repeats (no-ops) or rejected with 55000.  Each
# saga's outcome is fixed by its number, so the final state is known whatever the interleaving.
use strict;
use warnings;

use CourierTest;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = CourierTest::node('saga_concurrency');
my $N = 1000;

$node->safe_psql('postgres', qq{
	SELECT courier.saga_define('order', '[
		{"name": "a", "compensation": "undo_a"},
		{"name": "b", "compensation": "undo_b"},
		{"name": "c", "compensation": "undo_c"}]');
	CREATE FUNCTION sid(i integer) RETURNS uuid LANGUAGE sql IMMUTABLE
		AS \$\$ SELECT ('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid \$\$;
	SELECT count(courier.saga_start('order', jsonb_build_object('i', i), sid(i))) FROM generate_series(1, $N) i;

	-- one move on saga i: i % 4 = 1, 2, 3 fail at step a, b, c; 0 completes
	CREATE FUNCTION drive(i integer) RETURNS void LANGUAGE plpgsql AS \$\$
	DECLARE
		n record;
		failing text := (ARRAY[NULL, 'a', 'b', 'c'])[i % 4 + 1];
	BEGIN
		SELECT * INTO n FROM courier.saga_next(sid(i));
		IF n.action = 'execute' THEN
			PERFORM courier.saga_step_started(sid(i), n.step);
		ELSIF n.action = 'wait' AND n.step = failing THEN
			PERFORM courier.saga_step_failed(sid(i), n.step, '{"code": 1}');
		ELSIF n.action = 'wait' THEN
			PERFORM courier.saga_step_succeeded(sid(i), n.step, jsonb_build_object('by', pg_backend_pid()));
		ELSIF n.action = 'compensate' THEN
			PERFORM courier.saga_compensated(sid(i), n.step);
		END IF;
	EXCEPTION WHEN object_not_in_prerequisite_state THEN
		NULL;	-- another session moved this saga on first
	END
	\$\$;
	CREATE PROCEDURE drive_all(seed integer) LANGUAGE plpgsql AS \$\$
	DECLARE
		i integer;
	BEGIN
		LOOP
			FOR i IN SELECT g FROM generate_series(1, $N) g ORDER BY md5(g::text || seed) LOOP
				PERFORM drive(i);
				COMMIT;
			END LOOP;
			EXIT WHEN NOT EXISTS (SELECT 1 FROM courier.sagas WHERE status IN ('running', 'compensating'));
		END LOOP;
	END
	\$\$;
});

my @sessions;
for my $seed (1 .. 4)
{
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(['psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'),
		'-c', "SET lock_timeout = '60s'", '-c', "CALL drive_all($seed)"], '>', \$out, '2>', \$err,
		IPC::Run::timeout(300));
	push @sessions, [$h, \$err];
}
for my $s (@sessions)
{
	my ($h, $err) = @$s;
	ok($h->finish, 'a driving session finished without error') or diag($$err);
}

is($node->safe_psql('postgres', "SELECT count(*) FROM courier.sagas"), $N, "$N sagas");
is($node->safe_psql('postgres', q{SELECT status || ':' || count(*) FROM courier.sagas GROUP BY status ORDER BY status}),
	"compensated:750\ncompleted:250", 'every saga reached the outcome fixed for it');

# the exact step states, per outcome
my $mismatch = $node->safe_psql('postgres', q{
	SELECT count(*) FROM (
		SELECT (s.data ->> 'i')::integer % 4 AS k,
		       string_agg(st.status, ',' ORDER BY st.step_no) AS steps
		  FROM courier.sagas s JOIN courier.saga_steps st USING (saga_id)
		 GROUP BY s.saga_id, s.data) x
	 WHERE steps <> (ARRAY['succeeded,succeeded,succeeded', 'failed,pending,pending',
	                       'compensated,failed,pending', 'compensated,compensated,failed'])[k + 1]});
is($mismatch, '0', 'every saga has exactly the step states of its outcome');

is($node->safe_psql('postgres', q{SELECT count(*) FROM courier.saga_steps WHERE attempts > 1}), '0',
	'no step was started twice (racing starts were repeats)');
is($node->safe_psql('postgres', q{SELECT count(*) FROM courier.sagas
	WHERE current_step IS NOT NULL OR deadline IS NOT NULL}), '0', 'finished sagas have no current step or deadline');
is($node->safe_psql('postgres', q{SELECT count(DISTINCT (results -> 'a' ->> 'by')) > 1 FROM courier.sagas WHERE status = 'completed'}),
	't', 'the sessions really shared the work');

# different sagas never block each other: with saga 1 locked by an open transaction, saga 2 moves
$node->safe_psql('postgres', q{SELECT courier.saga_start('order', '{}', sid(5001)); SELECT courier.saga_start('order', '{}', sid(5002))});
my ($in, $out, $err) = ('', '', '');
my $held = IPC::Run::start(['psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres')],
	'<', \$in, '>', \$out, '2>', \$err);
$in .= "BEGIN;\nSELECT action FROM courier.saga_step_started(sid(5001), 'a');\n";
ok(CourierTest::wait_until(sub { $held->pump_nb; $out =~ /wait/ }, timeout => 60, what => 'lock on saga 5001'),
	'a transaction holds saga 5001');
is($node->safe_psql('postgres', q{SET lock_timeout = '5s';
	SELECT action FROM courier.saga_step_started(sid(5002), 'a')}), 'wait', 'saga 5002 moves meanwhile');
my ($ret, $stdout, $stderr) = $node->psql('postgres', q{SET lock_timeout = '200ms';
	SELECT courier.saga_step_succeeded(sid(5001), 'a')});
like($stderr, qr/lock timeout/, 'a second transition on saga 5001 waits for the first (serialised)');
$in .= "COMMIT;\n\\q\n";
$held->finish;
is($node->safe_psql('postgres', q{SELECT action || ' ' || step FROM courier.saga_step_succeeded(sid(5001), 'a')}),
	'execute b', 'and proceeds once the first committed');

$node->stop;
done_testing();
