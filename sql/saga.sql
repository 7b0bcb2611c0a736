-- pg_courier: saga-step state — the order-flow example end to end, and every rule of the state machine
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_courier;

-- deterministic saga ids, and a way to show an error's SQLSTATE with its message
CREATE FUNCTION sid(n integer) RETURNS uuid LANGUAGE sql IMMUTABLE
AS $$ SELECT ('00000000-0000-0000-0000-' || lpad(n::text, 12, '0'))::uuid $$;
CREATE FUNCTION try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

------------------------------------------------------------------------------------------------------
-- definitions
------------------------------------------------------------------------------------------------------
SELECT courier.create_outbox('order_commands', 'http://127.0.0.1:9/unused');

-- the order flow: create order -> reserve inventory (10 s) -> charge payment (30 s) -> ship
SELECT courier.saga_define('order', '[
    {"name": "create_order",      "compensation": "cancel_order"},
    {"name": "reserve_inventory", "compensation": "release_inventory", "timeout": "10 s"},
    {"name": "charge_payment",    "compensation": "refund_payment",    "timeout": 30},
    {"name": "ship"}
]', 'order_commands');
-- the same definition again: same version
SELECT courier.saga_define('order', '[
    {"name": "create_order",      "compensation": "cancel_order"},
    {"name": "reserve_inventory", "compensation": "release_inventory", "timeout": "10 s"},
    {"name": "charge_payment",    "compensation": "refund_payment",    "timeout": 30},
    {"name": "ship"}
]', 'order_commands');
SELECT saga_type, version, outbox, jsonb_pretty(steps) FROM courier.saga_types WHERE saga_type = 'order';

-- bad definitions
SELECT try($$SELECT courier.saga_define('bad type', '[{"name": "a"}]')$$);
SELECT try($$SELECT courier.saga_define(NULL, '[{"name": "a"}]')$$);
SELECT try($$SELECT courier.saga_define('t', NULL)$$);
SELECT try($$SELECT courier.saga_define('t', '[]')$$);
SELECT try($$SELECT courier.saga_define('t', '{"name": "a"}')$$);
SELECT try($$SELECT courier.saga_define('t', '["a"]')$$);
SELECT try($$SELECT courier.saga_define('t', '[{"nom": "a"}]')$$);
SELECT try($$SELECT courier.saga_define('t', '[{"name": "a b"}]')$$);
SELECT try($$SELECT courier.saga_define('t', '[{"name": "a"}, {"name": "a"}]')$$);
SELECT try($$SELECT courier.saga_define('t', '[{"name": "a", "compensation": 7}]')$$);
SELECT try($$SELECT courier.saga_define('t', '[{"name": "a", "timeout": "soon"}]')$$);
SELECT try($$SELECT courier.saga_define('t', '[{"name": "a", "timeout": -1}]')$$);
SELECT try($$SELECT courier.saga_define('t', '[{"name": "a", "timeout": true}]')$$);
SELECT try($$SELECT courier.saga_define('t', '[{"name": "a", "max_retries": 1.5}]')$$);
SELECT try($$SELECT courier.saga_define('t', '[{"name": "a", "max_retries": -1}]')$$);
SELECT try($$SELECT courier.saga_define('t', (SELECT jsonb_agg(jsonb_build_object('name', 's' || i)) FROM generate_series(1, 101) i))$$);
SELECT try($$SELECT courier.saga_define('t', '[{"name": "a"}]', 'pg_class')$$);
SELECT count(*) AS nothing_half_created FROM courier.saga_types WHERE saga_type = 't';

------------------------------------------------------------------------------------------------------
-- orchestration through the outbox: the participants (PL/pgSQL stand-ins for the inventory, payment
-- and shipping services) read the commands from the outbox and report back
------------------------------------------------------------------------------------------------------
CREATE TABLE answered (id bigint PRIMARY KEY);
CREATE FUNCTION participants(fail_step text DEFAULT NULL, fail_compensation text DEFAULT NULL)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    c record;
BEGIN
    LOOP
        SELECT o.id, o.topic, o.key::uuid AS saga_id, o.payload ->> 'step' AS step, o.payload ->> 'action' AS action
          INTO c
          FROM order_commands o
         WHERE NOT EXISTS (SELECT 1 FROM answered a WHERE a.id = o.id)
         ORDER BY o.id LIMIT 1;
        EXIT WHEN NOT FOUND;
        INSERT INTO answered VALUES (c.id);
        RETURN NEXT c.topic;
        IF c.action = 'execute' AND c.step IS NOT DISTINCT FROM fail_step THEN
            PERFORM courier.saga_step_failed(c.saga_id, c.step, '{"code": "declined"}');
        ELSIF c.action = 'execute' THEN
            PERFORM courier.saga_step_succeeded(c.saga_id, c.step, jsonb_build_object('done', c.step));
        ELSIF c.step IS NOT DISTINCT FROM fail_compensation THEN
            PERFORM courier.saga_compensation_failed(c.saga_id, c.step, '{"code": "refund_rejected"}');
        ELSE
            PERFORM courier.saga_compensated(c.saga_id, c.step);
        END IF;
    END LOOP;
END
$$;
CREATE VIEW saga_summary AS
SELECT s.saga_id, s.status, s.current_step,
       (SELECT string_agg(st.step || '=' || st.status, ' ' ORDER BY st.step_no)
          FROM courier.saga_steps st WHERE st.saga_id = s.saga_id) AS steps
  FROM courier.sagas s;

-- happy path: each command commits with the transition that asked for it
SELECT courier.saga_start('order', '{"order_id": 1, "amount": 25}', sid(1));
SELECT topic, key, payload FROM order_commands ORDER BY id;
SELECT * FROM courier.saga_next(sid(1));
SELECT participants();
SELECT * FROM saga_summary WHERE saga_id = sid(1);
SELECT jsonb_pretty(results) FROM courier.sagas WHERE saga_id = sid(1);

-- starting the same saga_id again is idempotent: same id, no second command, data unchanged
SELECT courier.saga_start('order', '{"order_id": 999}', sid(1)) = sid(1) AS same_id;
SELECT count(*) AS commands, (SELECT data FROM courier.sagas WHERE saga_id = sid(1)) FROM order_commands WHERE key = sid(1)::text;
SELECT courier.saga_define('refund', '[{"name": "refund"}]');
SELECT try($$SELECT courier.saga_start('refund', '{}', sid(1))$$);

-- failure at each step: the steps that succeeded are compensated in reverse order
SELECT courier.saga_start('order', '{"order_id": 2}', sid(2));
SELECT participants(fail_step => 'create_order');
SELECT * FROM saga_summary WHERE saga_id = sid(2);

SELECT courier.saga_start('order', '{"order_id": 3}', sid(3));
SELECT participants(fail_step => 'reserve_inventory');
SELECT * FROM saga_summary WHERE saga_id = sid(3);

SELECT courier.saga_start('order', '{"order_id": 4}', sid(4));
SELECT participants(fail_step => 'charge_payment');
SELECT * FROM saga_summary WHERE saga_id = sid(4);
SELECT errors FROM courier.sagas WHERE saga_id = sid(4);

-- ship has no compensation: nothing to undo for it, the others are undone
SELECT courier.saga_start('order', '{"order_id": 5}', sid(5));
SELECT participants(fail_step => 'ship');
SELECT * FROM saga_summary WHERE saga_id = sid(5);

-- a compensation fails: the saga needs intervention (failed) and stops there
SELECT courier.saga_start('order', '{"order_id": 6}', sid(6));
SELECT participants(fail_step => 'ship', fail_compensation => 'charge_payment');
SELECT * FROM saga_summary WHERE saga_id = sid(6);
SELECT * FROM courier.saga_next(sid(6));
SELECT * FROM courier.saga_compensation_failed(sid(6), 'charge_payment', '{"code": "again"}');  -- a repeat
SELECT errors -> 'charge_payment' AS first_error_kept FROM courier.sagas WHERE saga_id = sid(6);
-- ... until an operator has refunded by hand and says so: compensation resumes
SELECT * FROM courier.saga_compensated(sid(6), 'charge_payment');
SELECT participants();
SELECT * FROM saga_summary WHERE saga_id = sid(6);

-- timeout: reserve_inventory does not answer within its 10 s (the deadline is moved into the past
-- instead of waiting; the worker's sweep is run by hand, in the same transaction so that the
-- database's worker cannot take it first)
SELECT courier.saga_start('order', '{"order_id": 7}', sid(7));
SELECT * FROM courier.saga_step_succeeded(sid(7), 'create_order');
INSERT INTO answered SELECT id FROM order_commands WHERE key = sid(7)::text;  -- nobody answers
SELECT deadline > now() + interval '9 s' AND deadline <= now() + interval '11 s' AS ten_second_deadline
  FROM courier.sagas WHERE saga_id = sid(7);
BEGIN;
UPDATE courier.saga_instances SET deadline = now() - interval '1 s' WHERE saga_id = sid(7);
SELECT courier.saga_enforce_timeouts();
COMMIT;
SELECT courier.saga_enforce_timeouts() AS nothing_more_due;
SELECT * FROM saga_summary WHERE saga_id = sid(7);
SELECT errors, deadline FROM courier.sagas WHERE saga_id = sid(7);
SELECT answered FROM (SELECT participants() AS answered) p;
-- the inventory service answers after all: the late success is accepted and then undone
SELECT * FROM courier.saga_step_succeeded(sid(7), 'reserve_inventory', '{"late": true}');
SELECT participants();
SELECT * FROM saga_summary WHERE saga_id = sid(7);

-- duplicate messages (at-least-once delivery): exact repeats change nothing and send nothing
SELECT count(*) AS commands_before FROM order_commands;
SELECT updated_at AS before FROM courier.sagas WHERE saga_id = sid(1) \gset
SELECT * FROM courier.saga_step_started(sid(1), 'create_order');
SELECT * FROM courier.saga_step_succeeded(sid(1), 'charge_payment', '{"other": "result"}');
SELECT * FROM courier.saga_step_succeeded(sid(1), 'ship');
SELECT * FROM courier.saga_step_failed(sid(4), 'charge_payment', '{"code": "declined"}');
SELECT * FROM courier.saga_compensated(sid(4), 'reserve_inventory');
SELECT * FROM courier.saga_compensated(sid(6), 'charge_payment');
SELECT * FROM courier.saga_abort(sid(4), 'again');
SELECT count(*) AS commands_after FROM order_commands;
SELECT updated_at = :'before' AS untouched, results -> 'charge_payment' AS first_result_kept
  FROM courier.sagas WHERE saga_id = sid(1);

-- illegal transitions
SELECT try($$SELECT courier.saga_step_failed(sid(1), 'ship', '{}')$$);
SELECT try($$SELECT courier.saga_compensated(sid(1), 'ship')$$);
SELECT try($$SELECT courier.saga_compensation_failed(sid(1), 'create_order')$$);
SELECT try($$SELECT courier.saga_abort(sid(1))$$);
SELECT try($$SELECT courier.saga_compensation_failed(sid(6), 'charge_payment')$$);  -- resolved since
SELECT try($$SELECT courier.saga_step_succeeded(sid(2), 'ship')$$);
SELECT try($$SELECT courier.saga_step_started(sid(2), 'ship')$$);
SELECT try($$SELECT courier.saga_compensated(sid(2), 'reserve_inventory')$$);
SELECT try($$SELECT courier.saga_step_succeeded(sid(4), 'charge_payment')$$);
SELECT try($$SELECT courier.saga_step_succeeded(sid(999), 'ship')$$);
SELECT try($$SELECT courier.saga_step_succeeded(sid(1), 'fly')$$);
SELECT try($$SELECT courier.saga_step_succeeded(NULL, 'ship')$$);
SELECT try($$SELECT courier.saga_step_succeeded(sid(1), NULL)$$);
SELECT try($$SELECT courier.saga_start('nope')$$);
SELECT try($$SELECT courier.saga_start('order', '{}', NULL)$$);
SELECT try($$SELECT courier.saga_next(sid(999))$$);
-- the plain error, as a client sees it
SELECT courier.saga_step_succeeded(sid(2), 'ship');

------------------------------------------------------------------------------------------------------
-- orchestration without an outbox: the caller asks saga_next() and reports every transition
------------------------------------------------------------------------------------------------------
SELECT courier.saga_define('payout', '[
    {"name": "debit",  "compensation": "credit_back"},
    {"name": "send",   "compensation": "recall", "max_retries": 2},
    {"name": "notify"}
]');
SELECT courier.saga_start('payout', '{"amount": 100}', sid(20));
SELECT * FROM courier.saga_next(sid(20));
SELECT try($$SELECT courier.saga_step_succeeded(sid(20), 'debit')$$);   -- not started
SELECT try($$SELECT courier.saga_step_started(sid(20), 'send')$$);      -- out of order
SELECT * FROM courier.saga_step_started(sid(20), 'debit');
SELECT * FROM courier.saga_next(sid(20));
SELECT * FROM courier.saga_step_succeeded(sid(20), 'debit', '{"tx": 1}');
-- retries: send may fail twice and is tried again; the third failure compensates
SELECT * FROM courier.saga_step_started(sid(20), 'send');
SELECT * FROM courier.saga_step_failed(sid(20), 'send', '{"try": 1}');
SELECT try($$SELECT courier.saga_step_succeeded(sid(20), 'send')$$);    -- the retry was not started
SELECT * FROM courier.saga_step_started(sid(20), 'send');
SELECT * FROM courier.saga_step_failed(sid(20), 'send', '{"try": 2}');
SELECT * FROM courier.saga_step_started(sid(20), 'send');
SELECT * FROM courier.saga_step_failed(sid(20), 'send', '{"try": 3}');
SELECT * FROM courier.saga_compensated(sid(20), 'debit');
SELECT step, status, attempts, error FROM courier.saga_steps WHERE saga_id = sid(20) ORDER BY step_no;

-- abort: the running step counts as failed, the succeeded ones are compensated
SELECT courier.saga_start('payout', '{"amount": 5}', sid(21));
SELECT * FROM courier.saga_step_started(sid(21), 'debit');
SELECT * FROM courier.saga_step_succeeded(sid(21), 'debit');
SELECT * FROM courier.saga_step_started(sid(21), 'send');
SELECT * FROM courier.saga_abort(sid(21), 'customer cancelled');
SELECT status, abort_reason, errors FROM courier.sagas WHERE saga_id = sid(21);
SELECT * FROM courier.saga_compensated(sid(21), 'debit');
-- aborting before anything succeeded: compensated at once
SELECT courier.saga_start('payout', '{}', sid(22));
SELECT * FROM courier.saga_abort(sid(22));

-- redefinition: running sagas keep their version, new ones start on the new one
SELECT courier.saga_start('payout', '{}', sid(23));
SELECT courier.saga_define('payout', '[{"name": "debit", "compensation": "credit_back"}, {"name": "send"}]');
SELECT courier.saga_start('payout', '{}', sid(24));
SELECT saga_id, version FROM courier.sagas WHERE saga_id IN (sid(23), sid(24)) ORDER BY saga_id;
SELECT count(*) AS v1_steps FROM courier.saga_steps WHERE saga_id = sid(23);
SELECT count(*) AS v2_steps FROM courier.saga_steps WHERE saga_id = sid(24);

------------------------------------------------------------------------------------------------------
-- observability
------------------------------------------------------------------------------------------------------
SELECT saga_type, status, current_step, sagas FROM courier.saga_stats ORDER BY 1, 2, 3;
SELECT count(*) AS stuck_now FROM courier.saga_stuck;
SET courier.saga_stuck_after = '1s';
SHOW courier.saga_stuck_after;
UPDATE courier.saga_instances SET updated_at = now() - interval '1 hour' WHERE saga_id = sid(23);
SELECT saga_id, status, current_step, stuck_for >= interval '1 hour' AS an_hour FROM courier.saga_stuck;
RESET courier.saga_stuck_after;

------------------------------------------------------------------------------------------------------
-- privileges: a saga type is used by members of the role that defined it
------------------------------------------------------------------------------------------------------
CREATE ROLE regress_saga_outsider;
CREATE ROLE regress_saga_member IN ROLE postgres;
SET ROLE regress_saga_outsider;
SELECT try($$SELECT courier.saga_start('payout', '{}', sid(30))$$);
SELECT try($$SELECT courier.saga_next(sid(24))$$);
SELECT try($$SELECT courier.saga_abort(sid(24))$$);
SELECT try($$SELECT courier.saga_define('payout', '[{"name": "x"}]')$$);
SELECT try($$SELECT * FROM courier.saga_instances$$);
SELECT try($$SELECT courier.saga_enforce_timeouts()$$);
SELECT count(*) AS visible FROM courier.sagas;
RESET ROLE;
SET ROLE regress_saga_member;
SELECT * FROM courier.saga_next(sid(24));
RESET ROLE;
DROP ROLE regress_saga_outsider, regress_saga_member;

------------------------------------------------------------------------------------------------------
-- purge: finished sagas older than the given age; failed ones are kept
------------------------------------------------------------------------------------------------------
SELECT courier.saga_start('order', '{"order_id": 9}', sid(9));
SELECT count(*) FROM participants(fail_step => 'ship', fail_compensation => 'create_order');
SELECT courier.saga_purge(interval '1 hour');
UPDATE courier.saga_instances SET updated_at = now() - interval '2 hours';
SELECT courier.saga_purge(interval '1 hour');
SELECT status, count(*) FROM courier.sagas GROUP BY status ORDER BY status;
SELECT try($$SELECT courier.saga_purge(NULL)$$);

-- the definitions and instances are dumped with the database (extension configuration tables)
SELECT c FROM pg_extension, unnest(extconfig::regclass[]) c WHERE extname = 'pg_courier' AND c::text LIKE '%saga%';

-- clean up
DROP VIEW saga_summary;
DROP FUNCTION participants(text, text);
DROP TABLE answered;
DELETE FROM courier.saga_instances;
DELETE FROM courier.saga_types;
SELECT courier.drop_outbox('order_commands');
DROP FUNCTION sid(integer), try(text);
