/* pg_courier--0.1.0.sql — install script */

\echo Use "CREATE EXTENSION pg_courier" to load this file. \quit

-- The schema must be ours alone: a `courier` schema that another role owns, may create objects in,
-- or has planted objects in would let that role replace what the worker (a superuser) runs.
-- (Everything here is schema-qualified: the search path points at that very schema.)
DO $courier_schema_check$
DECLARE
    nsp     oid;
    problem text;
BEGIN
    SELECT n.oid INTO nsp FROM pg_catalog.pg_namespace n WHERE n.nspname OPERATOR(pg_catalog.=) 'courier';
    SELECT pg_catalog.format('it is owned by role %I, not by a superuser', r.rolname) INTO problem
      FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) n.nspowner
     WHERE n.oid OPERATOR(pg_catalog.=) nsp AND NOT r.rolsuper;
    IF problem IS NULL THEN
        SELECT pg_catalog.format('role %s may create objects in it',
                                 COALESCE(pg_catalog.quote_ident(r.rolname), 'PUBLIC')) INTO problem
          FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
          LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) a.grantee
         WHERE n.oid OPERATOR(pg_catalog.=) nsp AND a.privilege_type OPERATOR(pg_catalog.=) 'CREATE'
           AND r.rolsuper IS NOT TRUE
         LIMIT 1;
    END IF;
    IF problem IS NULL THEN
        SELECT pg_catalog.format('it holds objects owned by role %s, not by a superuser',
                                 COALESCE(pg_catalog.quote_ident(r.rolname), o.owner::pg_catalog.text)) INTO problem
          FROM (SELECT relowner FROM pg_catalog.pg_class WHERE relnamespace OPERATOR(pg_catalog.=) nsp
                UNION ALL SELECT proowner FROM pg_catalog.pg_proc WHERE pronamespace OPERATOR(pg_catalog.=) nsp
                UNION ALL SELECT typowner FROM pg_catalog.pg_type WHERE typnamespace OPERATOR(pg_catalog.=) nsp
                UNION ALL SELECT oprowner FROM pg_catalog.pg_operator WHERE oprnamespace OPERATOR(pg_catalog.=) nsp
                UNION ALL SELECT collowner FROM pg_catalog.pg_collation WHERE collnamespace OPERATOR(pg_catalog.=) nsp
                UNION ALL SELECT conowner FROM pg_catalog.pg_conversion WHERE connamespace OPERATOR(pg_catalog.=) nsp
                UNION ALL SELECT opfowner FROM pg_catalog.pg_opfamily WHERE opfnamespace OPERATOR(pg_catalog.=) nsp
                UNION ALL SELECT opcowner FROM pg_catalog.pg_opclass WHERE opcnamespace OPERATOR(pg_catalog.=) nsp
                UNION ALL SELECT cfgowner FROM pg_catalog.pg_ts_config WHERE cfgnamespace OPERATOR(pg_catalog.=) nsp
                UNION ALL SELECT dictowner FROM pg_catalog.pg_ts_dict WHERE dictnamespace OPERATOR(pg_catalog.=) nsp
                UNION ALL SELECT stxowner FROM pg_catalog.pg_statistic_ext WHERE stxnamespace OPERATOR(pg_catalog.=) nsp
                UNION ALL SELECT extowner FROM pg_catalog.pg_extension WHERE extnamespace OPERATOR(pg_catalog.=) nsp
               ) o(owner)
          LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) o.owner
         WHERE r.rolsuper IS NOT TRUE
         LIMIT 1;
    END IF;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'schema "courier" cannot hold pg_courier: %', problem
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'pg_courier''s delivery worker runs as a superuser and trusts the objects in its schema.',
                  HINT = 'Drop the schema (DROP SCHEMA courier), or make a superuser its owner and remove what other '
                         'roles created or may create in it; then try again.';
    END IF;
END
$courier_schema_check$;

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
-- The owner of an outbox is the owner of its table *now* (ALTER TABLE ... OWNER TO moves it).
CREATE FUNCTION courier._table_owner(rel regclass) RETURNS oid
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
RETURN (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = rel);

-- Each role sees and changes only the outboxes of roles it belongs to; endpoints and options may
-- hold credentials.  The worker (a superuser) sees all.
ALTER TABLE courier.outboxes ENABLE ROW LEVEL SECURITY;
CREATE POLICY outboxes_owner ON courier.outboxes
    USING (pg_catalog.pg_has_role(courier._table_owner(outbox), 'USAGE'))
    WITH CHECK (pg_catalog.pg_has_role(courier._table_owner(outbox), 'USAGE')
                AND owner = courier._table_owner(outbox));
REVOKE ALL ON courier.outboxes FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON courier.outboxes TO PUBLIC;

-- The options an outbox accepts, with their types; create_outbox and alter_outbox validate against it.
CREATE FUNCTION courier._validate_options(options jsonb, format text)
RETURNS void LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k text;
    allowed constant jsonb := '{"topic": "string", "batch": "boolean", "batch_size": "number",
                               "max_inflight": "number", "timeout_ms": "number",
                               "source": "string", "envelope": "string",
                               "retry_base_ms": "number", "retry_max_ms": "number",
                               "max_attempts": "number", "on_dead_letter": "string",
                               "tls_verify": "boolean", "headers": "object", "retention": "string"}';
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
        IF allowed ->> k = 'number' AND ((options ->> k)::numeric <> trunc((options ->> k)::numeric)
                                          OR (options ->> k)::numeric < CASE k WHEN 'max_attempts' THEN 0 ELSE 1 END
                                          OR (options ->> k)::numeric > 2147483647) THEN
            RAISE EXCEPTION 'outbox option "%" must be a % integer', k,
                            CASE k WHEN 'max_attempts' THEN 'non-negative' ELSE 'positive' END
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
    IF options ? 'retention' THEN
        BEGIN
            IF (options ->> 'retention')::interval <= interval '0' THEN
                RAISE invalid_parameter_value;
            END IF;
        EXCEPTION WHEN invalid_parameter_value OR invalid_datetime_format OR datetime_field_overflow
                       OR interval_field_overflow OR syntax_error THEN
            RAISE EXCEPTION 'outbox option "retention" must be a positive interval, not "%"', options ->> 'retention'
                USING ERRCODE = 'invalid_parameter_value', HINT = 'For example {"retention": "7 days"}.';
        END;
    END IF;
    IF options ? 'on_dead_letter' AND options ->> 'on_dead_letter' NOT IN ('skip', 'block') THEN
        RAISE EXCEPTION 'outbox option "on_dead_letter" must be ''skip'' or ''block'''
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'skip: later events of the key flow; block: the key waits until an operator acts.';
    END IF;
    IF options ? 'headers' AND EXISTS (
           SELECT 1 FROM jsonb_each(options -> 'headers') h
            WHERE jsonb_typeof(h.value) <> 'string' OR h.key !~ '^[!#$%&''*+.^_`|~0-9A-Za-z-]+$'
               OR h.value #>> '{}' ~ '[\r\n]'
               OR lower(h.key) IN ('content-type', 'content-length', 'host', 'idempotency-key',
                                   'transfer-encoding', 'connection', 'expect')) THEN
        RAISE EXCEPTION 'outbox option "headers" must map valid HTTP header names to string values'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example {"headers": {"Authorization": "Bearer ..."}}; protocol headers cannot be set.';
    END IF;
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

-- At commit, tell the worker to re-read the catalog and its outboxes (after a change of settings).
CREATE FUNCTION courier._wake_at_commit()
RETURNS void LANGUAGE C AS 'MODULE_PATHNAME', 'courier_wake_at_commit';

-- BEFORE INSERT row trigger on every outbox: assigns the id and registers the inserting transaction
-- so the worker can keep per-key order across transactions that commit out of id order.
CREATE FUNCTION courier._outbox_before_insert()
RETURNS trigger LANGUAGE C AS 'MODULE_PATHNAME', 'courier_outbox_before_insert';

-- Direct writes to courier.outboxes get the same checks as create_outbox/alter_outbox: a bad
-- value must not reach the worker (which serves every outbox of the database).
CREATE FUNCTION courier._outboxes_check() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM courier._validate_endpoint(NEW.endpoint, NEW.format);
    PERFORM courier._validate_options(NEW.options, NEW.format);
    IF NEW.default_topic IS DISTINCT FROM NEW.options ->> 'topic' THEN
        NEW.default_topic := NEW.options ->> 'topic';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER outboxes_check BEFORE INSERT OR UPDATE ON courier.outboxes
    FOR EACH ROW EXECUTE FUNCTION courier._outboxes_check();

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
    IF to_regnamespace(quote_ident(nsp)) IS NULL THEN
        RAISE EXCEPTION 'schema "%" does not exist', nsp
            USING ERRCODE = 'invalid_schema_name', HINT = 'Create the schema first, or leave it out to use public.';
    END IF;
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
            first_failed_at timestamptz,
            last_status     integer,
            last_error      text
        ) WITH (
            -- delivered rows are deleted all the time: vacuum early and without throttling
            autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 20000,
            autovacuum_vacuum_insert_scale_factor = 0.0, autovacuum_vacuum_insert_threshold = 50000,
            autovacuum_vacuum_cost_delay = 0, fillfactor = 90
        )$ddl$, qname);
    relid := qname::regclass;
    EXECUTE format('CREATE SEQUENCE %s OWNED BY %s.id',
                   format('%I.%I', nsp, left(rel, 56) || '_id_seq'), qname);
    -- Rows that failed and the keys they block: small, so the worker's per-key check stays cheap.
    EXECUTE format('CREATE INDEX ON %s (key, id) WHERE attempts > 0', qname);
    EXECUTE format('CREATE TRIGGER courier_outbox_insert BEFORE INSERT ON %s
                    FOR EACH ROW EXECUTE FUNCTION courier._outbox_before_insert()', qname);
    -- (not the endpoint: comments are readable by everyone, endpoints may hold credentials)
    EXECUTE format('COMMENT ON TABLE %s IS %L', qname, 'pg_courier outbox (see courier.outboxes)');

    -- the caller owns the new table; the row-level security policy checks exactly that
    INSERT INTO courier.outboxes (outbox, endpoint, format, default_topic, options, owner)
    SELECT relid, endpoint, format, options ->> 'topic', COALESCE(options, '{}'), c.relowner
      FROM pg_class c WHERE c.oid = relid;
    PERFORM courier._warn_options(relid, COALESCE(options, '{}'));
    PERFORM courier._wake_at_commit();      -- the worker picks the new outbox up at once
    IF NOT EXISTS (SELECT 1 FROM courier.worker_status() w WHERE w.database = current_database()) THEN
        RAISE NOTICE 'no pg_courier delivery worker is running for database "%": events will wait in %',
                     current_database(), relid
            USING HINT = 'Add pg_courier to shared_preload_libraries and this database to courier.databases.';
    END IF;
    RETURN relid;
END
$$;

CREATE FUNCTION courier.drop_outbox(outbox regclass)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM courier.outboxes o WHERE o.outbox = drop_outbox.outbox;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not an outbox', outbox
            USING ERRCODE = 'undefined_object', HINT = 'See courier.outboxes for the registered outboxes.';
    END IF;
    -- DROP TABLE checks ownership itself
    EXECUTE format('DROP TABLE %s', outbox);
END
$$;

CREATE FUNCTION courier.alter_outbox(outbox regclass, endpoint text DEFAULT NULL, options jsonb DEFAULT NULL,
                                     enabled boolean DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r courier.outboxes;
BEGIN
    SELECT * INTO r FROM courier.outboxes o WHERE o.outbox = alter_outbox.outbox FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not an outbox', outbox USING ERRCODE = 'undefined_object',
            HINT = 'Only the outboxes of roles you belong to are visible.';
    END IF;
    IF endpoint IS NOT NULL THEN
        PERFORM courier._validate_endpoint(endpoint, r.format);
        r.endpoint := endpoint;
    END IF;
    IF options IS NOT NULL THEN
        PERFORM courier._validate_options(options, r.format);
        r.options := options;
        r.default_topic := options ->> 'topic';
        PERFORM courier._warn_options(outbox, options);
    END IF;
    UPDATE courier.outboxes o
       SET endpoint = r.endpoint, options = r.options, default_topic = r.default_topic,
           enabled = COALESCE(alter_outbox.enabled, o.enabled)
     WHERE o.outbox = r.outbox;
    PERFORM courier._wake_at_commit();
END
$$;

------------------------------------------------------------------------------------------------------
-- Outbox: producers
------------------------------------------------------------------------------------------------------

CREATE FUNCTION courier.send(outbox regclass, payload jsonb, key text DEFAULT NULL, topic text DEFAULT NULL,
                             headers jsonb DEFAULT NULL)
RETURNS uuid LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'courier_send';

------------------------------------------------------------------------------------------------------
-- Outbox: delivery reliability — dead letters, pause/resume, circuit breakers, metrics
------------------------------------------------------------------------------------------------------

-- Warnings for options that weaken security, said where the owner sets them.
CREATE FUNCTION courier._warn_options(outbox regclass, options jsonb)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (options ->> 'tls_verify')::boolean IS FALSE THEN
        RAISE WARNING 'TLS certificate verification is disabled for outbox %', outbox
            USING HINT = 'Anyone on the network path can read and change its events. Prefer courier.ca_file.';
    END IF;
END
$$;

-- One place for every event that could not be delivered: permanent rejections (4xx other than
-- 408/425/429, Kafka error_code 1) and events that ran out of attempts (courier.max_attempts).
CREATE TABLE courier.dead_letters (
    id              bigserial   PRIMARY KEY,
    outbox          regclass    NOT NULL,
    owner           regrole     NOT NULL,
    outbox_id       bigint,                 -- the event's id in its outbox (its place in the order)
    event_id        uuid        NOT NULL,
    topic           text,
    key             text,
    payload         jsonb       NOT NULL,
    headers         jsonb,
    created_at      timestamptz NOT NULL,
    attempts        integer     NOT NULL,
    first_failed_at timestamptz NOT NULL,
    last_failed_at  timestamptz NOT NULL,
    last_status     integer,
    last_error      text,
    blocking        boolean     NOT NULL DEFAULT false  -- on_dead_letter = 'block': holds the key
);
CREATE INDEX ON courier.dead_letters (outbox, key) WHERE blocking;
CREATE INDEX ON courier.dead_letters (outbox, last_failed_at);
COMMENT ON TABLE courier.dead_letters IS 'Events pg_courier could not deliver; see courier.replay_dead_letters()';
SELECT pg_catalog.pg_extension_config_dump('courier.dead_letters', '');
SELECT pg_catalog.pg_extension_config_dump('courier.dead_letters_id_seq', '');
ALTER TABLE courier.dead_letters ENABLE ROW LEVEL SECURITY;
CREATE POLICY dead_letters_owner ON courier.dead_letters
    USING (pg_catalog.pg_has_role(courier._table_owner(outbox), 'USAGE'));
REVOKE ALL ON courier.dead_letters FROM PUBLIC;
-- (INSERT: the worker moves rows here acting as the outbox's owner)
GRANT SELECT, INSERT, DELETE ON courier.dead_letters TO PUBLIC;
GRANT USAGE ON SEQUENCE courier.dead_letters_id_seq TO PUBLIC;

-- _dead_letter_filter: the rows of one outbox's dead letters that a replay or purge acts on.
CREATE FUNCTION courier.replay_dead_letters(outbox regclass, event_ids uuid[] DEFAULT NULL,
                                            key text DEFAULT NULL, failed_since timestamptz DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    IF outbox IS NULL THEN
        RAISE EXCEPTION 'outbox must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM courier.outboxes o WHERE o.outbox = replay_dead_letters.outbox) THEN
        RAISE EXCEPTION 'table % is not an outbox', outbox USING ERRCODE = 'undefined_object',
            HINT = 'Only the outboxes of roles you belong to are visible.';
    END IF;
    -- Same event id and, when known, the same outbox id: the event takes its old place, ahead of
    -- later events of its key that waited (on_dead_letter = 'block').
    EXECUTE format($q$
        WITH moved AS (
            DELETE FROM courier.dead_letters d
             WHERE d.outbox = $1 AND ($2 IS NULL OR d.event_id = ANY ($2))
               AND ($3 IS NULL OR d.key = $3) AND ($4 IS NULL OR d.last_failed_at >= $4)
            RETURNING d.id, d.outbox_id, d.event_id, d.topic, d.key, d.payload, d.headers, d.created_at)
        INSERT INTO %s (id, event_id, topic, key, payload, headers, created_at)
        SELECT outbox_id, event_id, topic, key, payload, headers, created_at FROM moved ORDER BY id$q$, outbox)
    USING outbox, event_ids, key, failed_since;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

CREATE FUNCTION courier.purge_dead_letters(outbox regclass DEFAULT NULL, older_than interval DEFAULT NULL,
                                           event_ids uuid[] DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    DELETE FROM courier.dead_letters d
     WHERE (purge_dead_letters.outbox IS NULL OR d.outbox = purge_dead_letters.outbox)
       AND (older_than IS NULL OR d.last_failed_at < now() - older_than)
       AND (event_ids IS NULL OR d.event_id = ANY (event_ids));
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM courier._wake_at_commit();   -- keys blocked by these dead letters may go on
    END IF;
    RETURN n;
END
$$;

-- With the outbox option "retention", delivered events are kept here that long (audit, replay)
-- instead of being deleted; the worker removes expired ones in small batches.
CREATE TABLE courier.delivered_events (
    id           bigserial   PRIMARY KEY,
    outbox       regclass    NOT NULL,
    outbox_id    bigint      NOT NULL,
    event_id     uuid        NOT NULL,
    topic        text,
    key          text,
    payload      jsonb       NOT NULL,
    headers      jsonb,
    created_at   timestamptz NOT NULL,
    attempts     integer     NOT NULL,
    delivered_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON courier.delivered_events (outbox, delivered_at);
COMMENT ON TABLE courier.delivered_events IS 'Delivered events kept for the outbox option "retention" (pg_courier)';
SELECT pg_catalog.pg_extension_config_dump('courier.delivered_events', '');
SELECT pg_catalog.pg_extension_config_dump('courier.delivered_events_id_seq', '');
ALTER TABLE courier.delivered_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY delivered_events_owner ON courier.delivered_events
    USING (pg_catalog.pg_has_role(courier._table_owner(outbox), 'USAGE'));
REVOKE ALL ON courier.delivered_events FROM PUBLIC;
-- (INSERT: the worker moves acknowledged rows here acting as the outbox's owner)
GRANT SELECT, INSERT, DELETE ON courier.delivered_events TO PUBLIC;
GRANT USAGE ON SEQUENCE courier.delivered_events_id_seq TO PUBLIC;

CREATE FUNCTION courier.replay_delivered(outbox regclass, event_ids uuid[] DEFAULT NULL,
                                         delivered_since timestamptz DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    IF outbox IS NULL THEN
        RAISE EXCEPTION 'outbox must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM courier.outboxes o WHERE o.outbox = replay_delivered.outbox) THEN
        RAISE EXCEPTION 'table % is not an outbox', outbox USING ERRCODE = 'undefined_object',
            HINT = 'Only the outboxes of roles you belong to are visible.';
    END IF;
    -- the same event again (same event id), as a new row at the end of its key's queue; the
    -- retained copy stays (it records the first delivery)
    EXECUTE format($q$
        INSERT INTO %s (event_id, topic, key, payload, headers, created_at)
        SELECT d.event_id, d.topic, d.key, d.payload, d.headers, d.created_at
          FROM courier.delivered_events d
         WHERE d.outbox = $1 AND ($2 IS NULL OR d.event_id = ANY ($2))
           AND ($3 IS NULL OR d.delivered_at >= $3)
         ORDER BY d.id$q$, outbox)
    USING outbox, event_ids, delivered_since;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

CREATE FUNCTION courier.pause(outbox regclass) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT courier.alter_outbox(outbox, enabled => false);
END;

CREATE FUNCTION courier.resume(outbox regclass) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT courier.alter_outbox(outbox, enabled => true);
END;

-- Circuit breakers, one per endpoint origin (scheme://host:port), in shared memory.
CREATE FUNCTION courier.breakers(
    OUT endpoint text, OUT state text, OUT consecutive_failures integer, OUT opened_at timestamptz,
    OUT opens bigint, OUT successes bigint, OUT failures bigint, OUT last_change_at timestamptz)
RETURNS SETOF record LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'courier_breakers';
-- every endpoint host of the cluster: for monitoring roles only
REVOKE ALL ON FUNCTION courier.breakers() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION courier.breakers() TO pg_monitor;

-- The breaker state of one endpoint (what courier.outbox_stats shows for the caller's outboxes).
CREATE FUNCTION courier._breaker_state(endpoint text) RETURNS text
LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'courier_breaker_state';

CREATE FUNCTION courier._origin(url text)
RETURNS text LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'courier_origin';

-- Prometheus text exposition format, for a scrape endpoint (e.g. through postgres_exporter's
-- custom queries or a sidecar running SELECT courier.metrics()).
CREATE FUNCTION courier.metrics() RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    out text := '';
    r record;
    lbl text;
BEGIN
    out := out
        || E'# HELP courier_outbox_pending Events waiting in the outbox.\n# TYPE courier_outbox_pending gauge\n'
        || E'# HELP courier_outbox_oldest_pending_seconds Age of the oldest waiting event.\n# TYPE courier_outbox_oldest_pending_seconds gauge\n'
        || E'# HELP courier_outbox_delivered_total Events acknowledged by the endpoint since the server started.\n# TYPE courier_outbox_delivered_total counter\n'
        || E'# HELP courier_outbox_failed_attempts_total Failed delivery attempts since the server started.\n# TYPE courier_outbox_failed_attempts_total counter\n'
        || E'# HELP courier_outbox_dead_lettered_total Events moved to courier.dead_letters since the server started.\n# TYPE courier_outbox_dead_lettered_total counter\n'
        || E'# HELP courier_outbox_requests_total HTTP requests since the server started.\n# TYPE courier_outbox_requests_total counter\n'
        || E'# HELP courier_outbox_breaker_open 1 while the endpoint''s circuit breaker is open or half-open.\n# TYPE courier_outbox_breaker_open gauge\n';
    FOR r IN SELECT * FROM courier.outbox_stats LOOP
        lbl := format('{database="%s",outbox="%s"}',
                      replace(replace(replace(current_database(), '\', '\\'), '"', '\"'), E'\n', '\n'),
                      replace(replace(replace(r.outbox::text, '\', '\\'), '"', '\"'), E'\n', '\n'));
        out := out
            || 'courier_outbox_pending' || lbl || ' ' || COALESCE(r.pending, 0) || E'\n'
            || 'courier_outbox_oldest_pending_seconds' || lbl || ' '
                || COALESCE(round(extract(epoch FROM r.oldest_pending_age)::numeric, 3), 0) || E'\n'
            || 'courier_outbox_delivered_total' || lbl || ' ' || r.delivered || E'\n'
            || 'courier_outbox_failed_attempts_total' || lbl || ' ' || r.failed_attempts || E'\n'
            || 'courier_outbox_dead_lettered_total' || lbl || ' ' || r.dead_lettered || E'\n'
            || 'courier_outbox_requests_total' || lbl || ' ' || r.requests || E'\n'
            || 'courier_outbox_breaker_open' || lbl || ' ' || (r.breaker_state IN ('open', 'half-open'))::int || E'\n';
    END LOOP;
    out := out || E'# HELP courier_worker_up 1 while the database''s delivery worker runs.\n# TYPE courier_worker_up gauge\n'
        || format(E'courier_worker_up{database="%s"} %s\n',
                  replace(replace(current_database(), '\', '\\'), '"', '\"'),
                  (EXISTS (SELECT 1 FROM courier.worker_status() w WHERE w.database = current_database()))::int);
    RETURN out;
END
$$;

------------------------------------------------------------------------------------------------------
-- Outbox: observability
------------------------------------------------------------------------------------------------------

-- Per-outbox counters kept by the worker in shared memory (reset by a server restart).
CREATE FUNCTION courier._worker_counters(
    OUT outbox oid, OUT delivered bigint, OUT failed_attempts bigint, OUT retries bigint,
    OUT dead_lettered bigint, OUT requests bigint, OUT delivered_per_second double precision,
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

CREATE VIEW courier.outbox_stats WITH (security_invoker = true) AS
SELECT o.outbox,
       courier._redact_url(o.endpoint)   AS endpoint,
       o.format,
       o.enabled,
       p.pending,
       now() - p.oldest_created_at      AS oldest_pending_age,
       COALESCE(c.delivered, 0)         AS delivered,
       COALESCE(c.delivered, 0) + COALESCE(c.failed_attempts, 0) AS attempts,
       COALESCE(c.failed_attempts, 0)   AS failed_attempts,
       COALESCE(c.retries, 0)           AS retries,
       COALESCE(c.dead_lettered, 0)     AS dead_lettered,
       (SELECT count(*) FROM courier.dead_letters d WHERE d.outbox = o.outbox) AS dead_letters,
       COALESCE(c.requests, 0)          AS requests,
       CASE WHEN c.last_success_at > now() - interval '2 seconds' THEN round(c.delivered_per_second::numeric, 1)
            ELSE 0 END                  AS delivered_per_second,
       COALESCE(courier._breaker_state(courier._origin(o.endpoint)), 'closed') AS breaker_state,
       c.last_error,
       c.last_success_at,
       c.last_failure_at
  FROM courier.outboxes o               -- row-level security: the caller's outboxes only
  LEFT JOIN courier._worker_counters() c ON c.outbox = o.outbox::oid
  CROSS JOIN LATERAL courier._outbox_pending(o.outbox) p;
GRANT SELECT ON courier.outbox_stats TO PUBLIC;


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
-- Saga-step state: durable state machines for multi-step business transactions (doc/saga.md)
------------------------------------------------------------------------------------------------------

-- One row per version of a saga type.  Versions are immutable: redefining a type adds a version,
-- running sagas stay on theirs.  Only the extension's functions write here (see src/saga.c).
CREATE TABLE courier.saga_types (
    saga_type   text        NOT NULL,
    version     integer     NOT NULL CHECK (version > 0),
    steps       jsonb       NOT NULL,
    outbox      regclass,
    owner       regrole     NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga_type, version)
);
COMMENT ON TABLE courier.saga_types IS 'Saga types and their versions: ordered steps, compensations, timeouts (pg_courier)';
SELECT pg_catalog.pg_extension_config_dump('courier.saga_types', '');
REVOKE ALL ON courier.saga_types FROM PUBLIC;
GRANT SELECT ON courier.saga_types TO PUBLIC;

-- One row per saga: a transition locks and updates this row only.  step_states holds one character
-- per step (p pending, r running, s succeeded, f failed, t failed by timeout/abort, c compensating,
-- x compensated, e compensation failed); courier.saga_steps spells them out.  The only secondary
-- index is the one the timeout sweep needs, and fillfactor leaves room for HOT updates.
CREATE TABLE courier.saga_instances (
    saga_id      uuid        PRIMARY KEY,
    saga_type    text        NOT NULL,
    version      integer     NOT NULL,
    status       text        NOT NULL
                 CHECK (status IN ('running', 'compensating', 'completed', 'compensated', 'failed')),
    step_states  text        NOT NULL,
    attempts     integer[]   NOT NULL,
    current_step integer,
    deadline     timestamptz,
    data         jsonb       NOT NULL DEFAULT '{}',
    results      jsonb       NOT NULL DEFAULT '{}',
    errors       jsonb       NOT NULL DEFAULT '{}',
    abort_reason text,
    started_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (saga_type, version) REFERENCES courier.saga_types
) WITH (fillfactor = 80);
CREATE INDEX saga_instances_deadline ON courier.saga_instances (deadline) WHERE deadline IS NOT NULL;
COMMENT ON TABLE courier.saga_instances IS 'Saga instances and their step states (pg_courier); read courier.sagas';
SELECT pg_catalog.pg_extension_config_dump('courier.saga_instances', '');
REVOKE ALL ON courier.saga_instances FROM PUBLIC;

-- Checks a definition and returns it normalized: [{"name", "compensation", "timeout_ms",
-- "max_retries"}, ...].  timeout is an interval ('10 s') or a number of seconds.
CREATE FUNCTION courier._saga_check_definition(saga_type text, steps jsonb)
RETURNS jsonb LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s       jsonb;
    k       text;
    n       integer := 0;
    names   text[] := '{}';
    tmo     numeric;
    retries numeric;
    out     jsonb := '[]';
    name_re constant text := '^[A-Za-z_][A-Za-z0-9_-]{0,62}$';
BEGIN
    IF saga_type IS NULL OR saga_type !~ '^[A-Za-z_][A-Za-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'invalid saga type name "%"', saga_type
            USING ERRCODE = 'invalid_name',
                  HINT = 'Use up to 63 letters, digits, "_", "-" and ".", starting with a letter or "_".';
    END IF;
    IF steps IS NULL OR jsonb_typeof(steps) <> 'array' OR jsonb_array_length(steps) = 0 THEN
        RAISE EXCEPTION 'saga steps must be a non-empty JSON array'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example: ''[{"name": "reserve", "compensation": "release", "timeout": "10 s"}]''';
    END IF;
    IF jsonb_array_length(steps) > 100 THEN
        RAISE EXCEPTION 'a saga can have at most 100 steps' USING ERRCODE = 'program_limit_exceeded';
    END IF;
    FOR s IN SELECT e FROM jsonb_array_elements(steps) e LOOP
        n := n + 1;
        IF jsonb_typeof(s) <> 'object' THEN
            RAISE EXCEPTION 'saga step % must be a JSON object', n USING ERRCODE = 'invalid_parameter_value';
        END IF;
        FOR k IN SELECT jsonb_object_keys(s) LOOP
            IF k NOT IN ('name', 'compensation', 'timeout', 'max_retries') THEN
                RAISE EXCEPTION 'unknown key "%" in saga step %', k, n
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'Known keys: name, compensation, timeout, max_retries.';
            END IF;
        END LOOP;
        IF jsonb_typeof(s -> 'name') IS DISTINCT FROM 'string' OR s ->> 'name' !~ name_re THEN
            RAISE EXCEPTION 'saga step % needs a valid "name"', n
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Use up to 63 letters, digits, "_" and "-", starting with a letter or "_".';
        END IF;
        IF s ->> 'name' = ANY (names) THEN
            RAISE EXCEPTION 'duplicate saga step name "%"', s ->> 'name' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        names := names || (s ->> 'name');
        IF s ? 'compensation' AND jsonb_typeof(s -> 'compensation') <> 'null'
           AND (jsonb_typeof(s -> 'compensation') <> 'string' OR s ->> 'compensation' !~ name_re) THEN
            RAISE EXCEPTION 'invalid "compensation" of saga step "%"', s ->> 'name'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Use up to 63 letters, digits, "_" and "-", starting with a letter or "_".';
        END IF;
        tmo := NULL;
        IF jsonb_typeof(s -> 'timeout') = 'number' THEN
            tmo := (s ->> 'timeout')::numeric * 1000;
        ELSIF jsonb_typeof(s -> 'timeout') = 'string' THEN
            BEGIN
                tmo := extract(epoch FROM (s ->> 'timeout')::interval) * 1000;
            EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow OR interval_field_overflow THEN
                tmo := -1;
            END;
        ELSIF s ? 'timeout' AND jsonb_typeof(s -> 'timeout') <> 'null' THEN
            tmo := -1;
        END IF;
        IF tmo IS NOT NULL AND (tmo < 1 OR tmo > 2147483647000) THEN
            RAISE EXCEPTION 'invalid "timeout" of saga step "%": %', s ->> 'name', s -> 'timeout'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Use a positive interval (''10 s'', ''5 min'') or a number of seconds.';
        END IF;
        retries := 0;
        IF s ? 'max_retries' AND jsonb_typeof(s -> 'max_retries') <> 'null' THEN
            retries := CASE WHEN jsonb_typeof(s -> 'max_retries') = 'number' THEN (s ->> 'max_retries')::numeric END;
            IF retries IS NULL OR retries < 0 OR retries > 1000 OR retries <> trunc(retries) THEN
                RAISE EXCEPTION 'invalid "max_retries" of saga step "%": %', s ->> 'name', s -> 'max_retries'
                    USING ERRCODE = 'invalid_parameter_value', HINT = 'Use an integer from 0 to 1000.';
            END IF;
        END IF;
        out := out || jsonb_build_array(jsonb_build_object(
            'name', s ->> 'name',
            'compensation', s ->> 'compensation',
            'timeout_ms', round(tmo)::bigint,
            'max_retries', retries::integer));
    END LOOP;
    RETURN out;
END
$$;

CREATE FUNCTION courier.saga_define(saga_type text, steps jsonb, outbox regclass DEFAULT NULL)
RETURNS integer LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'courier_saga_define';

CREATE FUNCTION courier.saga_start(saga_type text, data jsonb DEFAULT '{}', saga_id uuid DEFAULT gen_random_uuid())
RETURNS uuid LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'courier_saga_start';

-- Every transition returns what is due next, like courier.saga_next().
CREATE FUNCTION courier.saga_step_started(saga_id uuid, step text,
    OUT status text, OUT action text, OUT step text, OUT compensation text, OUT attempt integer)
RETURNS record LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'courier_saga_step_started';

CREATE FUNCTION courier.saga_step_succeeded(saga_id uuid, step text, result jsonb DEFAULT NULL,
    OUT status text, OUT action text, OUT step text, OUT compensation text, OUT attempt integer)
RETURNS record LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'courier_saga_step_succeeded';

CREATE FUNCTION courier.saga_step_failed(saga_id uuid, step text, error jsonb DEFAULT NULL,
    OUT status text, OUT action text, OUT step text, OUT compensation text, OUT attempt integer)
RETURNS record LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'courier_saga_step_failed';

CREATE FUNCTION courier.saga_compensated(saga_id uuid, step text,
    OUT status text, OUT action text, OUT step text, OUT compensation text, OUT attempt integer)
RETURNS record LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'courier_saga_compensated';

CREATE FUNCTION courier.saga_compensation_failed(saga_id uuid, step text, error jsonb DEFAULT NULL,
    OUT status text, OUT action text, OUT step text, OUT compensation text, OUT attempt integer)
RETURNS record LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'courier_saga_compensation_failed';

CREATE FUNCTION courier.saga_abort(saga_id uuid, reason text DEFAULT NULL,
    OUT status text, OUT action text, OUT step text, OUT compensation text, OUT attempt integer)
RETURNS record LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'courier_saga_abort';

CREATE FUNCTION courier.saga_next(saga_id uuid,
    OUT status text, OUT action text, OUT step text, OUT compensation text, OUT attempt integer)
RETURNS record LANGUAGE C STABLE AS 'MODULE_PATHNAME', 'courier_saga_next';

CREATE FUNCTION courier.saga_purge(older_than interval DEFAULT '30 days')
RETURNS bigint LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'courier_saga_purge';

-- Runs the worker's timeout sweep now (servers without the worker, tests).  An administrative function.
CREATE FUNCTION courier.saga_enforce_timeouts()
RETURNS bigint LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'courier_saga_enforce_timeouts';
REVOKE ALL ON FUNCTION courier.saga_enforce_timeouts() FROM PUBLIC;

CREATE FUNCTION courier._saga_stuck_after()
RETURNS interval LANGUAGE C STABLE AS 'MODULE_PATHNAME', 'courier_saga_stuck_after';

-- Observability.  The views run as their owner and show the sagas of types the caller may use.
CREATE VIEW courier.sagas WITH (security_barrier) AS
SELECT i.saga_id, i.saga_type, i.version, i.status,
       t.steps -> i.current_step ->> 'name' AS current_step,
       i.data, i.results, i.errors, i.abort_reason, i.deadline,
       i.started_at, i.updated_at, now() - i.started_at AS age
  FROM courier.saga_instances i
  JOIN courier.saga_types t USING (saga_type, version)
 WHERE pg_has_role(t.owner, 'USAGE');
GRANT SELECT ON courier.sagas TO PUBLIC;

CREATE VIEW courier.saga_steps WITH (security_barrier) AS
SELECT i.saga_id, i.saga_type, s.n::integer AS step_no, s.e ->> 'name' AS step,
       CASE substr(i.step_states, s.n::integer, 1)
            WHEN 'p' THEN 'pending' WHEN 'r' THEN 'running' WHEN 's' THEN 'succeeded'
            WHEN 'f' THEN 'failed' WHEN 't' THEN 'failed' WHEN 'c' THEN 'compensating'
            WHEN 'x' THEN 'compensated' WHEN 'e' THEN 'compensation_failed' END AS status,
       i.attempts[s.n] AS attempts,
       i.results -> (s.e ->> 'name') AS result,
       i.errors -> (s.e ->> 'name') AS error,
       s.e ->> 'compensation' AS compensation
  FROM courier.saga_instances i
  JOIN courier.saga_types t USING (saga_type, version)
 CROSS JOIN LATERAL jsonb_array_elements(t.steps) WITH ORDINALITY s(e, n)
 WHERE pg_has_role(t.owner, 'USAGE');
GRANT SELECT ON courier.saga_steps TO PUBLIC;

-- Running or compensating sagas without a transition for longer than courier.saga_stuck_after.
CREATE VIEW courier.saga_stuck WITH (security_barrier) AS
SELECT s.saga_id, s.saga_type, s.version, s.status, s.current_step, s.started_at, s.updated_at,
       now() - s.updated_at AS stuck_for, s.age
  FROM courier.sagas s
 WHERE s.status IN ('running', 'compensating')
   AND s.updated_at < now() - courier._saga_stuck_after();
GRANT SELECT ON courier.saga_stuck TO PUBLIC;

-- Counts for dashboards: sagas per type, status and current step.
CREATE VIEW courier.saga_stats WITH (security_barrier) AS
SELECT s.saga_type, s.status, s.current_step, count(*) AS sagas,
       min(s.started_at) AS oldest_started_at, min(s.updated_at) AS oldest_updated_at
  FROM courier.sagas s
 GROUP BY s.saga_type, s.status, s.current_step;
GRANT SELECT ON courier.saga_stats TO PUBLIC;

------------------------------------------------------------------------------------------------------
-- Shard routing (issue 6): Citus hash shards, jump hash, Redis slots, consistent-hash rings, maps.
-- doc/sharding.md describes every object below.
------------------------------------------------------------------------------------------------------

-- Stateless routing: the same answers as Citus, a jump-hash client and a Redis Cluster client.
CREATE FUNCTION courier.shard_for(value anyelement, shard_count integer)
RETURNS integer LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'courier_shard_for';

CREATE FUNCTION courier.shard_index(hash integer, shard_count integer)
RETURNS integer LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'courier_shard_index';

CREATE FUNCTION courier.shard_range(shard_count integer, shard integer, OUT min_hash integer, OUT max_hash integer)
RETURNS record LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'courier_shard_range';

CREATE FUNCTION courier.shard_ranges(shard_count integer)
RETURNS TABLE (shard integer, min_hash integer, max_hash integer)
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT s, r.min_hash, r.max_hash
      FROM generate_series(0, shard_count - 1) s, courier.shard_range(shard_count, s) r
     ORDER BY s
$$;

CREATE FUNCTION courier.jump_hash(key bigint, buckets integer)
RETURNS integer LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'courier_jump_hash_int8';

CREATE FUNCTION courier.jump_hash(key text, buckets integer)
RETURNS integer LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'courier_jump_hash_text';

CREATE FUNCTION courier.redis_slot(key text)
RETURNS integer LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'courier_redis_slot';

CREATE FUNCTION courier.redis_slot(key bytea)
RETURNS integer LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'courier_redis_slot_bytea';

-- Rings and maps are user configuration: readable by everyone (routing reads them as the caller),
-- writable by their owner (row-level security), dumped with the database.
CREATE TABLE courier.rings (
    name       text        PRIMARY KEY CHECK (name <> ''),
    vnodes     integer     NOT NULL CHECK (vnodes BETWEEN 1 AND 10000),
    owner      regrole     NOT NULL DEFAULT current_user::regrole,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE courier.rings IS 'Consistent-hash rings and their default vnode count (pg_courier)';

CREATE TABLE courier.ring_nodes (
    ring     text        NOT NULL REFERENCES courier.rings ON DELETE CASCADE,
    node     text        NOT NULL CHECK (octet_length(node) BETWEEN 1 AND 255),
    vnodes   integer     NOT NULL CHECK (vnodes BETWEEN 1 AND 10000),
    added_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ring, node)
);
COMMENT ON TABLE courier.ring_nodes IS 'Members of each ring with their weight in vnodes (pg_courier)';

-- The points of each ring: the point at pos owns the key hashes in (previous point, pos].
CREATE TABLE courier.ring_points (
    ring text   NOT NULL,
    pos  bigint NOT NULL,
    node text   NOT NULL,
    PRIMARY KEY (ring, pos),
    FOREIGN KEY (ring, node) REFERENCES courier.ring_nodes ON DELETE CASCADE
);
CREATE INDEX ring_points_node_idx ON courier.ring_points (ring, node);
COMMENT ON TABLE courier.ring_points IS 'Virtual-node positions of each ring, as placed by the allocator (pg_courier)';

CREATE TABLE courier.maps (
    name           text        PRIMARY KEY CHECK (name <> ''),
    kind           text        NOT NULL CHECK (kind IN ('range', 'directory')),
    default_target text,
    owner          regrole     NOT NULL DEFAULT current_user::regrole,
    created_at     timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE courier.maps IS 'Range and directory shard maps (pg_courier)';

CREATE TABLE courier.map_ranges (
    map    text      NOT NULL REFERENCES courier.maps ON DELETE CASCADE,
    keys   int8range NOT NULL CHECK (NOT isempty(keys)),
    target text      NOT NULL,
    PRIMARY KEY (map, keys)
);
COMMENT ON TABLE courier.map_ranges IS 'Key ranges of range maps, [lower, upper) (pg_courier)';

CREATE TABLE courier.map_keys (
    map    text NOT NULL REFERENCES courier.maps ON DELETE CASCADE,
    key    text NOT NULL,
    target text NOT NULL,
    PRIMARY KEY (map, key)
);
COMMENT ON TABLE courier.map_keys IS 'Entries of directory maps (pg_courier)';

SELECT pg_catalog.pg_extension_config_dump('courier.rings', '');
SELECT pg_catalog.pg_extension_config_dump('courier.ring_nodes', '');
SELECT pg_catalog.pg_extension_config_dump('courier.ring_points', '');
SELECT pg_catalog.pg_extension_config_dump('courier.maps', '');
SELECT pg_catalog.pg_extension_config_dump('courier.map_ranges', '');
SELECT pg_catalog.pg_extension_config_dump('courier.map_keys', '');

-- May the current role change this ring / map?  (Used by the row-level security policies.)
CREATE FUNCTION courier._may_edit_ring(ring text)
RETURNS boolean LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM courier.rings r WHERE r.name = ring AND pg_has_role(r.owner, 'USAGE'))
$$;
CREATE FUNCTION courier._may_edit_map(map text)
RETURNS boolean LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM courier.maps m WHERE m.name = map AND pg_has_role(m.owner, 'USAGE'))
$$;

ALTER TABLE courier.rings ENABLE ROW LEVEL SECURITY;
CREATE POLICY readable ON courier.rings FOR SELECT USING (true);
CREATE POLICY owner_writes ON courier.rings FOR ALL
    USING (pg_catalog.pg_has_role(owner, 'USAGE')) WITH CHECK (pg_catalog.pg_has_role(owner, 'USAGE'));
ALTER TABLE courier.ring_nodes ENABLE ROW LEVEL SECURITY;
CREATE POLICY readable ON courier.ring_nodes FOR SELECT USING (true);
CREATE POLICY owner_writes ON courier.ring_nodes FOR ALL
    USING (courier._may_edit_ring(ring)) WITH CHECK (courier._may_edit_ring(ring));
ALTER TABLE courier.ring_points ENABLE ROW LEVEL SECURITY;
CREATE POLICY readable ON courier.ring_points FOR SELECT USING (true);
CREATE POLICY owner_writes ON courier.ring_points FOR ALL
    USING (courier._may_edit_ring(ring)) WITH CHECK (courier._may_edit_ring(ring));
ALTER TABLE courier.maps ENABLE ROW LEVEL SECURITY;
CREATE POLICY readable ON courier.maps FOR SELECT USING (true);
CREATE POLICY owner_writes ON courier.maps FOR ALL
    USING (pg_catalog.pg_has_role(owner, 'USAGE')) WITH CHECK (pg_catalog.pg_has_role(owner, 'USAGE'));
ALTER TABLE courier.map_ranges ENABLE ROW LEVEL SECURITY;
CREATE POLICY readable ON courier.map_ranges FOR SELECT USING (true);
CREATE POLICY owner_writes ON courier.map_ranges FOR ALL
    USING (courier._may_edit_map(map)) WITH CHECK (courier._may_edit_map(map));
ALTER TABLE courier.map_keys ENABLE ROW LEVEL SECURITY;
CREATE POLICY readable ON courier.map_keys FOR SELECT USING (true);
CREATE POLICY owner_writes ON courier.map_keys FOR ALL
    USING (courier._may_edit_map(map)) WITH CHECK (courier._may_edit_map(map));

GRANT SELECT, INSERT, UPDATE, DELETE ON courier.rings, courier.ring_nodes, courier.ring_points,
    courier.maps, courier.map_ranges, courier.map_keys TO PUBLIC;

-- Every backend caches rings and maps; a statement trigger queues a relcache invalidation of the
-- changed table, which other backends receive at commit (and never for a rolled-back change).
CREATE FUNCTION courier._shard_invalidate()
RETURNS trigger LANGUAGE C AS 'MODULE_PATHNAME', 'courier_shard_invalidate';
REVOKE ALL ON FUNCTION courier._shard_invalidate() FROM PUBLIC;
CREATE TRIGGER courier_invalidate AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON courier.rings
    FOR EACH STATEMENT EXECUTE FUNCTION courier._shard_invalidate();
CREATE TRIGGER courier_invalidate AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON courier.ring_points
    FOR EACH STATEMENT EXECUTE FUNCTION courier._shard_invalidate();
CREATE TRIGGER courier_invalidate AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON courier.maps
    FOR EACH STATEMENT EXECUTE FUNCTION courier._shard_invalidate();
CREATE TRIGGER courier_invalidate AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON courier.map_ranges
    FOR EACH STATEMENT EXECUTE FUNCTION courier._shard_invalidate();
CREATE TRIGGER courier_invalidate AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON courier.map_keys
    FOR EACH STATEMENT EXECUTE FUNCTION courier._shard_invalidate();

-- Pure helpers (C): the balanced point allocation, and the hash ranges two rings disagree on.
CREATE FUNCTION courier._ring_plan(cur_pos bigint[], cur_node text[], nodes text[], vnodes integer[])
RETURNS TABLE (pos bigint, node text)
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'courier_ring_plan';

CREATE FUNCTION courier._ring_diff(old_pos bigint[], old_node text[], new_pos bigint[], new_node text[])
RETURNS TABLE (range_start bigint, range_end bigint, from_node text, to_node text, fraction double precision)
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'courier_ring_diff';

CREATE FUNCTION courier.ring_route(name text, key text)
RETURNS text LANGUAGE C STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'courier_ring_route';

-- Node lists: not NULL, not empty, no NULL / empty / duplicate names.
CREATE FUNCTION courier._check_nodes(nodes text[])
RETURNS void LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    dup text;
BEGIN
    IF nodes IS NULL OR cardinality(nodes) = 0 THEN
        RAISE EXCEPTION 'a ring needs at least one node'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'For example: ARRAY[''db1'', ''db2'', ''db3'']';
    END IF;
    IF array_position(nodes, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'node names must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(nodes) n WHERE octet_length(n) NOT BETWEEN 1 AND 255) THEN
        RAISE EXCEPTION 'node names must be 1 to 255 bytes long' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT n INTO dup FROM unnest(nodes) n GROUP BY n HAVING count(*) > 1 LIMIT 1;
    IF dup IS NOT NULL THEN
        RAISE EXCEPTION 'node "%" is listed more than once', dup USING ERRCODE = 'duplicate_object';
    END IF;
END
$$;

CREATE FUNCTION courier._check_vnodes(vnodes integer)
RETURNS void LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF vnodes IS NULL OR vnodes NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'vnodes must be between 1 and 10000, not %', coalesce(vnodes::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value', HINT = '150 virtual nodes per node is the usual choice.';
    END IF;
END
$$;

-- Find a ring the caller may change and lock it against concurrent changes.
CREATE FUNCTION courier._ring_lock(ring_name text)
RETURNS courier.rings LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r courier.rings;
BEGIN
    IF ring_name IS NULL THEN
        RAISE EXCEPTION 'ring name must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO r FROM courier.rings x WHERE x.name = ring_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ring "%" does not exist', ring_name
            USING ERRCODE = 'undefined_object', HINT = 'courier.rings lists the rings.';
    END IF;
    IF NOT pg_has_role(r.owner, 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of ring "%"', ring_name USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT * INTO r FROM courier.rings x WHERE x.name = ring_name FOR UPDATE;
    RETURN r;
END
$$;

-- Replace a ring's points by the allocation for the given membership (see doc/sharding.md).
CREATE FUNCTION courier._ring_apply(ring_name text, nodes text[], vnodes integer[])
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cur_pos  bigint[];
    cur_node text[];
BEGIN
    SELECT coalesce(array_agg(p.pos ORDER BY p.pos), '{}'), coalesce(array_agg(p.node ORDER BY p.pos), '{}')
      INTO cur_pos, cur_node
      FROM courier.ring_points p WHERE p.ring = ring_name;
    -- the arrays hold the current points, so the old rows can go before the new ones are computed
    DELETE FROM courier.ring_points p WHERE p.ring = ring_name;
    INSERT INTO courier.ring_points (ring, pos, node)
    SELECT ring_name, x.pos, x.node FROM courier._ring_plan(cur_pos, cur_node, nodes, vnodes) x;
END
$$;

CREATE FUNCTION courier.ring_create(name text, nodes text[], vnodes integer DEFAULT 150)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF name IS NULL OR name = '' THEN
        RAISE EXCEPTION 'ring name must not be NULL or empty' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM courier._check_nodes(nodes);
    PERFORM courier._check_vnodes(vnodes);
    IF EXISTS (SELECT 1 FROM courier.rings r WHERE r.name = ring_create.name) THEN
        RAISE EXCEPTION 'ring "%" already exists', name
            USING ERRCODE = 'duplicate_object', HINT = 'Use courier.ring_add_node to grow it, or courier.ring_drop first.';
    END IF;
    INSERT INTO courier.rings (name, vnodes) VALUES (ring_create.name, ring_create.vnodes);
    INSERT INTO courier.ring_nodes (ring, node, vnodes) SELECT ring_create.name, n, ring_create.vnodes FROM unnest(nodes) n;
    PERFORM courier._ring_apply(name, nodes, array_fill(vnodes, ARRAY[cardinality(nodes)]));
END
$$;

CREATE FUNCTION courier.ring_add_node(name text, node text, vnodes integer DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r     courier.rings := courier._ring_lock(name);
    v     integer := coalesce(vnodes, r.vnodes);
    nodes text[];
    vn    integer[];
BEGIN
    PERFORM courier._check_nodes(ARRAY[node]);
    PERFORM courier._check_vnodes(v);
    IF EXISTS (SELECT 1 FROM courier.ring_nodes n WHERE n.ring = r.name AND n.node = ring_add_node.node) THEN
        RAISE EXCEPTION 'node "%" is already in ring "%"', node, r.name USING ERRCODE = 'duplicate_object';
    END IF;
    SELECT array_agg(n.node ORDER BY n.node) || ring_add_node.node, array_agg(n.vnodes ORDER BY n.node) || v
      INTO nodes, vn FROM courier.ring_nodes n WHERE n.ring = r.name;
    INSERT INTO courier.ring_nodes (ring, node, vnodes) VALUES (r.name, ring_add_node.node, v);
    PERFORM courier._ring_apply(r.name, nodes, vn);
END
$$;

CREATE FUNCTION courier.ring_remove_node(name text, node text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r     courier.rings := courier._ring_lock(name);
    nodes text[];
    vn    integer[];
BEGIN
    IF node IS NULL OR NOT EXISTS (SELECT 1 FROM courier.ring_nodes n WHERE n.ring = r.name AND n.node = ring_remove_node.node) THEN
        RAISE EXCEPTION 'node "%" is not in ring "%"', node, r.name USING ERRCODE = 'undefined_object';
    END IF;
    SELECT array_agg(n.node ORDER BY n.node), array_agg(n.vnodes ORDER BY n.node)
      INTO nodes, vn FROM courier.ring_nodes n WHERE n.ring = r.name AND n.node <> ring_remove_node.node;
    IF nodes IS NULL THEN
        RAISE EXCEPTION 'cannot remove "%", the last node of ring "%"', node, r.name
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Drop the ring with courier.ring_drop instead.';
    END IF;
    PERFORM courier._ring_apply(r.name, nodes, vn);
    DELETE FROM courier.ring_nodes n WHERE n.ring = r.name AND n.node = ring_remove_node.node;
END
$$;

CREATE FUNCTION courier.ring_drop(name text, if_exists boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF if_exists AND name IS NOT NULL AND NOT EXISTS (SELECT 1 FROM courier.rings r WHERE r.name = ring_drop.name) THEN
        RAISE NOTICE 'ring "%" does not exist, skipping', name;
        RETURN;
    END IF;
    PERFORM courier._ring_lock(name);
    DELETE FROM courier.rings r WHERE r.name = ring_drop.name;
END
$$;

-- What would move if the ring had exactly new_nodes (new ones with the ring's default vnodes).
CREATE FUNCTION courier.ring_moves(name text, new_nodes text[])
RETURNS TABLE (range_start bigint, range_end bigint, from_node text, to_node text, fraction double precision)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r        courier.rings;
    cur_pos  bigint[];
    cur_node text[];
    vn       integer[];
BEGIN
    IF name IS NULL THEN
        RAISE EXCEPTION 'ring name must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO r FROM courier.rings x WHERE x.name = ring_moves.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ring "%" does not exist', name USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM courier._check_nodes(new_nodes);
    SELECT array_agg(p.pos ORDER BY p.pos), array_agg(p.node ORDER BY p.pos)
      INTO cur_pos, cur_node FROM courier.ring_points p WHERE p.ring = r.name;
    SELECT array_agg(coalesce(n.vnodes, r.vnodes) ORDER BY u.i) INTO vn
      FROM unnest(new_nodes) WITH ORDINALITY u(node, i)
      LEFT JOIN courier.ring_nodes n ON n.ring = r.name AND n.node = u.node;
    RETURN QUERY
    SELECT d.range_start, d.range_end, d.from_node, d.to_node, d.fraction
      FROM (SELECT array_agg(p.pos ORDER BY p.pos) AS pos, array_agg(p.node ORDER BY p.pos) AS node
              FROM courier._ring_plan(cur_pos, cur_node, new_nodes, vn) p) np,
           courier._ring_diff(cur_pos, cur_node, np.pos, np.node) d;
END
$$;

-- Share of the 64-bit hash space each node owns.
CREATE VIEW courier.ring_ownership AS
WITH p AS (
    SELECT rp.ring, rp.node, rp.pos::numeric AS pos,
           lag(rp.pos::numeric) OVER w AS prev,
           last_value(rp.pos::numeric) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS last
      FROM courier.ring_points rp
    WINDOW w AS (PARTITION BY rp.ring ORDER BY rp.pos)
)
SELECT p.ring, p.node, n.vnodes, count(*) AS points,
       (sum(p.pos - coalesce(p.prev, p.last - 18446744073709551616)) / 18446744073709551616)::float8 AS ownership
  FROM p JOIN courier.ring_nodes n ON n.ring = p.ring AND n.node = p.node
 GROUP BY p.ring, p.node, n.vnodes;
GRANT SELECT ON courier.ring_ownership TO PUBLIC;

-- Load per node for a sample of keys (hot keys show up as skew > 1).
CREATE FUNCTION courier.ring_balance(name text, sample text[])
RETURNS TABLE (node text, keys bigint, share double precision, ownership double precision, skew double precision)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    ring_name text := name;
    total     bigint := coalesce(cardinality(sample), 0);
BEGIN
    IF ring_name IS NULL THEN
        RAISE EXCEPTION 'ring name must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM courier.rings r WHERE r.name = ring_name) THEN
        RAISE EXCEPTION 'ring "%" does not exist', ring_name USING ERRCODE = 'undefined_object';
    END IF;
    RETURN QUERY
    WITH routed AS (
        SELECT courier.ring_route(ring_name, k) AS node, count(*) AS n
          FROM unnest(sample) k WHERE k IS NOT NULL GROUP BY 1
    )
    SELECT o.node, coalesce(rt.n, 0)::bigint,
           CASE WHEN total > 0 THEN coalesce(rt.n, 0)::float8 / total END,
           o.ownership,
           CASE WHEN total > 0 THEN coalesce(rt.n, 0)::float8 / total / o.ownership END
      FROM courier.ring_ownership o LEFT JOIN routed rt ON rt.node = o.node
     WHERE o.ring = ring_name
     ORDER BY o.node;
END
$$;

-- Maps.
CREATE FUNCTION courier.map_route(name text, key text)
RETURNS text LANGUAGE C STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'courier_map_route_text';
CREATE FUNCTION courier.map_route(name text, key bigint)
RETURNS text LANGUAGE C STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'courier_map_route_int8';

CREATE FUNCTION courier._map_lock(map_name text, want_kind text)
RETURNS courier.maps LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m courier.maps;
BEGIN
    IF map_name IS NULL THEN
        RAISE EXCEPTION 'map name must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO m FROM courier.maps x WHERE x.name = map_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'map "%" does not exist', map_name
            USING ERRCODE = 'undefined_object', HINT = 'courier.maps lists the maps.';
    END IF;
    IF NOT pg_has_role(m.owner, 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of map "%"', map_name USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF want_kind IS NOT NULL AND m.kind <> want_kind THEN
        RAISE EXCEPTION 'map "%" is a % map', map_name, m.kind
            USING ERRCODE = 'wrong_object_type',
                  HINT = CASE m.kind WHEN 'range' THEN 'Use courier.map_set(name, lower bigint, upper bigint, target).'
                                     ELSE 'Use courier.map_set(name, key text, target).' END;
    END IF;
    SELECT * INTO m FROM courier.maps x WHERE x.name = map_name FOR UPDATE;
    RETURN m;
END
$$;

CREATE FUNCTION courier.map_create(name text, kind text, default_target text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF name IS NULL OR name = '' THEN
        RAISE EXCEPTION 'map name must not be NULL or empty' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF kind IS NULL OR kind NOT IN ('range', 'directory') THEN
        RAISE EXCEPTION 'unknown map kind "%"', kind
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use ''range'' or ''directory''.';
    END IF;
    IF EXISTS (SELECT 1 FROM courier.maps m WHERE m.name = map_create.name) THEN
        RAISE EXCEPTION 'map "%" already exists', name USING ERRCODE = 'duplicate_object';
    END IF;
    INSERT INTO courier.maps (name, kind, default_target) VALUES (name, kind, default_target);
END
$$;

CREATE FUNCTION courier.map_set(name text, key text, target text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m courier.maps := courier._map_lock(name, 'directory');
BEGIN
    IF key IS NULL OR target IS NULL THEN
        RAISE EXCEPTION 'map key and target must not be NULL'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'Use courier.map_unset to remove a key.';
    END IF;
    INSERT INTO courier.map_keys AS k (map, key, target) VALUES (m.name, map_set.key, map_set.target)
    ON CONFLICT ON CONSTRAINT map_keys_pkey DO UPDATE SET target = excluded.target;
END
$$;

CREATE FUNCTION courier.map_set(name text, lower bigint, upper bigint, target text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m       courier.maps := courier._map_lock(name, 'range');
    r       int8range;
    overlap int8range;
BEGIN
    IF target IS NULL THEN
        RAISE EXCEPTION 'map target must not be NULL'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'Use courier.map_unset to remove a range.';
    END IF;
    IF lower IS NOT NULL AND upper IS NOT NULL AND lower >= upper THEN
        RAISE EXCEPTION 'empty key range [%, %)', lower, upper
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Ranges include lower and exclude upper; NULL means unbounded.';
    END IF;
    r := int8range(lower, upper, '[)');
    SELECT x.keys INTO overlap FROM courier.map_ranges x WHERE x.map = m.name AND x.keys && r AND x.keys <> r LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'key range % overlaps range % of map "%"', r, overlap, m.name
            USING ERRCODE = 'exclusion_violation', HINT = 'Remove or shrink the existing range with courier.map_unset first.';
    END IF;
    INSERT INTO courier.map_ranges (map, keys, target) VALUES (m.name, r, map_set.target)
    ON CONFLICT ON CONSTRAINT map_ranges_pkey DO UPDATE SET target = excluded.target;
END
$$;

CREATE FUNCTION courier.map_unset(name text, key text)
RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m courier.maps := courier._map_lock(name, 'directory');
BEGIN
    DELETE FROM courier.map_keys k WHERE k.map = m.name AND k.key = map_unset.key;
    RETURN FOUND;
END
$$;

CREATE FUNCTION courier.map_unset(name text, lower bigint, upper bigint)
RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m courier.maps := courier._map_lock(name, 'range');
BEGIN
    DELETE FROM courier.map_ranges x WHERE x.map = m.name AND x.keys = int8range(lower, upper, '[)');
    RETURN FOUND;
END
$$;

CREATE FUNCTION courier.map_set_default(name text, target text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m courier.maps := courier._map_lock(name, NULL);
BEGIN
    UPDATE courier.maps x SET default_target = target WHERE x.name = m.name;
END
$$;

CREATE FUNCTION courier.map_drop(name text, if_exists boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF if_exists AND name IS NOT NULL AND NOT EXISTS (SELECT 1 FROM courier.maps m WHERE m.name = map_drop.name) THEN
        RAISE NOTICE 'map "%" does not exist, skipping', name;
        RETURN;
    END IF;
    PERFORM courier._map_lock(name, NULL);
    DELETE FROM courier.maps m WHERE m.name = map_drop.name;
END
$$;

------------------------------------------------------------------------------------------------------
-- Shared-memory cache (doc/cache.md)
------------------------------------------------------------------------------------------------------

-- Values of three types; courier.cache_get returns text (jsonb and bytea convert as their casts do),
-- the typed getters return the stored type.  Keys are namespaced by database.
CREATE FUNCTION courier.cache_set(key text, value text, ttl interval DEFAULT NULL)
RETURNS void LANGUAGE C AS 'MODULE_PATHNAME', 'courier_cache_set_text';
CREATE FUNCTION courier.cache_set(key text, value jsonb, ttl interval DEFAULT NULL)
RETURNS void LANGUAGE C AS 'MODULE_PATHNAME', 'courier_cache_set_jsonb';
CREATE FUNCTION courier.cache_set(key text, value bytea, ttl interval DEFAULT NULL)
RETURNS void LANGUAGE C AS 'MODULE_PATHNAME', 'courier_cache_set_bytea';

CREATE FUNCTION courier.cache_get(key text)
RETURNS text LANGUAGE C STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'courier_cache_get';
CREATE FUNCTION courier.cache_get_jsonb(key text)
RETURNS jsonb LANGUAGE C STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'courier_cache_get_jsonb';
CREATE FUNCTION courier.cache_get_bytea(key text)
RETURNS bytea LANGUAGE C STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'courier_cache_get_bytea';

CREATE FUNCTION courier.cache_delete(key text)
RETURNS boolean LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'courier_cache_delete';
CREATE FUNCTION courier.cache_delete_prefix(prefix text)
RETURNS bigint LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'courier_cache_delete_prefix';
CREATE FUNCTION courier.cache_clear(all_databases boolean DEFAULT false)
RETURNS bigint LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'courier_cache_clear';
CREATE FUNCTION courier.cache_touch(key text, ttl interval DEFAULT NULL)
RETURNS boolean LANGUAGE C AS 'MODULE_PATHNAME', 'courier_cache_touch';
CREATE FUNCTION courier.cache_purge_expired()
RETURNS bigint LANGUAGE C AS 'MODULE_PATHNAME', 'courier_cache_purge_expired';

-- Read-through with stampede protection: loader is a query (the key is $1) or a function name
-- f(text); it runs with the caller's privileges.
CREATE FUNCTION courier.cache_get_or_load(key text, loader text, ttl interval DEFAULT NULL)
RETURNS text LANGUAGE C AS 'MODULE_PATHNAME', 'courier_cache_get_or_load';
CREATE FUNCTION courier.cache_get_or_load_jsonb(key text, loader text, ttl interval DEFAULT NULL)
RETURNS jsonb LANGUAGE C AS 'MODULE_PATHNAME', 'courier_cache_get_or_load_jsonb';

CREATE FUNCTION courier.cache_stats(
    OUT partitions integer, OUT shmem_bytes bigint, OUT capacity_entries bigint, OUT capacity_bytes bigint,
    OUT max_value_bytes integer, OUT entries bigint, OUT used_bytes bigint, OUT hits bigint,
    OUT misses bigint, OUT hit_ratio double precision, OUT sets bigint, OUT deletes bigint,
    OUT evictions bigint, OUT expirations bigint, OUT loads bigint, OUT load_failures bigint,
    OUT stampede_waits bigint, OUT lock_waits bigint)
RETURNS record LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'courier_cache_stats';
CREATE VIEW courier.cache_stats AS SELECT * FROM courier.cache_stats();

CREATE FUNCTION courier.cache_partition_stats(
    OUT partition integer, OUT capacity_entries bigint, OUT capacity_bytes bigint, OUT entries bigint,
    OUT used_bytes bigint, OUT hits bigint, OUT misses bigint, OUT sets bigint, OUT evictions bigint,
    OUT expirations bigint, OUT stampede_waits bigint, OUT lock_waits bigint)
RETURNS SETOF record LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'courier_cache_partition_stats';
CREATE VIEW courier.cache_partition_stats AS SELECT * FROM courier.cache_partition_stats();

CREATE FUNCTION courier.cache_stats_reset()
RETURNS void LANGUAGE C AS 'MODULE_PATHNAME', 'courier_cache_stats_reset';

-- Test-only: moves the cache's clock forward for every backend (TTL tests without sleeping).
CREATE FUNCTION courier._cache_test_clock_advance(by_interval interval)
RETURNS void LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'courier_cache_test_clock_advance';

-- Invalidation on commit: the trigger function renders the key template from the old and the new row
-- and deletes the keys when the transaction commits (TRUNCATE: the template's literal prefix).
-- The triggers depend on this function: DROP EXTENSION pg_courier CASCADE removes them.
CREATE FUNCTION courier._cache_invalidate()
RETURNS trigger LANGUAGE C AS 'MODULE_PATHNAME', 'courier_cache_invalidate_trigger';

CREATE FUNCTION courier._cache_trigger_name(key_template text)
RETURNS name LANGUAGE sql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp
AS $$ SELECT ('courier_cache_inval_' || left(md5(key_template), 12))::name $$;

CREATE FUNCTION courier.cache_invalidate_on(tbl regclass, key_template text)
RETURNS name LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    kind    "char";
    col     text;
    tgname  name;
BEGIN
    IF tbl IS NULL OR key_template IS NULL OR key_template = '' THEN
        RAISE EXCEPTION 'table and key template must be given'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'For example: courier.cache_invalidate_on(''orders'', ''order:{id}'')';
    END IF;
    SELECT relkind INTO kind FROM pg_class WHERE oid = tbl;
    IF kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '"%" is not a table', tbl USING ERRCODE = 'wrong_object_type';
    END IF;
    IF regexp_replace(key_template, '\{[^{}]*\}', '', 'g') ~ '[{}]' THEN
        RAISE EXCEPTION 'invalid cache key template "%"', key_template
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Placeholders are column names in braces, e.g. ''order:{id}''; braces cannot appear otherwise.';
    END IF;
    FOR col IN SELECT m[1] FROM regexp_matches(key_template, '\{([^{}]*)\}', 'g') m LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_attribute
                        WHERE attrelid = tbl AND attname = col AND attnum > 0 AND NOT attisdropped) THEN
            RAISE EXCEPTION 'column "%" of key template "%" does not exist in table %', col, key_template, tbl
                USING ERRCODE = 'undefined_column',
                      HINT = 'Columns: ' || (SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum)
                                               FROM pg_attribute
                                              WHERE attrelid = tbl AND attnum > 0 AND NOT attisdropped);
        END IF;
    END LOOP;
    tgname := courier._cache_trigger_name(key_template);
    EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION courier._cache_invalidate(%L)', tgname, tbl, key_template);
    EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION courier._cache_invalidate(%L)',
                   tgname || '_truncate', tbl, key_template);
    RETURN tgname;
END
$$;

CREATE FUNCTION courier.cache_invalidate_off(tbl regclass, key_template text DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t       record;
    n       integer := 0;
BEGIN
    FOR t IN SELECT tg.tgname FROM pg_trigger tg
              WHERE tg.tgrelid = tbl AND tg.tgfoid = 'courier._cache_invalidate()'::regprocedure
                AND (key_template IS NULL
                     OR tg.tgname IN (courier._cache_trigger_name(key_template),
                                      courier._cache_trigger_name(key_template) || '_truncate'))
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, tbl);
        n := n + 1;
    END LOOP;
    RETURN n / 2;
END
$$;

CREATE VIEW courier.cache_invalidations AS
SELECT tg.tgrelid::regclass AS "table",
       convert_from(substring(tg.tgargs FROM 1 FOR octet_length(tg.tgargs) - 1),
                    pg_encoding_to_char(d.encoding)) AS key_template,
       tg.tgname AS trigger_name
  FROM pg_trigger tg
  JOIN pg_database d ON d.datname = current_database()
 WHERE tg.tgfoid = 'courier._cache_invalidate()'::regprocedure
   AND tg.tgtype & 32 = 0;   -- the row trigger of each pair (32 = TRUNCATE)
GRANT SELECT ON courier.cache_invalidations, courier.cache_stats, courier.cache_partition_stats TO PUBLIC;

-- Clearing the whole cache, resetting statistics and the test clock are for administrators.
REVOKE ALL ON FUNCTION courier.cache_clear(boolean), courier.cache_stats_reset(),
                       courier._cache_test_clock_advance(interval) FROM PUBLIC;
