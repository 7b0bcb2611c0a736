/* pg_courier--0.1.0--0.2.0.sql — upgrade script: hardening (hostile owners, hostile rows, endpoints) */

\echo Use "ALTER EXTENSION pg_courier UPDATE TO '0.2.0'" to load this file. \quit

-- A fresh CREATE EXTENSION runs pg_courier--0.1.0.sql and then this script (PostgreSQL chains them),
-- so a fresh install and an upgraded one are the same by construction.

------------------------------------------------------------------------------------------------------
-- Identity: owner code runs as its owner, restricted; readers never run another role's code
------------------------------------------------------------------------------------------------------

------------------------------------------------------------------------------------------------------
-- Registration: only real outbox tables; bounded options; DROP TABLE unregisters
------------------------------------------------------------------------------------------------------

------------------------------------------------------------------------------------------------------
-- Untrusted rows and broken outboxes: status in outbox_stats
------------------------------------------------------------------------------------------------------

------------------------------------------------------------------------------------------------------
-- Endpoints (SSRF policy) and shared-memory slots
------------------------------------------------------------------------------------------------------

-- The endpoint policy itself is in C (src/endpoint_policy.c): courier._validate_endpoint, which
-- create_outbox, alter_outbox and the courier.outboxes check already call, now refuses literal
-- non-public addresses and hosts outside courier.allowed_hosts; every connection is checked again.

-- The policy applies when an endpoint is set, not on every later UPDATE of its registration: an
-- outbox whose endpoint a tightened policy now refuses can still be paused, resumed or re-optioned
-- (its deliveries are refused at connect time).  MERGE NOTE: same body as 0.1.0 except the guard on
-- _validate_endpoint; combine with the Registration section's version of this function.
CREATE OR REPLACE FUNCTION courier._outboxes_check() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
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
-- instead of zeros.  (An outbox the worker has not seen yet still shows zeros.)
CREATE OR REPLACE VIEW courier.outbox_stats WITH (security_invoker = true) AS
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
            ELSE 'available' END        AS counters
  FROM courier.outboxes o               -- row-level security: the caller's outboxes only
  LEFT JOIN courier._worker_counters() c ON c.outbox = o.outbox::oid
  CROSS JOIN LATERAL (SELECT c.outbox IS NULL AND courier._counter_slots_exhausted() AS unavailable) x
  CROSS JOIN LATERAL courier._outbox_pending(o.outbox) p;

-- metrics(): counters that are unavailable are left out (a Prometheus series is absent, not 0).
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
        || E'# HELP courier_outbox_breaker_open 1 while the endpoint''s circuit breaker is open or half-open.\n# TYPE courier_outbox_breaker_open gauge\n';
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
            || 'courier_outbox_breaker_open' || lbl || ' ' || (r.breaker_state IN ('open', 'half-open'))::int || E'\n';
    END LOOP;
    out := out || E'# HELP courier_worker_up 1 while the database''s delivery worker runs.\n# TYPE courier_worker_up gauge\n'
        || format(E'courier_worker_up{database="%s"} %s\n',
                  replace(replace(current_database(), '\', '\\'), '"', '\"'),
                  (EXISTS (SELECT 1 FROM courier.worker_status() w WHERE w.database = current_database()))::int);
    RETURN out;
END
$$;
