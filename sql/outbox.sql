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
RESET courier.max_payload_bytes;
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

-- leave the database as we found it
DROP PROCEDURE place_order(int);
DROP TABLE orders;
SELECT courier.drop_outbox('orders_outbox');
SELECT courier.drop_outbox('app.events');
SELECT courier.drop_outbox('"x""; DROP TABLE orders_outbox; --"');
DROP SCHEMA app, "App";
