/* pg_courier--0.1.0--0.2.0.sql — upgrade script: hardening (hostile owners, hostile rows, endpoints) */

\echo Use "ALTER EXTENSION pg_courier UPDATE TO '0.2.0'" to load this file. \quit

-- A fresh CREATE EXTENSION runs pg_courier--0.1.0.sql and then this script (PostgreSQL chains them),
-- so a fresh install and an upgraded one are the same by construction.

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

------------------------------------------------------------------------------------------------------
-- Untrusted rows and broken outboxes: status in outbox_stats
------------------------------------------------------------------------------------------------------

------------------------------------------------------------------------------------------------------
-- Endpoints (SSRF policy) and shared-memory slots
------------------------------------------------------------------------------------------------------
