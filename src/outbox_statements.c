/*-------------------------------------------------------------------------
 *
 * outbox_statements.c
 *	  The statements the worker runs against an outbox: three reads (fresh
 *	  rows from the cursor, due retries, parked rows by id) and three
 *	  writes (delete acknowledged rows, record a failure, move to the dead
 *	  letters).  Prepared once per outbox and kept.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "utils/memutils.h"

#include "pg_courier.h"
#include "outbox_worker.h"

/*
 * append_select
 *		What every read returns: the row, and whether an earlier row of its
 *		key failed and still waits (or, with on_dead_letter = 'block', went to
 *		the dead letters): such a row must wait behind it.
 */
static void
append_select(StringInfo sql, const OutboxState *ob, const char *topic_param)
{
	appendStringInfo(sql,
					 "SELECT o.id, o.event_id::text, COALESCE(o.topic, %s), o.key, o.payload::text, "
					 "  CASE WHEN o.headers IS NOT NULL THEN "
					 "    (SELECT string_agg(h.k || ': ' || h.v, E'\\n') FROM jsonb_each_text(o.headers) h(k, v) "
					 "      WHERE h.k ~ '^[!#$%%&''*+.^_`|~0-9A-Za-z-]+$' AND h.v !~ '[\\r\\n]' "
					 "        AND lower(h.k) NOT IN ('content-type', 'content-length', 'host', 'idempotency-key', "
					 "                               'transfer-encoding', 'connection', 'expect')) END, "
					 "  to_char(o.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), o.attempts, "
					 "  o.key IS NOT NULL AND (EXISTS (SELECT 1 FROM %s f "
					 "       WHERE f.attempts > 0 AND f.key = o.key AND f.id < o.id)",
					 topic_param, ob->qname);
	if (ob->block_on_dead)
		appendStringInfo(sql,
						 " OR EXISTS (SELECT 1 FROM courier.dead_letters d "
						 "       WHERE d.blocking AND d.outbox = %u::oid::regclass AND d.key = o.key)",
						 ob->relid);
	appendStringInfo(sql, ") FROM %s o ", ob->qname);
}

/*
 * courier_make_plans
 *		Prepare the statements the worker runs against one outbox.
 */
void
courier_make_plans(OutboxState *ob)
{
	StringInfoData sql;
	Oid			fetch_types[3] = {INT8OID, INT4OID, TEXTOID};
	Oid			ids_types[2] = {INT8ARRAYOID, TEXTOID};
	Oid			delete_types[1] = {INT8ARRAYOID};
	Oid			fail_types[6] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, INT8ARRAYOID, FLOAT8OID, FLOAT8OID};
	Oid			dead_types[5] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, REGCLASSOID, BOOLOID};
	MemoryContext old = MemoryContextSwitchTo(ob->cxt);

#define READY "(o.attempts = 0 OR o.next_attempt_at IS NULL OR o.next_attempt_at <= clock_timestamp())"
	/* fresh rows, from the cursor on */
	initStringInfo(&sql);
	append_select(&sql, ob, "$3");
	appendStringInfoString(&sql, "WHERE o.id > $1 AND " READY " ORDER BY o.id LIMIT $2");
	ob->fetch_plan = SPI_prepare(sql.data, 3, fetch_types);
	/* failed rows whose retry is due (through the small partial index on failed rows) */
	resetStringInfo(&sql);
	append_select(&sql, ob, "$3");
	appendStringInfoString(&sql, "WHERE o.attempts > 0 AND o.next_attempt_at <= clock_timestamp() "
						   "AND o.id > $1 ORDER BY o.id LIMIT $2");
	ob->retry_plan = SPI_prepare(sql.data, 3, fetch_types);
	/* parked rows, by id */
	resetStringInfo(&sql);
	append_select(&sql, ob, "$2");
	appendStringInfoString(&sql, "WHERE o.id = ANY($1) AND " READY " ORDER BY o.id");
	ob->ids_plan = SPI_prepare(sql.data, 2, ids_types);
	ob->plans_block = ob->block_on_dead;
	/* the next failed row to come due (rows already due are being retried) */
	resetStringInfo(&sql);
	appendStringInfo(&sql, "SELECT min(next_attempt_at) FROM %s WHERE attempts > 0 "
					 "AND next_attempt_at > clock_timestamp()", ob->qname);
	ob->next_retry_plan = SPI_prepare(sql.data, 0, NULL);

	/* acknowledged rows: deleted, or kept in courier.delivered_events (option "retention") */
	resetStringInfo(&sql);
	if (ob->retain)
		appendStringInfo(&sql,
						 "WITH d AS (DELETE FROM %s WHERE id = ANY($1) RETURNING *) "
						 "INSERT INTO courier.delivered_events (outbox, outbox_id, event_id, topic, key, payload, "
						 "  headers, created_at, attempts) "
						 "SELECT %u::oid::regclass, id, event_id, topic, key, payload, headers, created_at, attempts + 1 FROM d",
						 ob->qname, ob->relid);
	else
		appendStringInfo(&sql, "DELETE FROM %s WHERE id = ANY($1)", ob->qname);
	ob->delete_plan = SPI_prepare(sql.data, 1, delete_types);
	ob->plans_retain = ob->retain;

	/* full-jitter exponential backoff ($5 base, $6 cap), never below the endpoint's Retry-After */
	resetStringInfo(&sql);
	appendStringInfo(&sql,
					 "WITH u AS (UPDATE %s o SET attempts = o.attempts + 1, last_status = NULLIF(d.status, 0), "
					 "    last_error = d.err, first_failed_at = COALESCE(o.first_failed_at, clock_timestamp()), "
					 "    next_attempt_at = clock_timestamp() + make_interval(secs => greatest(d.retry_after_ms, "
					 "        random() * least($6, $5 * power(2, least(o.attempts, 30)))) / 1000.0) "
					 "  FROM unnest($1, $2, $3, $4) AS d(id, status, err, retry_after_ms) "
					 "  WHERE o.id = d.id RETURNING o.next_attempt_at) "
					 "SELECT min(next_attempt_at) FROM u",
					 ob->qname);
	ob->fail_plan = SPI_prepare(sql.data, 6, fail_types);

	/* permanent failures and exhausted attempts: one place for operators to look */
	resetStringInfo(&sql);
	appendStringInfo(&sql,
					 "WITH moved AS (DELETE FROM %s o USING unnest($1, $2, $3) AS d(id, status, err) "
					 "  WHERE o.id = d.id RETURNING o.*, d.status AS d_status, d.err AS d_err) "
					 "INSERT INTO courier.dead_letters (outbox, owner, outbox_id, event_id, topic, key, payload, headers, "
					 "  created_at, attempts, first_failed_at, last_failed_at, last_status, last_error, blocking) "
					 "SELECT $4, (SELECT x.owner FROM courier.outboxes x WHERE x.outbox = $4), id, event_id, topic, key, "
					 "  payload, headers, created_at, attempts + 1, COALESCE(first_failed_at, clock_timestamp()), "
					 "  clock_timestamp(), NULLIF(d_status, 0), d_err, $5 AND key IS NOT NULL FROM moved",
					 ob->qname);
	ob->dead_plan = SPI_prepare(sql.data, 5, dead_types);
	MemoryContextSwitchTo(old);

	if (!ob->fetch_plan || !ob->retry_plan || !ob->ids_plan || !ob->next_retry_plan || !ob->delete_plan || !ob->fail_plan || !ob->dead_plan)
		elog(ERROR, "pg_courier: could not prepare statements for outbox %s: %s",
			 ob->qname, SPI_result_code_string(SPI_result));
	SPI_keepplan(ob->fetch_plan);
	SPI_keepplan(ob->retry_plan);
	SPI_keepplan(ob->ids_plan);
	SPI_keepplan(ob->next_retry_plan);
	SPI_keepplan(ob->delete_plan);
	SPI_keepplan(ob->fail_plan);
	SPI_keepplan(ob->dead_plan);
}

/*
 * courier_free_plans
 *		Drop an outbox's prepared statements (they are made again when
 *		needed: after a rename, an error, a change of mode).
 */
void
courier_free_plans(OutboxState *ob)
{
	SPIPlanPtr *plans[] = {&ob->fetch_plan, &ob->retry_plan, &ob->ids_plan, &ob->next_retry_plan,
	&ob->delete_plan, &ob->fail_plan, &ob->dead_plan};

	for (int i = 0; i < lengthof(plans); i++)
	{
		if (*plans[i])
			SPI_freeplan(*plans[i]);
		*plans[i] = NULL;
	}
}

