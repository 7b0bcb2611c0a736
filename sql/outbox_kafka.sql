-- pg_courier: Kafka REST options at create_outbox / alter_outbox (formats kafka_rest_v2 and
-- kafka_rest_v3): embedded_format, cluster_id, and topic names Kafka would refuse.
SET client_min_messages = warning;
\set SHOW_CONTEXT never
CREATE EXTENSION IF NOT EXISTS pg_courier;

-- accepted: both embedded formats, v3 with and without a cluster id, an endpoint with a query
SELECT courier.create_outbox('kj', 'https://kafka.example.com/', 'kafka_rest_v2', '{"topic": "orders.v1"}');
SELECT courier.create_outbox('kb', 'https://kafka.example.com/rest?tenant=a', 'kafka_rest_v2',
                             '{"topic": "orders_v1", "embedded_format": "binary"}');
SELECT courier.create_outbox('k3', 'https://kafka.example.com', 'kafka_rest_v3', '{"topic": "orders-v1"}');
SELECT courier.create_outbox('k3c', 'https://kafka.example.com', 'kafka_rest_v3',
                             '{"cluster_id": "lkc-abc_123", "envelope": "none"}');
SELECT outbox, format, options FROM courier.outboxes ORDER BY outbox::text COLLATE "C";

-- topics Kafka refuses (and "." / "..", which a URL turns into path steps)
SELECT courier.create_outbox('kbad', 'https://kafka.example.com', 'kafka_rest_v2', '{"topic": "."}');
SELECT courier.create_outbox('kbad', 'https://kafka.example.com', 'kafka_rest_v2', '{"topic": ".."}');
SELECT courier.create_outbox('kbad', 'https://kafka.example.com', 'kafka_rest_v3', '{"topic": "a b"}');
SELECT courier.create_outbox('kbad', 'https://kafka.example.com', 'kafka_rest_v3', '{"topic": ""}');
SELECT courier.create_outbox('kbad', 'https://kafka.example.com', 'kafka_rest_v2',
                             jsonb_build_object('topic', repeat('t', 250)));
SELECT courier.create_outbox('kbad', 'https://kafka.example.com', 'kafka_rest_v2', '{"topic": "orders/x"}');
SELECT courier.alter_outbox('kj', options => '{"topic": ".."}');
-- (a CloudEvents type may be any non-empty string)
SELECT courier.create_outbox('ce_dots', 'https://hooks.example.com', 'cloudevents', '{"topic": ".."}');

-- embedded_format: 'json' or 'binary', for kafka_rest_v2 only
SELECT courier.create_outbox('kbad', 'https://kafka.example.com', 'kafka_rest_v2', '{"embedded_format": "avro"}');
SELECT courier.create_outbox('kbad', 'https://kafka.example.com', 'kafka_rest_v2', '{"embedded_format": true}');
SELECT courier.create_outbox('kbad', 'https://kafka.example.com', 'kafka_rest_v3', '{"embedded_format": "binary"}');
SELECT courier.create_outbox('kbad', 'https://hooks.example.com', 'cloudevents', '{"embedded_format": "json"}');
SELECT courier.alter_outbox('kb', options => '{"embedded_format": "BINARY"}');

-- cluster_id: for kafka_rest_v3 only, and only characters a URL path carries as they are
SELECT courier.create_outbox('kbad', 'https://kafka.example.com', 'kafka_rest_v3', '{"cluster_id": "a/../b"}');
SELECT courier.create_outbox('kbad', 'https://kafka.example.com', 'kafka_rest_v3', '{"cluster_id": ""}');
SELECT courier.create_outbox('kbad', 'https://kafka.example.com', 'kafka_rest_v3', '{"cluster_id": 7}');
SELECT courier.create_outbox('kbad', 'https://kafka.example.com', 'kafka_rest_v2', '{"cluster_id": "abc"}');
SELECT courier.create_outbox('kbad', 'https://kafka.example.com', 'kafka_rest_v3', '{"batch": true}');

-- a direct write to the catalog gets the same checks
UPDATE courier.outboxes SET options = '{"cluster_id": "x?y"}' WHERE outbox = 'k3'::regclass;

-- nothing was left behind by the refusals
SELECT count(*) FROM pg_class WHERE relname IN ('kbad', 'ce_dots') AND relnamespace = 'public'::regnamespace;
SELECT courier.alter_outbox('kb', options => '{"topic": "orders_v2", "embedded_format": "json"}');
SELECT options FROM courier.outboxes WHERE outbox = 'kb'::regclass;

SELECT courier.drop_outbox(o) FROM unnest(ARRAY['kj', 'kb', 'k3', 'k3c', 'ce_dots']) o;
