-- pg_courier: options of webhooks (issue 12, part W) and their refusals, in our words: CloudEvents
-- source and topic, headers we set ourselves, Standard Webhooks secrets (never quoted),
-- max_request_bytes; empty topics at INSERT.
SET client_min_messages = warning;
\set SHOW_CONTEXT never
CREATE EXTENSION IF NOT EXISTS pg_courier;

-- source: a non-empty URI-reference
SELECT courier.create_outbox('wh1', 'https://x.example.com', 'cloudevents', '{"source": ""}');
SELECT courier.create_outbox('wh1', 'https://x.example.com', 'cloudevents', '{"source": "my events"}');
SELECT courier.create_outbox('wh1', 'https://x.example.com', 'cloudevents', '{"source": "/orders/заказы"}');
SELECT courier.create_outbox('wh1', 'https://x.example.com', 'cloudevents', '{"source": "/a%zz"}');
SELECT courier.create_outbox('wh1', 'https://x.example.com', 'cloudevents', '{"source": ":x"}');
SELECT courier.create_outbox('wh1', 'https://x.example.com', 'cloudevents', '{"source": "a#b#c"}');
SELECT courier.create_outbox('wh1', 'https://x.example.com', 'cloudevents', '{"source": 7}');
-- topic: not empty
SELECT courier.create_outbox('wh1', 'https://x.example.com', 'cloudevents', '{"topic": ""}');
-- headers we set ourselves
SELECT courier.create_outbox('wh1', 'https://x.example.com', 'cloudevents', '{"headers": {"CE-Type": "x"}}');
SELECT courier.create_outbox('wh1', 'https://x.example.com', 'cloudevents', '{"headers": {"User-Agent": "x"}}');
SELECT courier.create_outbox('wh1', 'https://x.example.com', 'cloudevents', '{"headers": {"webhook-signature": "v1,x"}}');
-- signing secrets: the errors never quote them
SELECT courier.create_outbox('wh1', 'https://x.example.com', 'cloudevents', '{"signing_secret": "sekrit-value"}');
SELECT courier.create_outbox('wh1', 'https://x.example.com', 'cloudevents', '{"signing_secret": "whsec_c2hvcnQ="}');
SELECT courier.create_outbox('wh1', 'https://x.example.com', 'cloudevents', '{"signing_secret": "whsec_!!!!notbase64!!!!"}');
SELECT courier.create_outbox('wh1', 'https://x.example.com', 'cloudevents',
       '{"signing_secret": ["whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=", "whsec_bad"]}');
SELECT courier.create_outbox('wh1', 'https://x.example.com', 'cloudevents', '{"signing_secret": []}');
SELECT courier.create_outbox('wh1', 'https://x.example.com', 'cloudevents', '{"signing_secret": 42}');
SELECT courier.create_outbox('wh1', 'https://x.example.com', 'cloudevents', '{"signing_secret": [42]}');
SELECT courier.create_outbox('wh1', 'http://kafka.example.com', 'kafka_rest_v2',
       '{"signing_secret": "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}');
-- max_request_bytes: within the GUC's bounds
SELECT courier.create_outbox('wh1', 'https://x.example.com', 'cloudevents', '{"max_request_bytes": 10}');
SHOW courier.max_request_bytes;

-- valid ones
SELECT courier.create_outbox('wh1', 'https://x.example.com', 'cloudevents',
       '{"source": "urn:example:orders%20eu?region=1#x", "topic": "com.example.order", "batch": true,
         "max_request_bytes": 65536,
         "signing_secret": "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}');
SELECT courier.alter_outbox('wh1', options => '{"signing_secret": ["whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
       "whsec_eHl6eHl6eHl6eHl6eHl6eHl6eHl6eHl6eHl6eHl6"]}');
SELECT courier.alter_outbox('wh1', options => '{"source": "not a uri"}');
-- nothing shows the secret
SELECT count(*) AS shown FROM courier.outbox_stats s WHERE s::text LIKE '%whsec%';
SELECT position('whsec' IN courier.metrics()) AS in_metrics;

-- an empty topic is refused at INSERT; NULL takes the default
INSERT INTO wh1 (topic, payload) VALUES ('', '{}');
INSERT INTO wh1 (topic, payload) VALUES (NULL, '{}');
SELECT courier.send('wh1', '{}', 'k', '') IS NULL AS sent;
SELECT courier._origin('https://user:pw@x.example.com:8443/hooks/in?token=1#f') AS breaker_identity;
SELECT courier.drop_outbox('wh1');
