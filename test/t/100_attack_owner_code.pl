# Attack: an outbox owner's code tries to leave state behind in the delivery worker (a superuser)
# so that the worker's next query runs the owner's functions with superuser rights, or so that other
# roles' deliveries stop.  Every path on which the worker runs statements on an owner's table is
# tried: the DELETE after delivery (BEFORE and AFTER, row and statement triggers), the UPDATE after
# a failed attempt (503), the move to the dead letters (400), index expressions and partial-index
# predicates (evaluated on write and by the planner), and the saga command INSERT after a timeout.
# The poison: session-level set_config of search_path (to a schema with a planted "=" and functions
# named like pg_catalog's), work_mem, lock_timeout, statement_timeout = 1, read-only transactions,
# synchronous_commit, role and session_authorization, SET clauses of the trigger functions, a session
# advisory lock, LISTEN, NOTIFY, PREPARE, temporary tables.
#
# What an operator cares about is asserted: eve never becomes superuser and none of her functions
# ever runs as another role, the worker's own settings are unchanged (seen by a probe on bob's
# outbox, which runs inside the worker), the worker holds no advisory lock between transactions,
# bob's events keep flowing, and no backend crashed.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use CourierSink;
use CourierTest;

my $sink = CourierSink->start;
# the failing endpoint has an origin of its own: its circuit breaker must not hold the others back
my $failing = CourierSink->start;
$failing->faults({ status => { code => 503 } });
my $node = CourierTest::node('attack_owner_code', conf => [ "courier.saga_timeout_interval = '200ms'" ]);
my $url = $sink->url('');
$sink->faults({ accept_then_fail => { code => 400, match => { path_prefix => '/eve-dead' } } });

$node->safe_psql('postgres', q{
	CREATE ROLE eve LOGIN;
	CREATE ROLE bob LOGIN;
	CREATE SCHEMA eve AUTHORIZATION eve;
	CREATE SCHEMA bob AUTHORIZATION bob;
});

# bob: an ordinary outbox, and a probe that records, from inside the worker, the settings and the
# session state the worker has while it deletes bob's delivered rows
$node->safe_psql('postgres', qq{
	SET ROLE bob;
	SELECT courier.create_outbox('bob.o', '$url/bob');
	CREATE TABLE bob.probe (n serial, state text);
	CREATE FUNCTION bob.probe() RETURNS trigger LANGUAGE plpgsql AS \$f\$
	BEGIN
		INSERT INTO bob.probe (state) SELECT pg_catalog.concat_ws('|', current_user,
			pg_catalog.current_setting('work_mem'), pg_catalog.current_setting('lock_timeout'),
			pg_catalog.current_setting('statement_timeout'), pg_catalog.current_setting('transaction_read_only'),
			pg_catalog.current_setting('default_transaction_read_only'), pg_catalog.current_setting('synchronous_commit'),
			(SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements),
			(SELECT pg_catalog.count(*) FROM pg_catalog.pg_listening_channels()));
		RETURN OLD;
	END \$f\$;
	CREATE TRIGGER probe AFTER DELETE ON bob.o FOR EACH ROW EXECUTE FUNCTION bob.probe();
});

# eve: CREATE on her own schema only.  Her planted objects record every call, and escalate when
# called by a superuser.
$node->safe_psql('postgres', qq{
	SET ROLE eve;
	CREATE TABLE eve.hits (who name, su boolean, via text);
	CREATE TABLE eve.tries (tbl text, op text, outcome text);
	CREATE FUNCTION eve.escalate(via text) RETURNS void LANGUAGE plpgsql AS \$f\$
	DECLARE su boolean := (SELECT r.rolsuper FROM pg_catalog.pg_roles r
	                        WHERE r.rolname OPERATOR(pg_catalog.=) current_user);
	BEGIN
		INSERT INTO eve.hits VALUES (current_user, su, via);
		IF su THEN EXECUTE 'ALTER ROLE eve SUPERUSER'; END IF;
	END \$f\$;
	CREATE FUNCTION eve.oideq(a oid, b oid) RETURNS bool LANGUAGE plpgsql AS \$f\$
	BEGIN PERFORM eve.escalate('oid ='); RETURN a OPERATOR(pg_catalog.=) b; END \$f\$;
	CREATE OPERATOR eve.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = eve.oideq);
	CREATE FUNCTION eve.texteq(a text, b text) RETURNS bool LANGUAGE plpgsql AS \$f\$
	BEGIN PERFORM eve.escalate('text ='); RETURN a OPERATOR(pg_catalog.=) b; END \$f\$;
	CREATE OPERATOR eve.= (LEFTARG = text, RIGHTARG = text, FUNCTION = eve.texteq);
	CREATE FUNCTION eve.lower(t text) RETURNS text LANGUAGE plpgsql AS \$f\$
	BEGIN PERFORM eve.escalate('lower'); RETURN pg_catalog.lower(t); END \$f\$;
	CREATE FUNCTION eve.now() RETURNS timestamptz LANGUAGE plpgsql AS \$f\$
	BEGIN PERFORM eve.escalate('now'); RETURN pg_catalog.now(); END \$f\$;
	CREATE FUNCTION eve.current_database() RETURNS name LANGUAGE plpgsql AS \$f\$
	BEGIN PERFORM eve.escalate('current_database'); RETURN pg_catalog.current_database(); END \$f\$;

	-- everything that could outlive the statement, at session level (in the worker only: eve's own
	-- sessions run these triggers too); read_only: end with a read-only transaction as well
	CREATE FUNCTION eve.leak(tbl text, op text, read_only boolean DEFAULT false) RETURNS void LANGUAGE plpgsql AS \$f\$
	DECLARE outcome text := '';
	BEGIN
		IF NOT EXISTS (SELECT FROM courier.worker_status() w WHERE w.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid())
		   OR pg_catalog.current_setting('transaction_read_only') OPERATOR(pg_catalog.=) 'on' THEN
			RETURN;
		END IF;
		BEGIN PERFORM pg_catalog.set_config('role', 'postgres', false); outcome := outcome || 'role set ';
		EXCEPTION WHEN OTHERS THEN outcome := outcome || 'role refused '; END;
		BEGIN PERFORM pg_catalog.set_config('session_authorization', 'postgres', false);
			outcome := outcome || 'session_authorization set ';
		EXCEPTION WHEN OTHERS THEN outcome := outcome || 'session_authorization refused '; END;
		BEGIN LISTEN eve_channel; outcome := outcome || 'listen ok ';
		EXCEPTION WHEN OTHERS THEN outcome := outcome || 'listen refused '; END;
		BEGIN CREATE TEMP TABLE eve_tmp (x int); outcome := outcome || 'temp ok ';
		EXCEPTION WHEN OTHERS THEN outcome := outcome || 'temp refused '; END;
		BEGIN EXECUTE pg_catalog.format('PREPARE eve_p%s AS SELECT 1', pg_catalog.txid_current());
			outcome := outcome || 'prepare ok ';
		EXCEPTION WHEN OTHERS THEN outcome := outcome || 'prepare refused '; END;
		NOTIFY eve_channel, 'hello';
		INSERT INTO eve.tries VALUES (tbl, op, outcome);
		PERFORM pg_catalog.set_config('search_path', 'eve, pg_catalog', false);
		PERFORM pg_catalog.set_config('work_mem', '64kB', false);
		PERFORM pg_catalog.set_config('lock_timeout', '1', false);
		PERFORM pg_catalog.set_config('statement_timeout', '1', false);
		PERFORM pg_catalog.set_config('default_transaction_read_only', 'on', false);
		PERFORM pg_catalog.set_config('synchronous_commit', 'off', false);
		PERFORM pg_catalog.pg_advisory_lock(4242);
		IF read_only THEN
			PERFORM pg_catalog.set_config('transaction_read_only', 'on', false);
		END IF;
	END \$f\$;
	CREATE FUNCTION eve.poison() RETURNS trigger LANGUAGE plpgsql AS \$f\$
	BEGIN
		PERFORM eve.leak(TG_TABLE_NAME, TG_WHEN || ' ' || TG_OP || ' ' || TG_LEVEL, TG_NARGS > 0);
		RETURN CASE WHEN TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN OLD ELSE NEW END;
	END \$f\$;
	-- the same through a function with SET clauses (ALTER FUNCTION ... SET)
	CREATE FUNCTION eve.poison_set() RETURNS trigger LANGUAGE plpgsql AS \$f\$
	BEGIN
		PERFORM eve.leak(TG_TABLE_NAME, 'set-clause ' || TG_WHEN || ' ' || TG_OP);
		RETURN NULL;
	END \$f\$;
	ALTER FUNCTION eve.poison_set() SET search_path = eve, pg_catalog;
	ALTER FUNCTION eve.poison_set() SET work_mem = '128kB';
	ALTER FUNCTION eve.poison_set() SET lock_timeout = '1';
	ALTER FUNCTION eve.poison_set() SET synchronous_commit = 'off';
	-- index expressions and partial-index predicates ("immutable", but they are not)
	CREATE FUNCTION eve.idx(a int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS \$f\$
	BEGIN PERFORM eve.leak('index', 'expression'); RETURN a; END \$f\$;
	CREATE FUNCTION eve.pred() RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS \$f\$
	BEGIN PERFORM eve.leak('index', 'predicate'); RETURN true; END \$f\$;

	-- delivered: BEFORE/AFTER DELETE, row and statement level (the issue's example)
	SELECT courier.create_outbox('eve.o', '$url/eve-ok');
	CREATE TRIGGER poison BEFORE DELETE ON eve.o FOR EACH ROW EXECUTE FUNCTION eve.poison();
	CREATE TRIGGER poison_after AFTER DELETE ON eve.o FOR EACH ROW EXECUTE FUNCTION eve.poison();
	CREATE TRIGGER poison_stmt AFTER DELETE ON eve.o FOR EACH STATEMENT EXECUTE FUNCTION eve.poison();
	CREATE TRIGGER poison_set AFTER DELETE ON eve.o FOR EACH ROW EXECUTE FUNCTION eve.poison_set();
	CREATE INDEX ON eve.o (id) WHERE eve.pred();
	-- leave state behind, then fail (once): the error path must not keep it either
	CREATE SEQUENCE eve.once;
	CREATE FUNCTION eve.fail_once() RETURNS trigger LANGUAGE plpgsql AS \$f\$
	BEGIN
		IF EXISTS (SELECT FROM courier.worker_status() w WHERE w.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid())
		   AND pg_catalog.nextval('eve.once') OPERATOR(pg_catalog.=) 1 THEN
			PERFORM pg_catalog.set_config('work_mem', '96kB', false);
			PERFORM pg_catalog.set_config('search_path', 'eve, pg_catalog', false);
			PERFORM pg_catalog.pg_advisory_lock(4343);
			RAISE EXCEPTION 'eve fails once, after leaving state behind';
		END IF;
		RETURN OLD;
	END \$f\$;
	CREATE TRIGGER a_fail_once BEFORE DELETE ON eve.o FOR EACH ROW EXECUTE FUNCTION eve.fail_once();
	-- failed attempt (503): UPDATE, and an expression index on a column the worker updates
	SELECT courier.create_outbox('eve.o_retry', '${\ $failing->url('/eve-retry')}', options => '{"retry_base_ms": 100, "retry_max_ms": 200}');
	CREATE TRIGGER poison BEFORE UPDATE ON eve.o_retry FOR EACH ROW EXECUTE FUNCTION eve.poison();
	CREATE TRIGGER poison_after AFTER UPDATE ON eve.o_retry FOR EACH ROW EXECUTE FUNCTION eve.poison();
	CREATE INDEX ON eve.o_retry (eve.idx(attempts));
	-- permanent failure (400): the move to the dead letters
	SELECT courier.create_outbox('eve.o_dead', '$url/eve-dead');
	CREATE TRIGGER poison BEFORE DELETE ON eve.o_dead FOR EACH ROW EXECUTE FUNCTION eve.poison();
	CREATE TRIGGER poison_stmt AFTER DELETE ON eve.o_dead FOR EACH STATEMENT EXECUTE FUNCTION eve.poison('read only');
	-- a saga whose command is written by the worker's timeout sweep
	SELECT courier.create_outbox('eve.o_saga', '$url/eve-ok');
	CREATE TRIGGER poison BEFORE INSERT ON eve.o_saga FOR EACH ROW EXECUTE FUNCTION eve.poison();
	SELECT courier.saga_define('eve_flow', '[{"name": "a", "compensation": "undo_a"}, {"name": "b", "timeout": "1 second"}]',
	                           'eve.o_saga');
});
is($node->safe_psql('postgres', q{SELECT rolsuper FROM pg_roles WHERE rolname = 'eve'}), 'f', 'eve starts without superuser');

my $worker = CourierTest::worker_pid($node);
ok($worker, 'the delivery worker runs');

# bob's first event: the probe's baseline
$node->safe_psql('postgres', q{SET ROLE bob; SELECT courier.send('bob.o', '{"n": 0}')});
ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'bob.o') == 0 }, timeout => 30, what => 'bob 0'),
	'bob: first event delivered');
my $baseline = $node->safe_psql('postgres', 'SELECT state FROM bob.probe ORDER BY n LIMIT 1');
like($baseline, qr/^bob\|4MB\|0\|0\|off\|off\|on\|0\|0$/, 'the probe sees the worker\'s own settings');

# the attacks
my @eve_o = split /\n/, $node->safe_psql('postgres', q{
	SET ROLE eve;
	SELECT courier.send('eve.o', '{"n": 1}', 'k');
	SELECT courier.send('eve.o', '{"n": 2}');
});
$node->safe_psql('postgres', q{
	SET ROLE eve;
	SELECT courier.send('eve.o_retry', '{"n": 3}');
	SELECT courier.send('eve.o_dead', '{"n": 4}');
});
$node->safe_psql('postgres', q{
	SET ROLE eve;
	SELECT courier.saga_start('eve_flow', '{}', '00000000-0000-0000-0000-0000000000e1');
	SELECT courier.saga_step_started('00000000-0000-0000-0000-0000000000e1', 'a');
	SELECT courier.saga_step_succeeded('00000000-0000-0000-0000-0000000000e1', 'a');
	SELECT courier.saga_step_started('00000000-0000-0000-0000-0000000000e1', 'b');
});
# The trigger that fails once makes eve.o broken (retried after a minute, or at once when the table
# changes): once it has failed, eve changes her table, as an owner fixing it would.
ok(CourierTest::wait_until(sub { $node->safe_psql('postgres', q{SELECT last_value >= 1 FROM eve.once}) eq 't' },
	timeout => 30, what => 'the failing trigger ran'), 'eve: the trigger that fails once ran in the worker');
$node->safe_psql('postgres', q{SET ROLE eve; ALTER TABLE eve.o SET (fillfactor = 91)});
ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'eve.o') == 0 }, timeout => 30, what => 'eve.o delivered'),
	'eve: delivered rows were deleted (the DELETE triggers ran)');
# the endpoint acknowledged them before the DELETE failed: they were not sent again
is(join(',', map { $sink->count($_) } @eve_o), '1,1', 'eve: acknowledged events were sent once, although recording them failed once');
ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'eve.o_dead') == 0 }, timeout => 30, what => 'eve.o_dead moved'),
	'eve: the refused event moved to the dead letters');
ok(CourierTest::wait_until(sub { $node->safe_psql('postgres', 'SELECT max(attempts) FROM eve.o_retry') >= 3 },
	timeout => 30, what => 'eve.o_retry failed three times'), 'eve: failures were recorded (the UPDATE triggers ran)');
ok(CourierTest::wait_until(sub {
	$node->safe_psql('postgres', q{SELECT status FROM courier.saga_instances WHERE saga_id = '00000000-0000-0000-0000-0000000000e1'})
	  ne 'running' }, timeout => 30, what => 'saga timed out'), 'eve: the worker timed the saga step out');
ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'eve.o_saga') == 0 }, timeout => 30, what => 'saga commands'),
	'eve: the saga commands written by the worker were delivered')
  or diag($node->safe_psql('postgres', q{SELECT id, attempts, last_error, next_attempt_at, key FROM eve.o_saga}) . "\n"
	. $node->safe_psql('postgres', q{SELECT * FROM courier.outbox_stats WHERE outbox = 'eve.o_saga'::regclass}));
is($node->safe_psql('postgres', q{SELECT count(*) > 0 FROM eve.tries WHERE tbl = 'o_saga'}), 't',
	'the saga command INSERT ran eve\'s trigger');
is($node->safe_psql('postgres', q{SELECT count(*) > 0 FROM eve.tries WHERE tbl = 'index'}), 't',
	'the index expressions ran');
is($node->safe_psql('postgres', q{SELECT last_value >= 1 FROM eve.once}), 't', 'the trigger that fails once ran');

# SQL-callable functions that act as the extension's owner must not resolve anything through the
# caller's search_path either (saga_define reads the existing type as the saga tables' owner)
$node->safe_psql('postgres', q{
	SET ROLE eve;
	SET search_path = eve, pg_catalog;
	SELECT courier.saga_define('eve_flow2', '[{"name": "a"}]', 'eve.o_saga');
	SELECT courier.saga_define('eve_flow2', '[{"name": "a"}]', 'eve.o_saga');
	SELECT courier.saga_start('eve_flow2', '{}', '00000000-0000-0000-0000-0000000000e2');
	SELECT courier.saga_step_started('00000000-0000-0000-0000-0000000000e2', 'a');
	SELECT courier.saga_step_succeeded('00000000-0000-0000-0000-0000000000e2', 'a');
});

# (no more of eve's code from now on: the retries stop)
$node->safe_psql('postgres', q{SET ROLE eve; SELECT courier.pause('eve.o_retry')});

# give the worker refresh rounds to trip over anything left behind
my $rounds = $node->safe_psql('postgres', 'SELECT rounds FROM courier.worker_status()');
ok(CourierTest::wait_until(sub { $node->safe_psql('postgres', 'SELECT rounds FROM courier.worker_status()') >= $rounds + 30 },
	timeout => 60, what => 'worker rounds'), 'the worker went on with its rounds');

# bob's deliveries go on, and the worker is the same worker with the same settings
$node->safe_psql('postgres', q{SET ROLE bob; SELECT courier.send('bob.o', '{"n": 5}'); SELECT courier.send('bob.o', '{"n": 6}', 'k')});
ok(CourierTest::wait_until(sub { CourierTest::pending($node, 'bob.o') == 0 }, timeout => 30, what => 'bob after the attacks'),
	'bob: events delivered after the attacks');
is($node->safe_psql('postgres', q{SELECT count(*) FROM bob.probe WHERE state IS DISTINCT FROM } . $node->safe_psql('postgres', "SELECT quote_literal('$baseline')")),
	'0', 'the worker\'s settings, prepared statements and LISTENs are unchanged');
is(CourierTest::worker_pid($node), $worker, 'the same worker process');
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $worker"), '0',
	'the worker holds no advisory lock');

# what eve's code could do
is($node->safe_psql('postgres', q{SELECT rolsuper FROM pg_roles WHERE rolname = 'eve'}), 'f', 'eve is not superuser');
is($node->safe_psql('postgres', q{SELECT count(*) FROM eve.hits WHERE su OR who <> 'eve'}), '0',
	'none of eve\'s planted operators or functions ran as a superuser or as another role');
is($node->safe_psql('postgres', q{SELECT count(*) FROM eve.tries
	WHERE outcome NOT LIKE '%role refused session_authorization refused listen refused temp refused prepare refused%'}),
	'0', 'every run of eve\'s code was refused SET ROLE, SESSION AUTHORIZATION, LISTEN, temporary tables and PREPARE');
is($node->safe_psql('postgres', q{SELECT count(DISTINCT tbl || op) >= 8 FROM eve.tries}), 't',
	'eve\'s code ran on every path (' . $node->safe_psql('postgres', q{SELECT string_agg(DISTINCT tbl || ' ' || op, ', ') FROM eve.tries}) . ')');

my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal/, 'no backend crashed');
my $warnings = () = $log =~ /WARNING/g;
cmp_ok($warnings, '<', 10, "no WARNING flood ($warnings lines)");

$node->stop;
$sink->stop;
$failing->stop;
done_testing();
