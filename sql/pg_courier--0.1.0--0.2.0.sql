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

-- status is NULL until the worker has looked at the outbox (or when no worker runs).
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
       c.last_failure_at,
       c.status,
       c.status_reason,
       c.status_since
  FROM courier.outboxes o               -- row-level security: the caller's outboxes only
  LEFT JOIN courier._worker_counters() c ON c.outbox = o.outbox::oid
  CROSS JOIN LATERAL courier._outbox_pending(o.outbox) p;
GRANT SELECT ON courier.outbox_stats TO PUBLIC;

-- metrics(): as in 0.1.0, plus courier_outbox_broken.
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
                || COALESCE(round(extract(epoch FROM r.oldest_pending_age)::numeric, 3), 0) || E'\n'
            || 'courier_outbox_delivered_total' || lbl || ' ' || r.delivered || E'\n'
            || 'courier_outbox_failed_attempts_total' || lbl || ' ' || r.failed_attempts || E'\n'
            || 'courier_outbox_dead_lettered_total' || lbl || ' ' || r.dead_lettered || E'\n'
            || 'courier_outbox_requests_total' || lbl || ' ' || r.requests || E'\n'
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
-- Endpoints (SSRF policy) and shared-memory slots
------------------------------------------------------------------------------------------------------
