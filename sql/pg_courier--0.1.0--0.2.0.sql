/* pg_courier--0.1.0--0.2.0.sql — upgrade script: hardening (hostile owners, hostile rows, endpoints) */

\echo Use "ALTER EXTENSION pg_courier UPDATE TO '0.2.0'" to load this file. \quit

-- A fresh CREATE EXTENSION runs pg_courier--0.1.0.sql and then this script (PostgreSQL chains them),
-- so a fresh install and an upgraded one are the same by construction.

-- (Registration) The schema must be ours alone: a `courier` schema that another role owns, may create objects in,
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

------------------------------------------------------------------------------------------------------
-- Identity: owner code runs as its owner, restricted; readers never run another role's code
------------------------------------------------------------------------------------------------------

-- The pending count of outbox_stats and metrics() no longer runs count(*) in the reader's identity
-- (a registered view, or another role's row-level security policies, would run that role's code as
-- the reader, superusers included).  Same signature; see src/outbox_pending.c for what is counted
-- how: a plain, registered table the reader may SELECT, by a heap scan when no policy applies to the
-- reader, through the policies only for the table's owner; NULLs otherwise.
CREATE OR REPLACE FUNCTION courier._outbox_pending(outbox regclass, OUT pending bigint,
                                                   OUT oldest_created_at timestamptz)
LANGUAGE C STABLE STRICT AS 'MODULE_PATHNAME', 'courier_outbox_pending';

------------------------------------------------------------------------------------------------------
-- Registration: only real outbox tables; bounded options; DROP TABLE unregisters
------------------------------------------------------------------------------------------------------

-- What may be registered (C, src/outbox_shape.c): NULL for a real outbox, else what is wrong with it.
-- complete => false checks the structure only (kind, columns), not the unique index on id and the
-- triggers: pg_dump restores courier.outboxes before it creates those.
CREATE FUNCTION courier._outbox_shape_problem(outbox regclass, complete boolean DEFAULT true)
RETURNS text LANGUAGE C STABLE STRICT AS 'MODULE_PATHNAME', 'courier_outbox_shape_problem_sql';

-- BEFORE UPDATE row trigger on every outbox: id, event_id and key are fixed; payload, headers and
-- topic stay within courier.max_payload_bytes.
CREATE FUNCTION courier._outbox_before_update()
RETURNS trigger LANGUAGE C AS 'MODULE_PATHNAME', 'courier_outbox_before_update';

-- Outboxes registered before 0.2.0 get the UPDATE trigger (tables that are gone or are not tables
-- are left to the worker's report).
DO $add_update_trigger$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT o.outbox FROM courier.outboxes o JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) o.outbox
              WHERE c.relkind OPERATOR(pg_catalog.=) 'r'
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                                 WHERE t.tgrelid OPERATOR(pg_catalog.=) c.oid
                                   AND t.tgname OPERATOR(pg_catalog.=) 'courier_outbox_update') LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER courier_outbox_update BEFORE UPDATE ON %s
                                   FOR EACH ROW EXECUTE FUNCTION courier._outbox_before_update()', r.outbox);
    END LOOP;
END
$add_update_trigger$;

-- The bounds of options that override a GUC, from the GUC's own definition (src/outbox_options.c).
CREATE FUNCTION courier._option_bounds(option text, OUT setting text, OUT min_val bigint, OUT max_val bigint)
RETURNS record LANGUAGE C STABLE STRICT AS 'MODULE_PATHNAME', 'courier_option_bounds';

-- The Kafka REST options (issue 12): embedded_format (v2), cluster_id (v3), and topics as Kafka names them.
CREATE FUNCTION courier._validate_kafka_options(options jsonb, format text)
RETURNS void LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF options ? 'embedded_format' AND (format <> 'kafka_rest_v2'
                                        OR options -> 'embedded_format' NOT IN ('"json"', '"binary"')) THEN
        RAISE EXCEPTION 'outbox option "embedded_format" must be ''json'' or ''binary'', for the kafka_rest_v2 format'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'binary sends key and value as base64 bytes, so a key reaches Kafka as itself (see doc/outbox.md).';
    END IF;
    IF options ? 'cluster_id' AND (format <> 'kafka_rest_v3' OR jsonb_typeof(options -> 'cluster_id') <> 'string'
                                   OR options ->> 'cluster_id' !~ '^[A-Za-z0-9_-]{1,64}$') THEN
        RAISE EXCEPTION 'outbox option "cluster_id" must be a Kafka cluster id (1 to 64 of A-Z a-z 0-9 _ -), for the kafka_rest_v3 format'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Leave it out to have it discovered with GET /v3/clusters.';
    END IF;
    -- Kafka's topic names: 1 to 249 of [a-zA-Z0-9._-], and not "." or ".." (path steps in a URL)
    IF format LIKE 'kafka_rest_%' AND options ? 'topic'
       AND (options ->> 'topic' !~ '^[a-zA-Z0-9._-]{1,249}$' OR options ->> 'topic' IN ('.', '..')) THEN
        RAISE EXCEPTION 'outbox option "topic" is not a valid Kafka topic name: "%"', options ->> 'topic'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Kafka topic names are 1 to 249 of a-z A-Z 0-9 . _ -, and neither "." nor "..".';
    END IF;
END
$$;

-- Standard Webhooks secrets (C, src/outbox_signing.c): "whsec_" + base64 of 24 to 64 bytes, or a
-- JSON array of 1 to 8 of them while rotating.  The error never quotes the value.
CREATE FUNCTION courier._validate_signing_secret(secrets text[]) RETURNS void
LANGUAGE C STABLE STRICT AS 'MODULE_PATHNAME', 'courier_validate_signing_secret';

-- The options of this part: the CloudEvents "source" must be a non-empty URI-reference and "topic"
-- (the CloudEvents "type") non-empty; the secret is checked; headers that would contradict the body
-- (ce-*), name the sender (User-Agent) or forge a signature (webhook-*) cannot be set.
CREATE FUNCTION courier._validate_webhook_options(options jsonb, format text)
RETURNS void LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    src text := options ->> 'source';
BEGIN
    IF options ? 'topic' AND options ->> 'topic' = '' THEN
        RAISE EXCEPTION 'outbox option "topic" must not be empty'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'It is the CloudEvents "type" (or the Kafka topic) of events inserted without a topic.';
    END IF;
    IF src IS NOT NULL AND (src = ''
           OR src !~ '^([A-Za-z0-9._~!$&''()*+,;=:@/?#-]|%[0-9A-Fa-f]{2})+$'
           OR src ~ '#.*#'
           OR (src !~ '^[A-Za-z][A-Za-z0-9+.-]*:' AND split_part(split_part(split_part(src, '/', 1), '?', 1), '#', 1) ~ ':')) THEN
        RAISE EXCEPTION 'outbox option "source" must be a non-empty URI-reference'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example "/billing/invoices" or "https://example.com/orders"; percent-encode spaces and non-ASCII characters.';
    END IF;
    IF options ? 'signing_secret' AND format <> 'cloudevents' THEN
        RAISE EXCEPTION 'outbox option "signing_secret" applies to the cloudevents format only'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF options ? 'signing_secret' THEN
        IF jsonb_typeof(options -> 'signing_secret') NOT IN ('string', 'array')
           OR EXISTS (SELECT 1 FROM jsonb_array_elements(CASE jsonb_typeof(options -> 'signing_secret')
                                                         WHEN 'array' THEN options -> 'signing_secret' ELSE '[]' END) e
                       WHERE jsonb_typeof(e) <> 'string') THEN
            RAISE EXCEPTION 'outbox option "signing_secret" must be a string or an array of strings'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'A secret is "whsec_" followed by base64; use an array of two while rotating.';
        END IF;
        PERFORM courier._validate_signing_secret(ARRAY(
            SELECT jsonb_array_elements_text(CASE jsonb_typeof(options -> 'signing_secret')
                                             WHEN 'array' THEN options -> 'signing_secret'
                                             ELSE jsonb_build_array(options -> 'signing_secret') END)));
    END IF;
    IF options ? 'headers' AND EXISTS (
           SELECT 1 FROM jsonb_object_keys(options -> 'headers') h
            WHERE lower(h) LIKE 'ce-%' OR lower(h) LIKE 'webhook-%' OR lower(h) = 'user-agent') THEN
        RAISE EXCEPTION 'outbox option "headers" cannot set CloudEvents (ce-*), Standard Webhooks (webhook-*) or User-Agent headers'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'CloudEvents attributes come from the event; use the option "signing_secret" to sign requests.';
    END IF;
END
$$;

-- Options: integers within their GUC's bounds; retention positive and at most 10 years (an audit
-- trail, not an archive: and now() - retention must stay far inside the timestamp range).
CREATE OR REPLACE FUNCTION courier._validate_options(options jsonb, format text)
RETURNS void LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k text;
    b record;
    allowed constant jsonb := '{"topic": "string", "batch": "boolean", "batch_size": "number",
                               "max_inflight": "number", "timeout_ms": "number",
                               "source": "string", "envelope": "string",
                               "retry_base_ms": "number", "retry_max_ms": "number",
                               "max_attempts": "number", "on_dead_letter": "string",
                               "tls_verify": "boolean", "headers": "object", "retention": "string",
                               "max_request_bytes": "number", "signing_secret": "any",
                               "embedded_format": "string", "cluster_id": "string"}';
    retention_max constant text := '10 years';
    retention_ok boolean;
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
        IF allowed ->> k <> 'any' AND jsonb_typeof(options -> k) <> allowed ->> k THEN
            RAISE EXCEPTION 'outbox option "%" must be a %', k, allowed ->> k
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF allowed ->> k = 'number' THEN
            b := courier._option_bounds(k);
            IF (options ->> k)::numeric <> trunc((options ->> k)::numeric)
               OR (options ->> k)::numeric NOT BETWEEN b.min_val AND b.max_val THEN
                RAISE EXCEPTION 'outbox option "%" must be an integer from % to %', k, b.min_val, b.max_val
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = format('These are the bounds of the setting %s, which the option overrides.', b.setting);
            END IF;
        END IF;
    END LOOP;
    IF options ? 'retention' THEN
        BEGIN
            retention_ok := extract(epoch FROM (options ->> 'retention')::interval)
                            BETWEEN 1e-6 AND extract(epoch FROM retention_max::interval);
        EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow OR interval_field_overflow
                       OR syntax_error OR numeric_value_out_of_range THEN
            retention_ok := false;
        END;
        IF NOT retention_ok THEN
            RAISE EXCEPTION 'outbox option "retention" must be a positive interval of at most %, not "%"',
                            retention_max, options ->> 'retention'
                USING ERRCODE = 'invalid_parameter_value', HINT = 'For example {"retention": "7 days"}.';
        END IF;
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
    IF format LIKE 'kafka_rest_%' AND options ? 'batch' THEN
        RAISE EXCEPTION 'outbox option "batch" applies to the cloudevents format only'
            USING ERRCODE = 'invalid_parameter_value', HINT = format('%s always sends records in batches.', format);
    END IF;
    PERFORM courier._validate_kafka_options(options, format);
    PERFORM courier._validate_webhook_options(options, format);
END
$$;

-- Options stored before 0.2.0 outside those bounds are brought inside them (with a NOTICE), without
-- re-running the other registration checks on old rows.
DO $clamp_options$
DECLARE
    r     record;
    b     record;
    k     text;
    fixed jsonb;
BEGIN
    ALTER TABLE courier.outboxes DISABLE TRIGGER outboxes_check;
    FOR r IN SELECT o.outbox, o.options FROM courier.outboxes o LOOP
        fixed := r.options;
        FOR k IN SELECT pg_catalog.jsonb_object_keys(r.options) LOOP
            SELECT * INTO b FROM courier._option_bounds(k);
            IF b.setting IS NOT NULL AND pg_catalog.jsonb_typeof(r.options -> k) OPERATOR(pg_catalog.=) 'number' THEN
                fixed := pg_catalog.jsonb_set(fixed, ARRAY[k], pg_catalog.to_jsonb(
                             LEAST(GREATEST(pg_catalog.trunc((r.options ->> k)::pg_catalog.numeric), b.min_val), b.max_val)));
            END IF;
        END LOOP;
        IF r.options ? 'retention' AND extract(epoch FROM (r.options ->> 'retention')::pg_catalog.interval)
                                       OPERATOR(pg_catalog.>) extract(epoch FROM interval '10 years') THEN
            fixed := pg_catalog.jsonb_set(fixed, '{retention}', '"10 years"');
        END IF;
        IF fixed OPERATOR(pg_catalog.<>) r.options THEN
            RAISE WARNING 'options of outbox % brought within their bounds: % (were %)', r.outbox, fixed, r.options;
            UPDATE courier.outboxes o SET options = fixed WHERE o.outbox OPERATOR(pg_catalog.=) r.outbox;
        END IF;
    END LOOP;
    ALTER TABLE courier.outboxes ENABLE TRIGGER outboxes_check;
END
$clamp_options$;

-- Direct writes to courier.outboxes: the relation must have the structure of an outbox (the
-- worker and courier.outbox_stats read it, the latter as whoever asks), and a registration stays
-- with its table.
CREATE OR REPLACE FUNCTION courier._outboxes_check() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    problem text;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.outbox IS DISTINCT FROM OLD.outbox THEN
        RAISE EXCEPTION 'the table of a registered outbox cannot be changed (from % to %)', OLD.outbox, NEW.outbox
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Register the other table with courier.adopt_outbox() and drop this registration.';
    END IF;
    IF TG_OP = 'INSERT' THEN
        problem := courier._outbox_shape_problem(NEW.outbox, false);
        IF problem IS NOT NULL THEN
            PERFORM courier._refuse_outbox(NEW.outbox, problem);
        END IF;
    END IF;
    -- The endpoint policy applies when an endpoint is set, not on every later UPDATE of its
    -- registration: an outbox whose endpoint a tightened policy now refuses can still be paused,
    -- resumed or re-optioned (its deliveries are refused at connect time).
    IF TG_OP = 'INSERT' OR NEW.endpoint IS DISTINCT FROM OLD.endpoint OR NEW.format IS DISTINCT FROM OLD.format THEN
        PERFORM courier._validate_endpoint(NEW.endpoint, NEW.format);
    END IF;
    PERFORM courier._validate_options(NEW.options, NEW.format);
    IF NEW.default_topic IS DISTINCT FROM NEW.options ->> 'topic' THEN
        NEW.default_topic := NEW.options ->> 'topic';
    END IF;
    RETURN NEW;
END
$$;

-- The one error for a relation that cannot be an outbox.
CREATE FUNCTION courier._refuse_outbox(outbox regclass, problem text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'relation % cannot be a pg_courier outbox: %', outbox, problem
        USING ERRCODE = 'wrong_object_type',
              HINT = 'Create outboxes with courier.create_outbox(), or register an ordinary table with the '
                     'outbox columns with courier.adopt_outbox() (see doc/outbox.md).';
END
$$;

-- The arguments create_outbox and adopt_outbox share.
CREATE FUNCTION courier._outbox_check_args(endpoint text, format text, options jsonb) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF endpoint IS NULL OR format IS NULL THEN
        RAISE EXCEPTION 'outbox name, endpoint and format must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF format NOT IN ('cloudevents', 'kafka_rest_v2', 'kafka_rest_v3') THEN
        RAISE EXCEPTION 'unknown outbox format "%"', format
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use ''cloudevents'', ''kafka_rest_v2'' or ''kafka_rest_v3''.';
    END IF;
    PERFORM courier._validate_endpoint(endpoint, format);
    PERFORM courier._validate_options(COALESCE(options, '{}'), format);
END
$$;

-- Equip a table with the outbox columns as an outbox and register it: the id sequence (ids go on
-- after the table's rows), the index of failed rows, pg_courier's triggers (each only if missing),
-- then the complete shape check and the registration.  Runs as the caller, who owns the table.
CREATE FUNCTION courier._outbox_attach(relid regclass, endpoint text, format text, options jsonb)
RETURNS regclass LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    nsp     text;
    rel     text;
    seq     text;
    ddl     text;
    problem text;
BEGIN
    SELECT n.nspname, c.relname INTO nsp, rel
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = relid;
    IF pg_get_serial_sequence(relid::text, 'id') IS NULL THEN
        seq := format('%I.%I', nsp, left(rel, 56) || '_id_seq');
        EXECUTE format('CREATE SEQUENCE %s OWNED BY %s.id', seq, relid);
        EXECUTE format('SELECT setval(%L, max(id)) FROM %s HAVING max(id) > 0', seq, relid);
    END IF;
    -- Rows that failed and the keys they block: small, so the worker's per-key check stays cheap.
    IF NOT EXISTS (SELECT 1 FROM pg_index i
                    WHERE i.indrelid = relid AND i.indpred IS NOT NULL AND i.indexprs IS NULL AND i.indnatts = 2
                      AND i.indkey[0] = (SELECT a.attnum FROM pg_attribute a WHERE a.attrelid = relid AND a.attname = 'key')
                      AND i.indkey[1] = (SELECT a.attnum FROM pg_attribute a WHERE a.attrelid = relid AND a.attname = 'id')) THEN
        EXECUTE format('CREATE INDEX ON %s (key, id) WHERE attempts > 0', relid);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger t
                    WHERE t.tgrelid = relid AND t.tgfoid = 'courier._outbox_before_insert()'::regprocedure) THEN
        EXECUTE format('CREATE TRIGGER courier_outbox_insert BEFORE INSERT ON %s
                        FOR EACH ROW EXECUTE FUNCTION courier._outbox_before_insert()', relid);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger t
                    WHERE t.tgrelid = relid AND t.tgfoid = 'courier._outbox_before_update()'::regprocedure) THEN
        EXECUTE format('CREATE TRIGGER courier_outbox_update BEFORE UPDATE ON %s
                        FOR EACH ROW EXECUTE FUNCTION courier._outbox_before_update()', relid);
    END IF;
    -- the defaults producers rely on (courier.send gives neither event_id nor created_at)
    SELECT string_agg(format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT %s', relid, d.col, d.expr), '; ') INTO ddl
      FROM (VALUES ('event_id', 'gen_random_uuid()'), ('created_at', 'now()'), ('attempts', '0')) d(col, expr)
      JOIN pg_attribute a ON a.attrelid = relid AND a.attname = d.col AND NOT a.atthasdef;
    IF ddl IS NOT NULL THEN
        EXECUTE ddl;
    END IF;
    -- (not the endpoint: comments are readable by everyone, endpoints may hold credentials)
    IF obj_description(relid, 'pg_class') IS NULL THEN
        EXECUTE format('COMMENT ON TABLE %s IS %L', relid, 'pg_courier outbox (see courier.outboxes)');
    END IF;
    problem := courier._outbox_shape_problem(relid, true);
    IF problem IS NOT NULL THEN
        PERFORM courier._refuse_outbox(relid, problem);
    END IF;

    -- the caller owns the table; the row-level security policy checks exactly that
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

CREATE OR REPLACE FUNCTION courier.create_outbox(outbox text, endpoint text, format text DEFAULT 'cloudevents',
                                                 options jsonb DEFAULT '{}')
RETURNS regclass LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ident  text[];
    nsp    text;
    rel    text;
    qname  text;
BEGIN
    IF outbox IS NULL THEN
        RAISE EXCEPTION 'outbox name, endpoint and format must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM courier._outbox_check_args(endpoint, format, options);

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
            USING ERRCODE = 'duplicate_table',
                  HINT = 'Choose another name, drop the existing table first, or register it with courier.adopt_outbox().';
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
    RETURN courier._outbox_attach(qname::regclass, endpoint, format, options);
END
$$;

-- Register an existing table that has the outbox columns (one restored on its own, or kept after
-- DROP EXTENSION pg_courier CASCADE): the same checks and the same equipment as create_outbox.
CREATE FUNCTION courier.adopt_outbox(outbox regclass, endpoint text, format text DEFAULT 'cloudevents',
                                     options jsonb DEFAULT '{}')
RETURNS regclass LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    problem text;
BEGIN
    IF outbox IS NULL THEN
        RAISE EXCEPTION 'outbox name, endpoint and format must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM courier._outbox_check_args(endpoint, format, options);
    IF pg_has_role(courier._table_owner(outbox), 'USAGE') IS NOT TRUE THEN
        RAISE EXCEPTION 'must be owner of table % to make it an outbox', outbox
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF EXISTS (SELECT 1 FROM courier.outboxes o WHERE o.outbox = adopt_outbox.outbox) THEN
        RAISE EXCEPTION 'table % is already an outbox', outbox
            USING ERRCODE = 'duplicate_object', HINT = 'Change its settings with courier.alter_outbox().';
    END IF;
    -- checked before the lock (only tables can be locked so) and again under it: no concurrent
    -- change of the table between the checks and the registration
    FOR i IN 1..2 LOOP
        problem := courier._outbox_shape_problem(outbox, false);
        IF problem IS NOT NULL THEN
            PERFORM courier._refuse_outbox(outbox, problem);
        END IF;
        EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', outbox);
    END LOOP;
    RETURN courier._outbox_attach(outbox, endpoint, format, options);
END
$$;

-- DROP TABLE (DROP SCHEMA ... CASCADE, DROP OWNED BY) of an outbox removes its registration; its
-- dead letters and retained delivered events stay as evidence, under the table's name (outbox_name)
-- instead of an OID a later table could inherit.  SECURITY DEFINER: the registration of a dropped
-- table is invisible through row-level security (its owner can no longer be looked up).  It acts
-- only on the OIDs PostgreSQL reports as dropped.
ALTER TABLE courier.dead_letters ALTER COLUMN outbox DROP NOT NULL, ADD COLUMN outbox_name text,
    ADD CONSTRAINT dead_letters_outbox_known CHECK (outbox IS NOT NULL OR outbox_name IS NOT NULL);
ALTER TABLE courier.delivered_events ALTER COLUMN outbox DROP NOT NULL, ADD COLUMN outbox_name text,
    ADD CONSTRAINT delivered_events_outbox_known CHECK (outbox IS NOT NULL OR outbox_name IS NOT NULL);
COMMENT ON COLUMN courier.dead_letters.outbox_name IS 'The outbox table''s name once it was dropped (outbox is NULL then)';
COMMENT ON COLUMN courier.delivered_events.outbox_name IS 'The outbox table''s name once it was dropped (outbox is NULL then)';

CREATE FUNCTION courier._outbox_dropped() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids   oid[];
    names jsonb;
BEGIN
    SELECT array_agg(d.objid), jsonb_object_agg(d.objid::text, d.object_identity) INTO ids, names
      FROM pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND d.object_type = 'table';
    -- (DROP EXTENSION pg_courier: our own tables are among the dropped ones)
    IF ids IS NULL OR to_regclass('courier.outboxes') IS NULL THEN
        RETURN;
    END IF;
    DELETE FROM courier.outboxes o WHERE o.outbox = ANY (ids::regclass[]);
    IF FOUND THEN
        PERFORM courier._wake_at_commit();
    END IF;
    UPDATE courier.dead_letters d SET outbox = NULL, outbox_name = names ->> d.outbox::oid::text
     WHERE d.outbox = ANY (ids::regclass[]);
    UPDATE courier.delivered_events d SET outbox = NULL, outbox_name = names ->> d.outbox::oid::text
     WHERE d.outbox = ANY (ids::regclass[]);
END
$$;
REVOKE ALL ON FUNCTION courier._outbox_dropped() FROM PUBLIC;
CREATE EVENT TRIGGER courier_outbox_dropped ON sql_drop EXECUTE FUNCTION courier._outbox_dropped();

-- Registrations left behind by tables dropped before 0.2.0, and the OIDs their evidence kept.
DELETE FROM courier.outboxes o
 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) o.outbox);
UPDATE courier.dead_letters d SET outbox = NULL, outbox_name = 'OID ' || d.outbox::oid || ' (dropped before pg_courier 0.2.0)'
 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) d.outbox);
UPDATE courier.delivered_events d SET outbox = NULL, outbox_name = 'OID ' || d.outbox::oid || ' (dropped before pg_courier 0.2.0)'
 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) d.outbox);
-- And pg_dump never writes a registration under a bare OID, should one exist (the event trigger
-- does not fire in single-user mode).
SELECT pg_catalog.pg_extension_config_dump('courier.outboxes',
    'WHERE outbox::pg_catalog.oid OPERATOR(pg_catalog.=) ANY (SELECT oid FROM pg_catalog.pg_class)');

------------------------------------------------------------------------------------------------------
-- Untrusted rows and broken outboxes: status in outbox_stats
------------------------------------------------------------------------------------------------------

-- A row that cannot be sent goes to the dead letters as it was, with a reason naming the column
-- ("payload is NULL"): its owner may have dropped any NOT NULL, so these columns take NULLs too.
-- Rows whose created_at is NULL are delivered (the CloudEvents time attribute is optional) and kept
-- with the option "retention".
ALTER TABLE courier.dead_letters
    ALTER COLUMN event_id DROP NOT NULL,
    ALTER COLUMN payload DROP NOT NULL,
    ALTER COLUMN created_at DROP NOT NULL;
ALTER TABLE courier.delivered_events
    ALTER COLUMN created_at DROP NOT NULL;

-- The worker's counters now carry each outbox's health: 'ok', 'broken' (its statements fail: events
-- wait; the reason says why) or 'degraded' (delivery works, its retention purge fails).
DROP VIEW courier.outbox_stats;
DROP FUNCTION courier._worker_counters();
CREATE FUNCTION courier._worker_counters(
    OUT outbox oid, OUT delivered bigint, OUT failed_attempts bigint, OUT retries bigint,
    OUT dead_lettered bigint, OUT requests bigint, OUT delivered_per_second double precision,
    OUT last_error text, OUT last_success_at timestamptz, OUT last_failure_at timestamptz,
    OUT status text, OUT status_reason text, OUT status_since timestamptz)
RETURNS SETOF record LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'courier_worker_counters';


------------------------------------------------------------------------------------------------------
-- Endpoints (SSRF policy) and shared-memory slots
------------------------------------------------------------------------------------------------------

-- The endpoint policy itself is in C (src/endpoint_policy.c): courier._validate_endpoint, which
-- create_outbox, alter_outbox and the courier.outboxes check already call, now refuses literal
-- non-public addresses and hosts outside courier.allowed_hosts; every connection is checked again.

-- Counter slots: the cluster has COURIER_MAX_OUTBOXES (1024) shared counter slots; a database gets
-- at most courier.max_outboxes_per_database of them, and may register no more outboxes than that.
CREATE FUNCTION courier._counter_slots_exhausted() RETURNS boolean
LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'courier_counter_slots_exhausted';

-- Runs as the extension's owner so that it counts every role's registrations (row-level security
-- shows each role its own only).  Concurrent creates may pass it together; the worker still never
-- gives a database more counter slots than the limit.
CREATE FUNCTION courier._outboxes_quota() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    max_outboxes int := current_setting('courier.max_outboxes_per_database', true)::int;
    n bigint;
BEGIN
    IF max_outboxes IS NULL THEN
        RETURN NEW;             -- pg_courier not loaded in this session: nothing to protect
    END IF;
    SELECT count(*) INTO n FROM courier.outboxes;
    IF n >= max_outboxes THEN
        RAISE EXCEPTION 'this database already has % outboxes, the most courier.max_outboxes_per_database allows', n
            USING ERRCODE = 'configuration_limit_exceeded',
                  HINT = 'Drop unused outboxes with courier.drop_outbox(), or ask a superuser to raise courier.max_outboxes_per_database.';
    END IF;
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION courier._outboxes_quota() FROM PUBLIC;
CREATE TRIGGER outboxes_quota BEFORE INSERT ON courier.outboxes
    FOR EACH ROW EXECUTE FUNCTION courier._outboxes_quota();

-- outbox_stats: an outbox that got no counter slot shows NULL counters and says why in "counters",
-- instead of zeros (an outbox the worker has not seen yet still shows zeros); status is NULL until
-- the worker has looked at the outbox (or when no worker runs).
CREATE VIEW courier.outbox_stats WITH (security_invoker = true) AS
SELECT o.outbox,
       courier._redact_url(o.endpoint)   AS endpoint,
       o.format,
       o.enabled,
       p.pending,
       now() - p.oldest_created_at      AS oldest_pending_age,
       CASE WHEN NOT x.unavailable THEN COALESCE(c.delivered, 0) END AS delivered,
       CASE WHEN NOT x.unavailable THEN COALESCE(c.delivered, 0) + COALESCE(c.failed_attempts, 0) END AS attempts,
       CASE WHEN NOT x.unavailable THEN COALESCE(c.failed_attempts, 0) END AS failed_attempts,
       CASE WHEN NOT x.unavailable THEN COALESCE(c.retries, 0) END AS retries,
       CASE WHEN NOT x.unavailable THEN COALESCE(c.dead_lettered, 0) END AS dead_lettered,
       (SELECT count(*) FROM courier.dead_letters d WHERE d.outbox = o.outbox) AS dead_letters,
       CASE WHEN NOT x.unavailable THEN COALESCE(c.requests, 0) END AS requests,
       CASE WHEN x.unavailable THEN NULL
            WHEN c.last_success_at > now() - interval '2 seconds' THEN round(c.delivered_per_second::numeric, 1)
            ELSE 0 END                  AS delivered_per_second,
       COALESCE(courier._breaker_state(courier._origin(o.endpoint)), 'closed') AS breaker_state,
       c.last_error,
       c.last_success_at,
       c.last_failure_at,
       CASE WHEN x.unavailable
            THEN 'unavailable: this database''s share of shared counter slots (courier.max_outboxes_per_database) '
                 || 'or the cluster''s 1024 slots are in use; the outbox is still delivered'
            ELSE 'available' END        AS counters,
       c.status,
       c.status_reason,
       c.status_since
  FROM courier.outboxes o               -- row-level security: the caller's outboxes only
  LEFT JOIN courier._worker_counters() c ON c.outbox = o.outbox::oid
  CROSS JOIN LATERAL (SELECT c.outbox IS NULL AND courier._counter_slots_exhausted() AS unavailable) x
  CROSS JOIN LATERAL courier._outbox_pending(o.outbox) p;
GRANT SELECT ON courier.outbox_stats TO PUBLIC;

-- metrics(): counters that are unavailable are left out (a Prometheus series is absent, not 0);
-- courier_outbox_broken says which outboxes are broken or degraded.
CREATE OR REPLACE FUNCTION courier.metrics() RETURNS text
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
        || E'# HELP courier_outbox_breaker_open 1 while the endpoint''s circuit breaker is open or half-open.\n# TYPE courier_outbox_breaker_open gauge\n'
        || E'# HELP courier_outbox_broken 1 while the outbox is broken (its events wait) or degraded (its maintenance fails); see courier.outbox_stats.status_reason.\n# TYPE courier_outbox_broken gauge\n';
    FOR r IN SELECT * FROM courier.outbox_stats LOOP
        lbl := format('{database="%s",outbox="%s"}',
                      replace(replace(replace(current_database(), '\', '\\'), '"', '\"'), E'\n', '\n'),
                      replace(replace(replace(r.outbox::text, '\', '\\'), '"', '\"'), E'\n', '\n'));
        out := out
            || 'courier_outbox_pending' || lbl || ' ' || COALESCE(r.pending, 0) || E'\n'
            || 'courier_outbox_oldest_pending_seconds' || lbl || ' '
                || COALESCE(round(extract(epoch FROM r.oldest_pending_age)::numeric, 3), 0) || E'\n';
        IF r.delivered IS NOT NULL THEN
            out := out
                || 'courier_outbox_delivered_total' || lbl || ' ' || r.delivered || E'\n'
                || 'courier_outbox_failed_attempts_total' || lbl || ' ' || r.failed_attempts || E'\n'
                || 'courier_outbox_dead_lettered_total' || lbl || ' ' || r.dead_lettered || E'\n'
                || 'courier_outbox_requests_total' || lbl || ' ' || r.requests || E'\n';
        END IF;
        out := out
            || 'courier_outbox_breaker_open' || lbl || ' ' || (r.breaker_state IN ('open', 'half-open'))::int || E'\n'
            || 'courier_outbox_broken' || lbl || ' ' || COALESCE(r.status IN ('broken', 'degraded'), false)::int || E'\n';
    END LOOP;
    out := out || E'# HELP courier_worker_up 1 while the database''s delivery worker runs.\n# TYPE courier_worker_up gauge\n'
        || format(E'courier_worker_up{database="%s"} %s\n',
                  replace(replace(current_database(), '\', '\\'), '"', '\"'),
                  (EXISTS (SELECT 1 FROM courier.worker_status() w WHERE w.database = current_database()))::int);
    RETURN out;
END
$$;

------------------------------------------------------------------------------------------------------
-- (Issue 14: dump, restore, drop, upgrade) NULL outbox arguments are refused as NULL (22004)
------------------------------------------------------------------------------------------------------

-- drop_outbox(NULL), alter_outbox(NULL) (and so pause(NULL), resume(NULL)) said "table <NULL> is not
-- an outbox" (42704): a NULL is a caller's mistake of another kind.
CREATE OR REPLACE FUNCTION courier.drop_outbox(outbox regclass)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF outbox IS NULL THEN
        RAISE EXCEPTION 'outbox must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    DELETE FROM courier.outboxes o WHERE o.outbox = drop_outbox.outbox;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not an outbox', outbox
            USING ERRCODE = 'undefined_object', HINT = 'See courier.outboxes for the registered outboxes.';
    END IF;
    -- DROP TABLE checks ownership itself
    EXECUTE format('DROP TABLE %s', outbox);
END
$$;

CREATE OR REPLACE FUNCTION courier.alter_outbox(outbox regclass, endpoint text DEFAULT NULL, options jsonb DEFAULT NULL,
                                                enabled boolean DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r courier.outboxes;
BEGIN
    IF outbox IS NULL THEN
        RAISE EXCEPTION 'outbox must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
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

-- cache_invalidate_off(NULL) answered 0 (nothing turned off) instead of refusing the NULL.
CREATE OR REPLACE FUNCTION courier.cache_invalidate_off(tbl regclass, key_template text DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t       record;
    n       integer := 0;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table must not be NULL' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'Name the table whose invalidation triggers to remove; a NULL key template removes all of them.';
    END IF;
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

------------------------------------------------------------------------------------------------------
-- Issue 12: Kafka REST as the real proxies speak it (v2's embedded formats, v3 records:batch), webhooks
-- as the CloudEvents SDKs and Standard Webhooks receivers expect them.  (Their option checks,
-- _validate_kafka_options and _validate_webhook_options, are called by _validate_options above.)
------------------------------------------------------------------------------------------------------

-- The new format.
ALTER TABLE courier.outboxes DROP CONSTRAINT outboxes_format_check;
ALTER TABLE courier.outboxes ADD CONSTRAINT outboxes_format_check
    CHECK (format IN ('cloudevents', 'kafka_rest_v2', 'kafka_rest_v3'));

------------------------------------------------------------------------------------------------------
-- Tenancy: key spaces belong to roles; least privilege for saga types and breakers (issue 14, part
-- "key spaces and least privilege"; see doc/security.md#tenancy)
------------------------------------------------------------------------------------------------------

-- The role whose idempotency keys, consume_once markers and cache entries a call uses: the current
-- role, or the role the setting courier.key_space names when the current role is a member of it
-- (src/key_space.c).
CREATE FUNCTION courier.key_space() RETURNS regrole
LANGUAGE C STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'courier_key_space_current';
COMMENT ON FUNCTION courier.key_space() IS
    'The role owning the idempotency keys, consume_once markers and cache entries this session uses';

-- Idempotency keys: the key space is the first column of the primary key.  Keys stored by 0.1.0 have
-- no known writer: they go to the extension's owner (a superuser), so that no role replays another's
-- answer; retries of requests begun before the upgrade start afresh (or an operator who knows the
-- writer gives them back: UPDATE courier.idempotency_keys SET owner = 'app' WHERE ...).
ALTER TABLE courier.idempotency_keys ADD COLUMN owner regrole;
UPDATE courier.idempotency_keys
   SET owner = (SELECT e.extowner FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'pg_courier');
ALTER TABLE courier.idempotency_keys ALTER COLUMN owner SET NOT NULL;
ALTER TABLE courier.idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE courier.idempotency_keys ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (owner, scope, key);

-- The key functions act as the keys table's owner from C (src/idempotency.c) after taking the
-- caller's key space: a SECURITY DEFINER function could not see who calls it.
ALTER FUNCTION courier.idempotency_begin(text, text, text, interval, interval) SECURITY INVOKER;
ALTER FUNCTION courier.idempotency_complete(text, integer, jsonb, text, uuid) SECURITY INVOKER;
ALTER FUNCTION courier.idempotency_abandon(text, text, uuid) SECURITY INVOKER;
ALTER FUNCTION courier.idempotency_extend(text, interval, text, uuid) SECURITY INVOKER;

-- consume_once markers: per key space, under row-level security (members of a role see and write
-- its markers).  Markers stored by 0.1.0 go to the extension's owner, as keys do.
ALTER TABLE courier.consumed_events ADD COLUMN owner regrole;
UPDATE courier.consumed_events
   SET owner = (SELECT e.extowner FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'pg_courier');
ALTER TABLE courier.consumed_events ALTER COLUMN owner SET NOT NULL,
                                    ALTER COLUMN owner SET DEFAULT courier.key_space();
ALTER TABLE courier.consumed_events DROP CONSTRAINT consumed_events_pkey;
ALTER TABLE courier.consumed_events ADD CONSTRAINT consumed_events_pkey PRIMARY KEY (owner, consumer, event_id);
ALTER TABLE courier.consumed_events ENABLE ROW LEVEL SECURITY;
-- (owner 0 is the shared key space of courier.key_spaces = off, which a superuser chose.)
CREATE POLICY consumed_events_key_space ON courier.consumed_events
    USING (owner::pg_catalog.oid OPERATOR(pg_catalog.=) 0 OR pg_catalog.pg_has_role(owner, 'MEMBER'))
    WITH CHECK (owner OPERATOR(pg_catalog.=) courier.key_space());
GRANT SELECT, INSERT, DELETE ON courier.consumed_events TO PUBLIC;

-- Runs as the caller now (the policy above needs to know who that is).
CREATE OR REPLACE FUNCTION courier.consume_once(consumer text, event_id uuid)
RETURNS boolean LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF consumer IS NULL OR consumer = '' THEN
        RAISE EXCEPTION 'consumer name must not be NULL or empty'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'Name the consumer, e.g. ''billing''.';
    END IF;
    IF event_id IS NULL THEN
        RAISE EXCEPTION 'event_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'Pass the event''s id (the CloudEvents id).';
    END IF;
    INSERT INTO courier.consumed_events AS c (owner, consumer, event_id)
    VALUES (courier.key_space(), consume_once.consumer, consume_once.event_id)
    ON CONFLICT DO NOTHING;
    RETURN FOUND;
END
$$;

-- Saga types: each role sees the types it may use (the saga functions read the table as its owner).
ALTER TABLE courier.saga_types ENABLE ROW LEVEL SECURITY;
CREATE POLICY saga_types_owner ON courier.saga_types FOR SELECT
    USING (pg_catalog.pg_has_role(owner, 'USAGE'));
GRANT SELECT ON courier.saga_types TO PUBLIC;   -- (as in 0.1.0; rows now filtered)
