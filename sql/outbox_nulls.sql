-- pg_courier: NULL arguments (22004 everywhere) and PREPARE TRANSACTION after outbox writes
SET client_min_messages = warning;
\set SHOW_CONTEXT never
\set VERBOSITY sqlstate
CREATE EXTENSION IF NOT EXISTS pg_courier;

-- every function that takes an outbox (or a table) refuses a NULL one as such: 22004
SELECT courier.drop_outbox(NULL);
SELECT courier.alter_outbox(NULL);
SELECT courier.alter_outbox(NULL, enabled => false);
SELECT courier.pause(NULL);
SELECT courier.resume(NULL);
SELECT courier.send(NULL, '{}');
SELECT courier.replay_dead_letters(NULL);
SELECT courier.replay_delivered(NULL);
SELECT courier.adopt_outbox(NULL, 'http://127.0.0.1:9/x');
SELECT courier.create_outbox(NULL, 'http://127.0.0.1:9/x');
SELECT courier.cache_invalidate_on(NULL, 'k:{id}');
SELECT courier.cache_invalidate_off(NULL);
SELECT courier.cache_invalidate_off(NULL, 'k:{id}');
SELECT courier.saga_define(NULL, '[]');
SELECT courier.ring_drop(NULL);
SELECT courier.map_drop(NULL);
-- (an unknown table is still 42704, a NULL purge still means every outbox)
SELECT courier.pause(0::regclass);
SELECT courier.purge_dead_letters(NULL) >= 0 AS purged;

\set VERBOSITY default
SELECT courier.create_outbox('prep_outbox', 'http://127.0.0.1:9/x');
SELECT courier.pause('prep_outbox');

-- outbox writes still held: PREPARE is refused
BEGIN;
SELECT courier.send('prep_outbox', '{"n": 1}', 'k') IS NOT NULL AS sent;
PREPARE TRANSACTION 'courier_prep_1';
-- written in a savepoint that was released: still held
BEGIN;
SAVEPOINT a;
INSERT INTO prep_outbox (key, payload) VALUES ('k', '{"n": 2}');
RELEASE SAVEPOINT a;
PREPARE TRANSACTION 'courier_prep_2';
-- written in nested savepoints, the inner one rolled back, the outer one kept: still held
BEGIN;
SAVEPOINT a;
SELECT courier.send('prep_outbox', '{"n": 3}', 'k') IS NOT NULL AS sent;
SAVEPOINT b;
SELECT courier.send('prep_outbox', '{"n": 4}', 'k') IS NOT NULL AS sent;
ROLLBACK TO SAVEPOINT b;
PREPARE TRANSACTION 'courier_prep_3';
-- every write rolled back to a savepoint: pg_courier lets PREPARE go on (this server has
-- max_prepared_transactions = 0, so PostgreSQL itself refuses it; its hint's wording differs
-- between majors, hence terse)
BEGIN;
SAVEPOINT a;
SELECT courier.send('prep_outbox', '{"n": 5}', 'k') IS NOT NULL AS sent;
SAVEPOINT b;
SELECT courier.send('prep_outbox', '{"n": 6}', 'k') IS NOT NULL AS sent;
RELEASE SAVEPOINT b;
ROLLBACK TO SAVEPOINT a;
\set VERBOSITY terse
PREPARE TRANSACTION 'courier_prep_4';
\set VERBOSITY default
-- and a later transaction that writes is refused again
BEGIN;
SELECT courier.send('prep_outbox', '{"n": 7}', 'k') IS NOT NULL AS sent;
PREPARE TRANSACTION 'courier_prep_5';
-- nothing of the above was kept
SELECT count(*) AS rows FROM prep_outbox;

SELECT courier.drop_outbox('prep_outbox');
