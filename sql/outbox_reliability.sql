-- pg_courier: retries, dead letters, pause/resume, breakers, metrics, and who may see what
SET client_min_messages = warning;
\set SHOW_CONTEXT never
CREATE EXTENSION IF NOT EXISTS pg_courier;

-- reliability options
SELECT courier.create_outbox('rel_ok', 'http://127.0.0.1:9/x', 'cloudevents',
       '{"max_attempts": 0, "retry_base_ms": 50, "retry_max_ms": 1000, "on_dead_letter": "block",
         "headers": {"Authorization": "Bearer s3cret-token"}}');
SELECT courier.create_outbox('rel_bad1', 'http://127.0.0.1:9/x', 'cloudevents', '{"on_dead_letter": "drop"}');
SELECT courier.create_outbox('rel_bad2', 'http://127.0.0.1:9/x', 'cloudevents', '{"max_attempts": -1}');
SELECT courier.create_outbox('rel_bad3', 'http://127.0.0.1:9/x', 'cloudevents', '{"retry_base_ms": 0}');
SELECT courier.create_outbox('rel_bad4', 'http://127.0.0.1:9/x', 'cloudevents', '{"headers": {"Content-Type": "text/plain"}}');
SELECT courier.create_outbox('rel_bad5', 'http://127.0.0.1:9/x', 'cloudevents', '{"headers": {"X-A": 1}}');
SELECT courier.create_outbox('rel_bad6', 'http://127.0.0.1:9/x', 'cloudevents', '{"headers": {"Bad Name": "v"}}');
SELECT courier.create_outbox('rel_bad7', 'http://127.0.0.1:9/x', 'cloudevents', '{"retry_max_ms": 1.5}');
SELECT courier.create_outbox('rel_tls', 'https://127.0.0.1:9/x', 'cloudevents', '{"tls_verify": false}');
SELECT courier.create_outbox('rel_bad8', 'http://127.0.0.1:9/x', 'cloudevents', '{"retention": "soon"}');
SELECT courier.create_outbox('rel_bad9', 'http://127.0.0.1:9/x', 'cloudevents', '{"retention": "-1 day"}');
-- options that override a setting have the setting's bounds; retention at most 10 years
SELECT courier.create_outbox('rel_bad10', 'http://127.0.0.1:9/x', 'cloudevents', '{"max_inflight": 3000}');
SELECT courier.create_outbox('rel_bad11', 'http://127.0.0.1:9/x', 'cloudevents', '{"batch_size": 2147483647}');
SELECT courier.create_outbox('rel_bad12', 'http://127.0.0.1:9/x', 'cloudevents', '{"timeout_ms": 99}');
SELECT courier.create_outbox('rel_bad13', 'http://127.0.0.1:9/x', 'cloudevents', '{"retry_max_ms": 86400001}');
SELECT courier.create_outbox('rel_bad14', 'http://127.0.0.1:9/x', 'cloudevents', '{"max_attempts": 1e30}');
SELECT courier.create_outbox('rel_bad15', 'http://127.0.0.1:9/x', 'cloudevents', '{"retention": "100000000 years"}');
SELECT courier.create_outbox('rel_bad16', 'http://127.0.0.1:9/x', 'cloudevents', '{"retention": "3653 days"}');
SELECT courier.create_outbox('rel_bad17', 'http://127.0.0.1:9/x', 'cloudevents', '{"retention": "1 month -31 days"}');
SELECT courier.create_outbox('rel_bad18', 'http://127.0.0.1:9/x', 'cloudevents', '{"retention": "infinity"}');
SELECT o, courier._option_bounds(o) FROM unnest(ARRAY['batch_size', 'max_inflight', 'timeout_ms', 'retry_base_ms',
                                                       'retry_max_ms', 'max_attempts', 'topic']) o;
SELECT name, min_val, max_val FROM pg_settings
 WHERE name IN ('courier.batch_size', 'courier.max_inflight', 'courier.http_timeout_ms', 'courier.retry_base_ms',
                'courier.retry_max_ms', 'courier.max_attempts') ORDER BY name;
SELECT count(*) FROM pg_class WHERE relname LIKE 'rel_bad%';
-- the largest values are accepted
SELECT courier.alter_outbox('rel_ok', options => '{"max_inflight": 1024, "batch_size": 100000, "retention": "10 years"}');
SELECT courier.alter_outbox('rel_ok', options => '{"retention": "120 months"}');
UPDATE courier.outboxes SET options = '{"max_inflight": 1025}' WHERE outbox = 'rel_ok'::regclass;
SELECT courier.alter_outbox('rel_ok', options => '{"max_attempts": 0, "retry_base_ms": 50, "retry_max_ms": 1000,
                                                   "on_dead_letter": "block", "headers": {"Authorization": "Bearer s3cret-token"}}');

-- the Authorization header never shows in stats or metrics
SELECT outbox, endpoint, breaker_state, dead_letters FROM courier.outbox_stats WHERE outbox = 'rel_ok'::regclass;
SELECT position('s3cret' IN courier.metrics()) = 0 AS metrics_without_secret,
       position('s3cret' IN (SELECT string_agg(s::text, ',') FROM courier.outbox_stats s)) IS NULL
       OR position('s3cret' IN (SELECT string_agg(s::text, ',') FROM courier.outbox_stats s)) = 0 AS stats_without_secret;

-- pause / resume
SELECT courier.pause('rel_ok');
SELECT enabled FROM courier.outboxes WHERE outbox = 'rel_ok'::regclass;
SELECT courier.resume('rel_ok');
SELECT enabled FROM courier.outboxes WHERE outbox = 'rel_ok'::regclass;
SELECT courier.pause('pg_class');

-- dead letters: replay puts events back with the same event id, purge removes them
INSERT INTO courier.dead_letters (outbox, owner, event_id, topic, key, payload, created_at, attempts,
                                  first_failed_at, last_failed_at, last_status, last_error, blocking)
VALUES ('rel_ok', current_user::regrole, '00000000-0000-0000-0000-000000000001', 't', 'k1', '{"n": 1}', now(), 3,
        now() - interval '1 hour', now() - interval '1 hour', 400, 'HTTP 400: bad', true),
       ('rel_ok', current_user::regrole, '00000000-0000-0000-0000-000000000002', 't', 'k2', '{"n": 2}', now(), 10,
        now() - interval '2 days', now() - interval '2 days', 503, 'HTTP 503', false),
       ('rel_ok', current_user::regrole, '00000000-0000-0000-0000-000000000003', 't', 'k3', '{"n": 3}', now(), 1,
        now(), now(), 0, 'Kafka error_code 1', false);
SELECT courier.replay_dead_letters('rel_ok', event_ids => ARRAY['00000000-0000-0000-0000-000000000001'::uuid]);
SELECT event_id, key, payload, attempts FROM rel_ok;
SELECT courier.purge_dead_letters('rel_ok', older_than => interval '1 day');
SELECT event_id, last_error FROM courier.dead_letters ORDER BY event_id;
SELECT courier.replay_dead_letters('rel_ok', key => 'nope');
SELECT courier.replay_dead_letters('pg_class');
SELECT courier.replay_dead_letters(NULL);
SELECT courier.purge_dead_letters();

-- retention: delivered events kept for audit, and replayed with the same event id
SELECT courier.alter_outbox('rel_ok', options => '{"retention": "7 days", "max_attempts": 0}');
INSERT INTO courier.delivered_events (outbox, outbox_id, event_id, topic, key, payload, created_at, attempts)
VALUES ('rel_ok', 41, '00000000-0000-0000-0000-0000000000d1', 't', 'k9', '{"n": 9}', now(), 1);
SELECT courier.replay_delivered('rel_ok', event_ids => ARRAY['00000000-0000-0000-0000-0000000000d1'::uuid]);
SELECT event_id, key, payload FROM rel_ok WHERE key = 'k9';
SELECT count(*) AS still_retained FROM courier.delivered_events;
SELECT courier.replay_delivered('pg_class');
DELETE FROM courier.delivered_events;

-- metrics: Prometheus text exposition format
SELECT line FROM regexp_split_to_table(courier.metrics(), E'\n') line
 WHERE (line LIKE 'courier_outbox_%{database="contrib_regression",outbox="public.rel_ok"}%' OR line LIKE '# TYPE%')
   AND line NOT LIKE 'courier_outbox_oldest_pending_seconds{%'   -- a clock reading
 ORDER BY line;
SELECT count(*) FROM courier.breakers();

-- privileges: a role sees, uses and changes only its own outboxes
CREATE ROLE courier_alice;
CREATE ROLE courier_bob;
CREATE SCHEMA shared_space;
GRANT CREATE, USAGE ON SCHEMA shared_space TO courier_alice, courier_bob;
SET ROLE courier_alice;
SELECT courier.create_outbox('shared_space.alice_events', 'https://alice:pw@hooks.example.com/a');
SELECT courier.send('shared_space.alice_events', '{"x": 1}', 'k') IS NOT NULL AS sent;
SELECT outbox, endpoint, pending FROM courier.outbox_stats;
SELECT count(*) AS visible_registrations FROM courier.outboxes;
RESET ROLE;
INSERT INTO courier.dead_letters (outbox, owner, event_id, payload, created_at, attempts, first_failed_at, last_failed_at)
VALUES ('shared_space.alice_events', 'courier_alice', gen_random_uuid(), '{}', now(), 1, now(), now());
SET ROLE courier_bob;
SELECT count(*) AS bob_sees_outboxes FROM courier.outboxes;
SELECT count(*) AS bob_sees_stats FROM courier.outbox_stats;
SELECT count(*) AS bob_sees_dead_letters FROM courier.dead_letters;
SELECT courier.send('shared_space.alice_events', '{"x": 2}');
SELECT * FROM shared_space.alice_events;
SELECT courier.alter_outbox('shared_space.alice_events', enabled => false);
SELECT courier.drop_outbox('shared_space.alice_events');
SELECT courier.replay_dead_letters('shared_space.alice_events');
SELECT courier.purge_dead_letters('shared_space.alice_events');
INSERT INTO courier.outboxes (outbox, endpoint, format, owner)
VALUES ('shared_space.alice_events', 'http://evil.example.com', 'cloudevents', 'courier_bob');
UPDATE courier.outboxes SET endpoint = 'http://evil.example.com';
-- bob cannot register alice's table as his own either
SELECT courier.create_outbox('shared_space.bob_events', 'https://hooks.example.com/b');
INSERT INTO courier.outboxes (outbox, endpoint, format, owner)
VALUES ('shared_space.bob_events', 'http://x.example.com', 'cloudevents', 'courier_alice');
RESET ROLE;
SELECT outbox, endpoint, enabled, owner FROM courier.outboxes WHERE outbox::text LIKE 'shared_space.%' ORDER BY 1;
SET ROLE courier_alice;
SELECT courier.purge_dead_letters('shared_space.alice_events');
SELECT courier.drop_outbox('shared_space.alice_events');
RESET ROLE;
SELECT courier.drop_outbox('shared_space.bob_events');
DROP SCHEMA shared_space;
REVOKE ALL ON SCHEMA public FROM courier_alice, courier_bob;
DROP ROLE courier_alice;
DROP ROLE courier_bob;

-- leave the database as we found it
SELECT courier.drop_outbox('rel_ok');
SELECT courier.drop_outbox('rel_tls');
SELECT count(*) AS leftover_dead_letters FROM courier.dead_letters;
