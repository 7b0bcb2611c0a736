-- pg_courier: the endpoint (SSRF) policy at create_outbox / alter_outbox.
-- Literal non-public addresses, in every spelling the resolver accepts, and localhost are refused
-- under the default policy; names are not resolved here (the worker checks every connection).
-- The test cluster allows private endpoints (its sink is on 127.0.0.1): switch to the default policy.
SET client_min_messages = warning;
\set SHOW_CONTEXT never
CREATE EXTENSION IF NOT EXISTS pg_courier;
ALTER SYSTEM SET courier.allow_private_endpoints = off;
ALTER SYSTEM RESET courier.allowed_hosts;
SELECT pg_reload_conf();
\c
SET client_min_messages = warning;
\set SHOW_CONTEXT never
SHOW courier.allow_private_endpoints;
SHOW courier.allowed_hosts;

-- What create_outbox says for one URL (rolled back either way: nothing is left behind).
CREATE FUNCTION ep_try_create(url text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    st text;
    msg text;
    det text;
BEGIN
    PERFORM courier.create_outbox('ep_probe', url);
    RAISE EXCEPTION 'accepted';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL;
    RETURN CASE WHEN msg = 'accepted' THEN 'accepted' ELSE st || ': ' || det END;
END
$$;

-- one full error: our words, SQLSTATE 42501, a hint naming the settings
SELECT courier.create_outbox('ep_one', 'http://2130706433:5432/');
\echo :LAST_ERROR_SQLSTATE

SELECT url, ep_try_create(url) AS outcome FROM (VALUES
    ('http://127.0.0.1:5432/'), ('http://0x7f000001/'), ('http://2130706433/'), ('http://127.1/'),
    ('http://0177.0.0.1/'), ('http://017700000001/'), ('http://0x7f.1/'), ('http://127.000.000.001/'),
    ('http://0/'), ('http://0.0.0.0/'), ('http://[::1]/'), ('http://[0:0:0:0:0:0:0:1]/'), ('http://[::]/'),
    ('http://[::ffff:7f00:1]/'), ('http://[::ffff:127.0.0.1]/'), ('http://[::127.0.0.1]/'),
    ('http://[::ffff:0:7f00:1]/'), ('http://[64:ff9b::a00:1]/'), ('http://[2002:7f00:1::]/'),
    ('http://127.0.0.1./'), ('http://%31%32%37.0.0.1/'), ('http://127.0.0.1%2e/'),
    ('http://[fe80::1%25eth0]/'), ('http://localhost:8080/'), ('http://LOCALHOST./'),
    ('http://api.localhost/'), ('http://user:pw@127.0.0.1/'),
    ('http://10.1.2.3/'), ('http://172.16.0.1/'), ('http://172.31.255.255/'), ('http://192.168.1.1/'),
    ('http://0300.0250.0.1/'), ('http://3232235777/'),
    ('http://169.254.169.254/latest/meta-data/'), ('http://[fd00:ec2::254]/'), ('http://100.100.100.200/'),
    ('http://100.64.0.1/'), ('http://198.18.0.1/'), ('http://224.0.0.1/'), ('http://255.255.255.255/'),
    ('http://[fc00::1]/'), ('http://[fd12:3456::1]/'), ('http://[fe80::1]/'), ('http://[ff02::1]/'),
    -- public addresses and names (names are not resolved at create time)
    ('http://8.8.8.8/'), ('http://172.32.0.1/'), ('http://[2606:4700::1111]/'), ('http://[::ffff:8.8.8.8]/'),
    ('https://hooks.example.com/x'), ('http://kafka-rest:8082')
) v(url);

-- alter_outbox is checked the same way
SELECT courier.create_outbox('ep_alter', 'https://hooks.example.com/a');
SELECT courier.alter_outbox('ep_alter', endpoint => 'http://127.1:6379/');
SELECT courier.alter_outbox('ep_alter', endpoint => 'http://[::ffff:a9fe:a9fe]/');
SELECT courier._redact_url(endpoint) FROM courier.outboxes WHERE outbox = 'ep_alter'::regclass;
SELECT courier.drop_outbox('ep_alter');

-- an outbox stored under a laxer policy can still be paused, resumed and re-optioned
ALTER TABLE courier.outboxes DISABLE TRIGGER outboxes_check;
SELECT courier.create_outbox('ep_lax', 'https://hooks.example.com/a');
UPDATE courier.outboxes SET endpoint = 'http://127.0.0.1:9/lax' WHERE outbox = 'ep_lax'::regclass;
ALTER TABLE courier.outboxes ENABLE TRIGGER outboxes_check;
SELECT courier.pause('ep_lax');
SELECT courier.alter_outbox('ep_lax', options => '{"batch": true}');
SELECT courier.resume('ep_lax');
SELECT courier.alter_outbox('ep_lax', endpoint => 'http://127.0.0.1:9/other');
SELECT courier._redact_url(endpoint), enabled, options FROM courier.outboxes WHERE outbox = 'ep_lax'::regclass;
SELECT courier.drop_outbox('ep_lax');

-- courier.allowed_hosts: bad entries are refused with a reason
ALTER SYSTEM SET courier.allowed_hosts = '0x7f000001';
ALTER SYSTEM SET courier.allowed_hosts = '127.1';
ALTER SYSTEM SET courier.allowed_hosts = '10.0.0.0/33';
ALTER SYSTEM SET courier.allowed_hosts = 'hooks.example.com, bad host';
ALTER SYSTEM SET courier.allowed_hosts = 'fe80::1%eth0';

-- with a list: only listed names and addresses; a CIDR entry allows the private addresses it covers
ALTER SYSTEM SET courier.allowed_hosts = 'hooks.example.com, *.corp.example, 10.20.0.0/16, fd00:1::/32';
SELECT pg_reload_conf();
\c
SET client_min_messages = warning;
\set SHOW_CONTEXT never
SHOW courier.allowed_hosts;
SELECT url, ep_try_create(url) AS outcome FROM (VALUES
    ('https://hooks.example.com/x'), ('https://HOOKS.Example.COM./x'), ('https://other.example.com/'),
    ('https://a.corp.example/'), ('https://a.b.corp.example/'), ('https://corp.example/'),
    ('https://evilcorp.example/'), ('http://10.20.3.4/'), ('http://0x0a140304/'), ('http://[::ffff:10.20.3.4]/'),
    ('http://10.21.0.1/'), ('http://[fd00:1::5]/'), ('http://[fd00:2::5]/'), ('http://8.8.8.8/'),
    ('http://localhost/')
) v(url);

-- back to the test cluster's policy
DROP FUNCTION ep_try_create(text);
ALTER SYSTEM RESET courier.allowed_hosts;
ALTER SYSTEM RESET courier.allow_private_endpoints;
SELECT pg_reload_conf();
\c
SHOW courier.allow_private_endpoints;
SHOW courier.allowed_hosts;
