/* pg_courier--0.1.0.sql — install script */

\echo Use "CREATE EXTENSION pg_courier" to load this file. \quit

-- The extension schema (courier) is created by CREATE EXTENSION (control file: schema = courier).
-- Every function below runs with a fixed search_path so that objects in the caller's path can never
-- shadow ours; SECURITY DEFINER is used only where a caller must write an extension catalog.

REVOKE ALL ON SCHEMA courier FROM PUBLIC;
GRANT USAGE ON SCHEMA courier TO PUBLIC;

------------------------------------------------------------------------------------------------------
-- Outbox: catalog
------------------------------------------------------------------------------------------------------

CREATE TABLE courier.outboxes (
    outbox        regclass    PRIMARY KEY,
    endpoint      text        NOT NULL,
    format        text        NOT NULL CHECK (format IN ('cloudevents', 'kafka_rest_v2')),
    default_topic text,
    enabled       boolean     NOT NULL DEFAULT true,
    options       jsonb       NOT NULL DEFAULT '{}',
    owner         regrole     NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE courier.outboxes IS 'Registered outbox tables and where their events go (pg_courier)';
SELECT pg_catalog.pg_extension_config_dump('courier.outboxes', '');
REVOKE ALL ON courier.outboxes FROM PUBLIC;

-- The options an outbox accepts, with their types; create_outbox and alter_outbox validate against it.
CREATE FUNCTION courier._validate_options(options jsonb, format text)
RETURNS void LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k text;
    allowed constant jsonb := '{"topic": "string", "batch": "boolean", "batch_size": "number",
                               "max_inflight": "number", "timeout_ms": "number",
                               "source": "string", "envelope": "string"}';
BEGIN
    IF options IS NULL OR jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'outbox options must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'For example: ''{"topic": "orders"}''';
    END IF;
    FOR k IN SELECT jsonb_object_keys(options) LOOP
        IF NOT allowed ? k THEN
            RAISE EXCEPTION 'unknown outbox option "%"', k
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Known options: ' || (SELECT string_agg(x, ', ' ORDER BY x) FROM jsonb_object_keys(allowed) x);
        END IF;
        IF jsonb_typeof(options -> k) <> allowed ->> k THEN
            RAISE EXCEPTION 'outbox option "%" must be a %', k, allowed ->> k
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF allowed ->> k = 'number' AND ((options ->> k)::numeric <= 0 OR (options ->> k)::numeric <> trunc((options ->> k)::numeric)) THEN
            RAISE EXCEPTION 'outbox option "%" must be a positive integer', k
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
    IF options ? 'envelope' AND options ->> 'envelope' NOT IN ('cloudevents', 'none') THEN
        RAISE EXCEPTION 'outbox option "envelope" must be ''cloudevents'' or ''none'''
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF format = 'kafka_rest_v2' AND options ? 'batch' THEN
        RAISE EXCEPTION 'outbox option "batch" applies to the cloudevents format only'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'kafka_rest_v2 always sends records in batches.';
    END IF;
END
$$;

-- Endpoint and format checks (C: parsed with libcurl's URL parser, the same one that will send).
CREATE FUNCTION courier._validate_endpoint(endpoint text, format text)
RETURNS void LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'courier_validate_endpoint';

-- BEFORE INSERT row trigger on every outbox: assigns the id and registers the inserting transaction
-- so the worker can keep per-key order across transactions that commit out of id order.
CREATE FUNCTION courier._outbox_before_insert()
RETURNS trigger LANGUAGE C AS 'MODULE_PATHNAME', 'courier_outbox_before_insert';

-- Registration is SECURITY DEFINER because courier.outboxes is not writable by ordinary roles; it
-- only ever registers a table the caller owns.
CREATE FUNCTION courier._register_outbox(outbox regclass, endpoint text, format text, options jsonb)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tblowner oid;
BEGIN
    SELECT relowner INTO tblowner FROM pg_class WHERE oid = outbox;
    IF NOT pg_has_role(session_user, tblowner, 'USAGE') AND NOT pg_has_role(current_user, tblowner, 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table %', outbox USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO courier.outboxes (outbox, endpoint, format, default_topic, options, owner)
    VALUES (outbox, endpoint, format, options ->> 'topic', options, tblowner);
END
$$;
REVOKE ALL ON FUNCTION courier._register_outbox(regclass, text, text, jsonb) FROM PUBLIC;

CREATE FUNCTION courier.create_outbox(outbox text, endpoint text, format text DEFAULT 'cloudevents',
                                      options jsonb DEFAULT '{}')
RETURNS regclass LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ident  text[];
    nsp    text;
    rel    text;
    qname  text;
    relid  regclass;
BEGIN
    IF outbox IS NULL OR endpoint IS NULL OR format IS NULL THEN
        RAISE EXCEPTION 'outbox name, endpoint and format must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF format NOT IN ('cloudevents', 'kafka_rest_v2') THEN
        RAISE EXCEPTION 'unknown outbox format "%"', format
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use ''cloudevents'' or ''kafka_rest_v2''.';
    END IF;
    PERFORM courier._validate_endpoint(endpoint, format);
    PERFORM courier._validate_options(COALESCE(options, '{}'), format);

    -- parse_ident() follows SQL's identifier rules: "My Table" keeps its case, a;b is rejected.
    BEGIN
        ident := parse_ident(outbox);
    EXCEPTION WHEN invalid_parameter_value THEN
        RAISE EXCEPTION 'invalid outbox name "%"', outbox
            USING ERRCODE = 'invalid_name', HINT = 'Use a table name or schema.table, quoting identifiers as in SQL.';
    END;
    IF array_length(ident, 1) > 2 THEN
        RAISE EXCEPTION 'invalid outbox name "%": too many dotted names', outbox USING ERRCODE = 'invalid_name';
    END IF;
    nsp := CASE WHEN array_length(ident, 1) = 2 THEN ident[1] ELSE 'public' END;
    rel := ident[array_length(ident, 1)];
    qname := format('%I.%I', nsp, rel);
    IF to_regclass(qname) IS NOT NULL THEN
        RAISE EXCEPTION 'relation % already exists', qname
            USING ERRCODE = 'duplicate_table', HINT = 'Choose another name, or drop the existing table first.';
    END IF;

    EXECUTE format($ddl$
        CREATE TABLE %1$s (
            id              bigint      NOT NULL PRIMARY KEY,
            event_id        uuid        NOT NULL DEFAULT gen_random_uuid() UNIQUE,
            topic           text,
            key             text,
            payload         jsonb       NOT NULL,
            headers         jsonb       CHECK (headers IS NULL OR jsonb_typeof(headers) = 'object'),
            created_at      timestamptz NOT NULL DEFAULT now(),
            attempts        integer     NOT NULL DEFAULT 0,
            next_attempt_at timestamptz,
            last_status     integer,
            last_error      text
        )$ddl$, qname);
    relid := qname::regclass;
    EXECUTE format('CREATE SEQUENCE %s OWNED BY %s.id',
                   format('%I.%I', nsp, left(rel, 56) || '_id_seq'), qname);
    -- Rows that failed and the keys they block: small, so the worker's per-key check stays cheap.
    EXECUTE format('CREATE INDEX ON %s (key, id) WHERE attempts > 0', qname);
    EXECUTE format('CREATE TRIGGER courier_outbox_insert BEFORE INSERT ON %s
                    FOR EACH ROW EXECUTE FUNCTION courier._outbox_before_insert()', qname);
    EXECUTE format('COMMENT ON TABLE %s IS %L', qname, 'pg_courier outbox: rows are published to ' || endpoint);

    PERFORM courier._register_outbox(relid, endpoint, format, COALESCE(options, '{}'));
    RETURN relid;
END
$$;

CREATE FUNCTION courier._unregister_outbox(outbox regclass)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tblowner oid;
BEGIN
    SELECT relowner INTO tblowner FROM pg_class WHERE oid = outbox;
    IF NOT pg_has_role(session_user, tblowner, 'USAGE') AND NOT pg_has_role(current_user, tblowner, 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table %', outbox USING ERRCODE = 'insufficient_privilege';
    END IF;
    DELETE FROM courier.outboxes o WHERE o.outbox = _unregister_outbox.outbox;
    RETURN FOUND;
END
$$;
REVOKE ALL ON FUNCTION courier._unregister_outbox(regclass) FROM PUBLIC;

CREATE FUNCTION courier.drop_outbox(outbox regclass, if_exists boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT courier._unregister_outbox(outbox) THEN
        RAISE EXCEPTION 'table % is not an outbox', outbox
            USING ERRCODE = 'undefined_object', HINT = 'See courier.outboxes for the registered outboxes.';
    END IF;
    EXECUTE format('DROP TABLE %s', outbox);
END
$$;

CREATE FUNCTION courier.alter_outbox(outbox regclass, endpoint text DEFAULT NULL, options jsonb DEFAULT NULL,
                                     enabled boolean DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r courier.outboxes;
BEGIN
    SELECT * INTO r FROM courier.outboxes o WHERE o.outbox = alter_outbox.outbox FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not an outbox', outbox USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT pg_has_role(session_user, r.owner, 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of outbox %', outbox USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF endpoint IS NOT NULL THEN
        PERFORM courier._validate_endpoint(endpoint, r.format);
        r.endpoint := endpoint;
    END IF;
    IF options IS NOT NULL THEN
        PERFORM courier._validate_options(options, r.format);
        r.options := options;
        r.default_topic := options ->> 'topic';
    END IF;
    UPDATE courier.outboxes o
       SET endpoint = r.endpoint, options = r.options, default_topic = r.default_topic,
           enabled = COALESCE(alter_outbox.enabled, o.enabled)
     WHERE o.outbox = r.outbox;
END
$$;

------------------------------------------------------------------------------------------------------
-- Outbox: producers
------------------------------------------------------------------------------------------------------

CREATE FUNCTION courier.send(outbox regclass, payload jsonb, key text DEFAULT NULL, topic text DEFAULT NULL,
                             headers jsonb DEFAULT NULL)
RETURNS uuid LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'courier_send';

------------------------------------------------------------------------------------------------------
-- Outbox: observability
------------------------------------------------------------------------------------------------------

-- Per-outbox counters kept by the worker in shared memory (reset by a server restart).
CREATE FUNCTION courier._worker_counters(
    OUT outbox oid, OUT delivered bigint, OUT failed_attempts bigint, OUT requests bigint,
    OUT last_error text, OUT last_success_at timestamptz, OUT last_failure_at timestamptz)
RETURNS SETOF record LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'courier_worker_counters';

CREATE FUNCTION courier.worker_status(
    OUT database name, OUT pid integer, OUT state text, OUT started_at timestamptz, OUT rounds bigint)
RETURNS SETOF record LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'courier_worker_status';

-- Endpoints may carry user:password@; everything shown to users goes through this.
CREATE FUNCTION courier._redact_url(url text)
RETURNS text LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'courier_redact_url';

-- Pending count and oldest age are read from the table itself, under the caller's privileges:
-- an outbox the caller cannot SELECT from shows NULLs.
CREATE FUNCTION courier._outbox_pending(outbox regclass, OUT pending bigint, OUT oldest_created_at timestamptz)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF has_table_privilege(outbox, 'SELECT') THEN
        EXECUTE format('SELECT count(*), min(created_at) FROM %s', outbox) INTO pending, oldest_created_at;
    END IF;
END
$$;

CREATE VIEW courier.outbox_stats AS
SELECT o.outbox,
       o.endpoint_redacted AS endpoint,
       o.format,
       o.enabled,
       p.pending,
       now() - p.oldest_created_at     AS oldest_pending_age,
       COALESCE(c.delivered, 0)        AS delivered,
       COALESCE(c.failed_attempts, 0)  AS failed_attempts,
       COALESCE(c.requests, 0)         AS requests,
       c.last_error,
       c.last_success_at,
       c.last_failure_at
  FROM (SELECT x.*, courier._redact_url(x.endpoint) AS endpoint_redacted FROM courier.outboxes x
         WHERE pg_has_role(x.owner, 'USAGE')) o
  LEFT JOIN courier._worker_counters() c ON c.outbox = o.outbox::oid
  CROSS JOIN LATERAL courier._outbox_pending(o.outbox) p;
GRANT SELECT ON courier.outbox_stats TO PUBLIC;

------------------------------------------------------------------------------------------------------
-- (issue 3: delivery reliability — retries, dead letters, breaker) goes here
------------------------------------------------------------------------------------------------------

------------------------------------------------------------------------------------------------------
-- Idempotency keys (issue 4): API-boundary keys with leases, and consumer-side deduplication
------------------------------------------------------------------------------------------------------

-- One row per (scope, key): 'in_progress' while a request holds its lease, 'completed' once its answer
-- is stored for replay.  Only the functions below write it (SECURITY DEFINER) and they validate every
-- value, so the table has no CHECK constraints: each would cost every begin() an expression set-up.
-- It is dumped with the database so that retries after a dump and restore are still recognised.
CREATE TABLE courier.idempotency_keys (
    scope            text        NOT NULL,
    key              text        NOT NULL,
    fingerprint      text,
    state            text        NOT NULL,      -- 'in_progress' or 'completed'
    status_code      integer,                   -- 200..599 (checked by idempotency_complete)
    response         jsonb,
    lease_token      uuid,
    lease_expires_at timestamptz,
    attempt          integer     NOT NULL DEFAULT 1,
    created_at       timestamptz NOT NULL,
    completed_at     timestamptz,
    expires_at       timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
) WITH (fillfactor = 90);
CREATE INDEX idempotency_keys_expires_at ON courier.idempotency_keys (expires_at);
COMMENT ON TABLE courier.idempotency_keys IS 'Idempotency keys and their stored outcomes (pg_courier)';
SELECT pg_catalog.pg_extension_config_dump('courier.idempotency_keys', '');
REVOKE ALL ON courier.idempotency_keys FROM PUBLIC;

-- The key functions are SECURITY DEFINER (the table is not writable by their callers) without a SET
-- search_path, which would cost every call a quarter of a replay: their C code qualifies every name and
-- every operator it uses (see src/idempotency.c).
CREATE FUNCTION courier.idempotency_begin(
    key text, fingerprint text DEFAULT NULL, scope text DEFAULT '',
    ttl interval DEFAULT '24 hours', lease interval DEFAULT '30 seconds',
    OUT outcome text, OUT status_code integer, OUT response jsonb, OUT lease_token uuid,
    OUT lease_expires_at timestamptz, OUT expires_at timestamptz, OUT attempt integer)
RETURNS record LANGUAGE C VOLATILE SECURITY DEFINER
AS 'MODULE_PATHNAME', 'courier_idempotency_begin';
COMMENT ON FUNCTION courier.idempotency_begin(text, text, text, interval, interval) IS
    'Claim an idempotency key: started, replay, in_progress (HTTP 409) or mismatch (HTTP 422)';

CREATE FUNCTION courier.idempotency_complete(
    key text, status_code integer, response jsonb DEFAULT NULL, scope text DEFAULT '',
    lease_token uuid DEFAULT NULL)
RETURNS boolean LANGUAGE C VOLATILE SECURITY DEFINER
AS 'MODULE_PATHNAME', 'courier_idempotency_complete';
COMMENT ON FUNCTION courier.idempotency_complete(text, integer, jsonb, text, uuid) IS
    'Store the answer of a started key for replay (true), or release the key on a transient status (false)';

CREATE FUNCTION courier.idempotency_abandon(key text, scope text DEFAULT '', lease_token uuid DEFAULT NULL)
RETURNS boolean LANGUAGE C VOLATILE SECURITY DEFINER
AS 'MODULE_PATHNAME', 'courier_idempotency_abandon';
COMMENT ON FUNCTION courier.idempotency_abandon(text, text, uuid) IS
    'Release an in-progress key after a transient failure so that a retry starts again';

CREATE FUNCTION courier.idempotency_extend(key text, lease interval DEFAULT '30 seconds', scope text DEFAULT '',
                                           lease_token uuid DEFAULT NULL)
RETURNS timestamptz LANGUAGE C VOLATILE SECURITY DEFINER
AS 'MODULE_PATHNAME', 'courier_idempotency_extend';
COMMENT ON FUNCTION courier.idempotency_extend(text, interval, text, uuid) IS
    'Extend the lease of an in-progress key (heartbeat of long work)';

CREATE FUNCTION courier.request_fingerprint(method text, path text, body jsonb DEFAULT NULL)
RETURNS text LANGUAGE C IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'courier_request_fingerprint';
COMMENT ON FUNCTION courier.request_fingerprint(text, text, jsonb) IS
    'SHA-256 (hex) of a request, independent of JSON key order and formatting';

-- Consumer-side deduplication: one row per event a consumer has applied, inserted in the consumer's own
-- transaction so that it commits (or rolls back) with the business effect.
CREATE TABLE courier.consumed_events (
    consumer    text        NOT NULL,
    event_id    uuid        NOT NULL,
    consumed_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX consumed_events_consumed_at ON courier.consumed_events (consumed_at);
COMMENT ON TABLE courier.consumed_events IS 'Events applied by consumers, for courier.consume_once (pg_courier)';
SELECT pg_catalog.pg_extension_config_dump('courier.consumed_events', '');
REVOKE ALL ON courier.consumed_events FROM PUBLIC;

-- A concurrent duplicate waits here for the first transaction: if that one rolls back, the event was
-- not applied and the duplicate must apply it, so answering before the outcome is known would be wrong.
CREATE FUNCTION courier.consume_once(consumer text, event_id uuid)
RETURNS boolean LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF consumer IS NULL OR consumer = '' THEN
        RAISE EXCEPTION 'consumer name must not be NULL or empty'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'Name the consumer, e.g. ''billing''.';
    END IF;
    IF event_id IS NULL THEN
        RAISE EXCEPTION 'event_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'Pass the event''s id (the CloudEvents id).';
    END IF;
    INSERT INTO courier.consumed_events AS c (consumer, event_id)
    VALUES (consume_once.consumer, consume_once.event_id)
    ON CONFLICT DO NOTHING;
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION courier.consume_once(text, uuid) IS
    'true the first time a consumer sees an event (in the caller''s transaction), false for a duplicate';

CREATE FUNCTION courier.idempotency_sweep(OUT keys_removed bigint, OUT events_removed bigint)
RETURNS record LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'courier_idempotency_sweep';
COMMENT ON FUNCTION courier.idempotency_sweep() IS
    'Remove expired idempotency keys and dedupe records older than courier.dedupe_retention, now';

------------------------------------------------------------------------------------------------------
-- (saga-step state) goes here
------------------------------------------------------------------------------------------------------

------------------------------------------------------------------------------------------------------
-- (shard routing) goes here
------------------------------------------------------------------------------------------------------

------------------------------------------------------------------------------------------------------
-- (shared-memory cache) goes here
------------------------------------------------------------------------------------------------------
