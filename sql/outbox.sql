-- pg_courier: the outbox SQL surface and its errors
SET client_min_messages = warning;
\set SHOW_CONTEXT never
CREATE EXTENSION IF NOT EXISTS pg_courier;

-- create: default schema public, schema-qualified, quoted names
SELECT courier.create_outbox('orders_outbox', 'https://hooks.example.com/orders');
CREATE SCHEMA app;
SELECT courier.create_outbox('app.events', 'http://kafka-rest:8082', 'kafka_rest_v2', '{"topic": "app-events"}');
SELECT courier.create_outbox('"App"."Mixed Case"', 'http://127.0.0.1:9/x', 'cloudevents', '{"batch": true, "batch_size": 50}');
CREATE SCHEMA "App";
SELECT courier.create_outbox('"App"."Mixed Case"', 'http://127.0.0.1:9/x', 'cloudevents', '{"batch": true, "batch_size": 50}');

SELECT outbox, endpoint, format, default_topic, enabled, options FROM courier.outboxes ORDER BY outbox::text;

-- the standard columns
SELECT column_name, data_type, is_nullable, column_default IS NOT NULL AS has_default
  FROM information_schema.columns
 WHERE table_schema = 'public' AND table_name = 'orders_outbox'
 ORDER BY ordinal_position;

-- bad input: clear errors, nothing created
SELECT courier.create_outbox('bad1', 'https://x.example.com', 'avro');
SELECT courier.create_outbox('bad2', 'not a url');
SELECT courier.create_outbox('bad3', 'ftp://files.example.com/drop');
SELECT courier.create_outbox('bad4', 'https://');
SELECT courier.create_outbox('bad5', 'https://x.example.com/a#frag');
SELECT courier.create_outbox('bad6', 'https://user:s3cret@x.example.com/a#frag');
SELECT courier.create_outbox('orders_outbox', 'https://x.example.com');
SELECT courier.create_outbox('x; DROP TABLE orders_outbox', 'https://x.example.com');
SELECT courier.create_outbox('a.b.c', 'https://x.example.com');
SELECT courier.create_outbox('nosuchschema.t', 'https://x.example.com');
SELECT courier.create_outbox(NULL, 'https://x.example.com');
SELECT courier.create_outbox('bad7', 'https://x.example.com', 'cloudevents', '{"colour": "blue"}');
SELECT courier.create_outbox('bad8', 'https://x.example.com', 'cloudevents', '{"batch_size": "ten"}');
SELECT courier.create_outbox('bad9', 'https://x.example.com', 'cloudevents', '{"batch_size": 0}');
SELECT courier.create_outbox('bad10', 'https://x.example.com', 'kafka_rest_v2', '{"batch": true}');
SELECT courier.create_outbox('bad11', 'https://x.example.com', 'cloudevents', '[1,2]');
SELECT courier.create_outbox('bad12', 'https://x.example.com', 'kafka_rest_v2', '{"envelope": "avro"}');
-- a hostile but valid quoted name is just a name
SELECT courier.create_outbox('"x""; DROP TABLE orders_outbox; --"', 'https://x.example.com');
SELECT count(*) AS outboxes, (SELECT count(*) FROM pg_class WHERE relname LIKE 'bad%') AS stray_relations
  FROM courier.outboxes;

-- send: returns the event id, ids follow insertion order
SELECT courier.send('orders_outbox', '{"order": 1}', 'order-1', 'order.created') IS NOT NULL AS sent;
SELECT courier.send('orders_outbox', '{"order": 1, "status": "paid"}', 'order-1', 'order.paid',
                    '{"X-Tenant": "acme"}') IS NOT NULL AS sent;
INSERT INTO orders_outbox (topic, key, payload) VALUES ('order.created', 'order-2', '{"order": 2}');
SELECT id, topic, key, payload, headers, attempts, next_attempt_at, last_error
  FROM orders_outbox ORDER BY id;
SELECT count(DISTINCT event_id) = count(*) AS unique_event_ids FROM orders_outbox;

-- a rolled-back transaction publishes nothing
BEGIN;
SELECT courier.send('orders_outbox', '{"order": 3}', 'order-3') IS NOT NULL AS sent;
ROLLBACK;
SELECT count(*) FROM orders_outbox WHERE key = 'order-3';

-- from PL/pgSQL functions and procedures, inside the caller's transaction
CREATE TABLE orders (id int PRIMARY KEY, status text);
CREATE PROCEDURE place_order(p_id int) LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO orders VALUES (p_id, 'new');
    PERFORM courier.send('orders_outbox', jsonb_build_object('order', p_id), 'order-' || p_id, 'order.created');
END $$;
CALL place_order(10);
BEGIN;
CALL place_order(11);
ROLLBACK;
SELECT (SELECT count(*) FROM orders) AS orders, (SELECT count(*) FROM orders_outbox WHERE key IN ('order-10', 'order-11')) AS events;

-- send: bad input
SELECT courier.send('orders', '{"x": 1}');
SELECT courier.send('no_such_table', '{"x": 1}');
SELECT courier.send(NULL, '{"x": 1}');
SELECT courier.send('orders_outbox', NULL);
SELECT courier.send('orders_outbox', '{"x": 1}', 'k', 't', '["not", "an", "object"]');
SET courier.max_payload_bytes = 100;
SELECT courier.send('orders_outbox', jsonb_build_object('blob', repeat('x', 200)));
INSERT INTO orders_outbox (payload) VALUES (jsonb_build_object('blob', repeat('x', 200)));
-- the limit holds for UPDATE too (payload, headers, topic); a row's identity and key are fixed
UPDATE orders_outbox SET payload = jsonb_build_object('blob', repeat('x', 200)) WHERE key = 'order-2';
UPDATE orders_outbox SET headers = jsonb_build_object('X-Blob', repeat('x', 200)) WHERE key = 'order-2';
UPDATE orders_outbox SET topic = repeat('t', 200) WHERE key = 'order-2';
RESET courier.max_payload_bytes;
UPDATE orders_outbox SET payload = jsonb_build_object('blob', repeat('x', 200)) WHERE key = 'order-2';
SET courier.max_payload_bytes = 100;
-- (what the worker does after a failure: unchanged large columns are not checked again)
UPDATE orders_outbox SET attempts = attempts + 1, last_error = 'HTTP 503' WHERE key = 'order-2';
UPDATE orders_outbox SET id = id + 1000 WHERE key = 'order-2';
UPDATE orders_outbox SET event_id = gen_random_uuid() WHERE key = 'order-2';
UPDATE orders_outbox SET key = 'order-3' WHERE key = 'order-2';
UPDATE orders_outbox SET key = key, id = id WHERE key = 'order-2';
RESET courier.max_payload_bytes;
UPDATE orders_outbox SET payload = '{"order": 2}', attempts = 0, last_error = NULL WHERE key = 'order-2';
\set VERBOSITY terse
INSERT INTO orders_outbox (key) VALUES ('no payload');
\set VERBOSITY default
SELECT count(*) FROM orders_outbox;

-- credentials never shown
SELECT courier._redact_url('https://user:s3cret@hooks.example.com/x?token=abc&v=2');
SELECT courier.create_outbox('with_auth', 'https://user:s3cret@hooks.example.com/x');
SELECT outbox, endpoint FROM courier.outbox_stats WHERE outbox = 'with_auth'::regclass;

-- stats
SELECT outbox, format, enabled, pending, delivered FROM courier.outbox_stats ORDER BY outbox::text;

-- alter
SELECT courier.alter_outbox('orders_outbox', endpoint => 'https://hooks.example.com/v2', enabled => false);
SELECT courier.alter_outbox('orders_outbox', endpoint => 'gopher://x');
SELECT courier.alter_outbox('orders', enabled => true);
SELECT endpoint, enabled FROM courier.outboxes WHERE outbox = 'orders_outbox'::regclass;

-- drop
SELECT courier.drop_outbox('orders');
SELECT courier.drop_outbox('with_auth');
SELECT courier.drop_outbox('"App"."Mixed Case"');
SELECT count(*) FROM courier.outboxes;
SELECT to_regclass('"App"."Mixed Case"') IS NULL AS table_gone;

-- the registration is dumped by pg_dump (extension configuration table)
SELECT 'courier.outboxes'::regclass = ANY (extconfig) AS outboxes_dumped FROM pg_extension WHERE extname = 'pg_courier';

-- registration: only ordinary tables with the outbox columns, pg_courier's triggers and no rules
CREATE TABLE reg_plain (LIKE orders_outbox INCLUDING ALL);
CREATE VIEW reg_view AS SELECT * FROM orders_outbox;
CREATE MATERIALIZED VIEW reg_matview AS SELECT * FROM orders_outbox;
CREATE TABLE reg_parted (LIKE orders_outbox) PARTITION BY RANGE (id);
CREATE TABLE reg_rule (LIKE orders_outbox INCLUDING ALL);
CREATE RULE reg_keep AS ON DELETE TO reg_rule DO INSTEAD NOTHING;
CREATE DOMAIN reg_json AS jsonb;
CREATE TABLE reg_domain (LIKE orders_outbox INCLUDING ALL);
ALTER TABLE reg_domain ALTER COLUMN payload TYPE reg_json;
CREATE TABLE reg_types (LIKE orders_outbox INCLUDING ALL);
ALTER TABLE reg_types ALTER COLUMN attempts TYPE bigint;
CREATE TABLE reg_missing (LIKE orders_outbox INCLUDING ALL);
ALTER TABLE reg_missing DROP COLUMN last_error;
CREATE TABLE reg_extra (LIKE orders_outbox INCLUDING ALL, tenant text NOT NULL);
CREATE UNLOGGED TABLE reg_unlogged (LIKE orders_outbox INCLUDING ALL);
CREATE TABLE reg_parent (LIKE orders_outbox INCLUDING ALL);
CREATE TABLE reg_child () INHERITS (reg_parent);
CREATE TABLE reg_rls (LIKE orders_outbox INCLUDING ALL);
ALTER TABLE reg_rls ENABLE ROW LEVEL SECURITY;
CREATE TABLE reg_nokey (LIKE orders_outbox);
CREATE SEQUENCE reg_seq;
SELECT r AS relation, courier._outbox_shape_problem(r) AS problem
  FROM unnest(ARRAY['orders_outbox', 'reg_plain', 'reg_view', 'reg_matview', 'reg_parted', 'reg_rule', 'reg_domain',
                    'reg_types', 'reg_missing', 'reg_extra', 'reg_unlogged', 'reg_parent', 'reg_child', 'reg_rls',
                    'reg_nokey', 'reg_seq', '4294967295']::regclass[]) r;
-- a direct INSERT checks the structure (indexes and triggers come after the data in a restore)
INSERT INTO courier.outboxes (outbox, endpoint, format, owner)
VALUES ('reg_view', 'https://x.example.com', 'cloudevents', current_user::regrole);
INSERT INTO courier.outboxes (outbox, endpoint, format, owner)
VALUES ('reg_rule', 'https://x.example.com', 'cloudevents', current_user::regrole);
INSERT INTO courier.outboxes (outbox, endpoint, format, owner)
VALUES ('reg_domain', 'https://x.example.com', 'cloudevents', current_user::regrole);
SELECT courier.adopt_outbox('reg_matview', 'https://x.example.com');
SELECT courier.adopt_outbox('reg_parted', 'https://x.example.com');
SELECT courier.adopt_outbox('reg_types', 'https://x.example.com');
SELECT courier.adopt_outbox('reg_nokey', 'https://x.example.com');
SELECT courier.adopt_outbox('reg_plain', 'gopher://x.example.com');
SELECT courier.adopt_outbox('reg_plain', 'https://x.example.com', 'cloudevents', '{"max_inflight": 5000}');
SELECT courier.adopt_outbox('orders_outbox', 'https://x.example.com');
SELECT courier.adopt_outbox(NULL, 'https://x.example.com');
-- a registration stays with its table
UPDATE courier.outboxes SET outbox = 'reg_plain' WHERE outbox = 'orders_outbox'::regclass;
SELECT count(*) AS refused_left_nothing FROM courier.outboxes WHERE outbox::text LIKE 'reg_%';

-- adopt_outbox: an existing table with the outbox columns (say restored on its own) and its rows
INSERT INTO reg_plain (id, payload) VALUES (7, '{"restored": 1}'), (9, '{"restored": 2}');
SELECT courier.adopt_outbox('reg_plain', 'https://x.example.com', 'cloudevents', '{"topic": "restored"}');
SELECT courier._outbox_shape_problem('reg_plain') IS NULL AS is_outbox,
       (SELECT string_agg(tgname, ', ' ORDER BY tgname) FROM pg_trigger WHERE tgrelid = 'reg_plain'::regclass) AS triggers,
       pg_get_serial_sequence('reg_plain', 'id') AS id_sequence,
       (SELECT count(*) FROM pg_index WHERE indrelid = 'reg_plain'::regclass AND indpred IS NOT NULL) AS failed_rows_index;
SELECT courier.send('reg_plain', '{"new": 1}', 'k') IS NOT NULL AS sent;
SELECT id, payload FROM reg_plain ORDER BY id;
SELECT default_topic FROM courier.outboxes WHERE outbox = 'reg_plain'::regclass;
-- disabling pg_courier's trigger afterwards shows (the worker reports such an outbox as broken)
ALTER TABLE reg_plain DISABLE TRIGGER courier_outbox_insert;
SELECT courier._outbox_shape_problem('reg_plain');
ALTER TABLE reg_plain ENABLE TRIGGER courier_outbox_insert;

-- another role's table: neither adopted nor registered directly
CREATE TABLE reg_theirs (LIKE orders_outbox INCLUDING ALL);
CREATE ROLE regress_courier_eve;
SET ROLE regress_courier_eve;
SELECT courier.adopt_outbox('reg_theirs', 'https://x.example.com');
INSERT INTO courier.outboxes (outbox, endpoint, format, owner)
VALUES ('reg_theirs', 'https://x.example.com', 'cloudevents', 'regress_courier_eve');
RESET ROLE;

-- DROP TABLE unregisters; dead letters stay as evidence, under the table's name
SELECT courier.create_outbox('drop_me', 'https://x.example.com');
INSERT INTO courier.dead_letters (outbox, owner, event_id, payload, created_at, attempts, first_failed_at, last_failed_at)
VALUES ('drop_me', current_user::regrole, '00000000-0000-0000-0000-0000000000ee', '{}', now(), 1, now(), now());
DROP TABLE drop_me;
SELECT count(*) AS registrations FROM courier.outboxes WHERE outbox::text = 'drop_me';
SELECT outbox, outbox_name FROM courier.dead_letters WHERE event_id = '00000000-0000-0000-0000-0000000000ee';
DELETE FROM courier.dead_letters WHERE event_id = '00000000-0000-0000-0000-0000000000ee';
CREATE SCHEMA drop_schema;
SELECT courier.create_outbox('drop_schema.a', 'https://x.example.com');
SELECT courier.create_outbox('drop_schema.b', 'https://x.example.com');
DROP SCHEMA drop_schema CASCADE;
SELECT count(*) AS registrations FROM courier.outboxes WHERE outbox::text LIKE 'drop_schema.%';
-- pg_dump writes only registrations of existing tables
SELECT extcondition[array_position(extconfig, 'courier.outboxes'::regclass)] FROM pg_extension WHERE extname = 'pg_courier';

-- leave the database as we found it
DROP ROLE regress_courier_eve;
SELECT courier.drop_outbox('reg_plain');
DROP VIEW reg_view;
DROP MATERIALIZED VIEW reg_matview;
DROP TABLE reg_parted, reg_rule, reg_domain, reg_types, reg_missing, reg_extra, reg_unlogged, reg_child, reg_parent,
           reg_rls, reg_nokey, reg_theirs;
DROP SEQUENCE reg_seq;
DROP DOMAIN reg_json;
DROP PROCEDURE place_order(int);
DROP TABLE orders;
SELECT courier.drop_outbox('orders_outbox');
SELECT courier.drop_outbox('app.events');
SELECT courier.drop_outbox('"x""; DROP TABLE orders_outbox; --"');
DROP SCHEMA app, "App";
