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
