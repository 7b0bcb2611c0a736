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

CREATE FUNCTION courier.drop_outbox(outbox regclass)
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
-- (idempotency keys) goes here
------------------------------------------------------------------------------------------------------

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
CREATE VIEW courier.sagas AS
SELECT i.saga_id, i.saga_type, i.version, i.status,
       t.steps -> i.current_step ->> 'name' AS current_step,
       i.data, i.results, i.errors, i.abort_reason, i.deadline,
       i.started_at, i.updated_at, now() - i.started_at AS age
  FROM courier.saga_instances i
  JOIN courier.saga_types t USING (saga_type, version)
 WHERE pg_has_role(t.owner, 'USAGE');
GRANT SELECT ON courier.sagas TO PUBLIC;

CREATE VIEW courier.saga_steps AS
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
CREATE VIEW courier.saga_stuck AS
SELECT s.saga_id, s.saga_type, s.version, s.status, s.current_step, s.started_at, s.updated_at,
       now() - s.updated_at AS stuck_for, s.age
  FROM courier.sagas s
 WHERE s.status IN ('running', 'compensating')
   AND s.updated_at < now() - courier._saga_stuck_after();
GRANT SELECT ON courier.saga_stuck TO PUBLIC;

-- Counts for dashboards: sagas per type, status and current step.
CREATE VIEW courier.saga_stats AS
SELECT s.saga_type, s.status, s.current_step, count(*) AS sagas,
       min(s.started_at) AS oldest_started_at, min(s.updated_at) AS oldest_updated_at
  FROM courier.sagas s
 GROUP BY s.saga_type, s.status, s.current_step;
GRANT SELECT ON courier.saga_stats TO PUBLIC;

------------------------------------------------------------------------------------------------------
-- (shard routing) goes here
------------------------------------------------------------------------------------------------------

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
