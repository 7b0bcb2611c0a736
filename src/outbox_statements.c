/*-------------------------------------------------------------------------
 *
 * outbox_statements.c
 *	  The statements the worker runs against an outbox: three reads (fresh
 *	  rows from the cursor, due retries, parked rows by id; the first and
 *	  the last also in a variant for an outbox without failed rows), two
 *	  looks at its failed rows (any at all, the next due) and four writes
 *	  (delete acknowledged rows, record a failure, move to the dead letters,
 *	  move rows without an id to the dead letters).  Prepared once per
 *	  outbox and kept.  Also the retention purge of courier.delivered_events,
 *	  one statement per outbox.
 *
 * Trust.  The worker is a superuser; the outbox and everything attached to
 * it belong to another role, who can also create schemas, functions and
 * operators.  So the SQL here resolves nothing through search_path: every
 * function is pg_catalog-qualified, every operator is written
 * OPERATOR(pg_catalog.x) (these share one precedence, left to right, so
 * mixed expressions are parenthesised), every cast names a pg_catalog type,
 * and constructs that look an operator up by name (IN, NOT IN, NULLIF,
 * IS DISTINCT FROM) are not used; ORDER BY uses the type's default btree
 * ordering, found through the type, not the path.  Extension tables are
 * named through courier_qualified() (the schema found from the extension).
 *
 * Rows are untrusted too: the owner may have dropped any NOT NULL, CHECK or
 * default, so every value read may be NULL, infinite or out of range.  The
 * writes clamp what they compute (attempts + 1 cannot overflow) and the
 * reads return what courier_decode_row() (outbox_format.c) needs to judge
 * each row; courier_check_row_shape() refuses a result whose column types
 * were changed under us (the plan is re-made after ALTER TABLE, with the
 * new types).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "pg_courier.h"
#include "outbox_worker.h"
#include "owner_exec.h"

/* Delivered events purged per statement (the next purge comes soon when it was full). */
#define PURGE_BATCH 10000

/* attempts of a row, as a count that adding one to cannot overflow */
#define SAFE_ATTEMPTS(col) \
	"LEAST(GREATEST(COALESCE(" col ", 0), 0), 2147483646)"

/*
 * append_select
 *		What every read returns, in the column order courier_decode_row()
 *		expects: the row's values (headers as filtered "Name: value" lines,
 *		and whether they are an object at all), and whether an earlier row
 *		of its key failed and still waits (or, with on_dead_letter = 'block',
 *		went to the dead letters): such a row must wait behind it.  Without
 *		failed_rows, the read is for a snapshot in which no row has failed
 *		(the worker checked, see courier_has_failed_rows): it saves a look
 *		into the index of failed rows per row.
 */
static void
append_select(StringInfo sql, const OutboxState *ob, const char *topic_param, bool failed_rows)
{
	appendStringInfo(sql,
					 "SELECT o.id, o.event_id, COALESCE(o.topic::pg_catalog.text, %s), o.key, o.payload, "
					 "  CASE WHEN pg_catalog.jsonb_typeof(o.headers) OPERATOR(pg_catalog.=) 'object' THEN "
					 "    (SELECT pg_catalog.string_agg(h.k OPERATOR(pg_catalog.||) ': ' OPERATOR(pg_catalog.||) h.v, "
					 "                                  pg_catalog.chr(10)) "
					 "       FROM pg_catalog.jsonb_each_text(o.headers) h(k, v) "
					 "      WHERE h.k OPERATOR(pg_catalog.~) '^[!#$%%&''*+.^_`|~0-9A-Za-z-]+$' "
					 "        AND NOT (h.v OPERATOR(pg_catalog.~) '[[:cntrl:]]') "
					 "        AND NOT (pg_catalog.lower(h.k) OPERATOR(pg_catalog.=) ANY ("
					 "              '{content-type,content-length,host,idempotency-key,transfer-encoding,"
					 "                connection,expect,user-agent}'::pg_catalog.text[])) "
					 /* (CloudEvents attributes come from the body; signatures are ours) */
					 "        AND NOT (pg_catalog.lower(h.k) OPERATOR(pg_catalog.~) '^(ce|webhook)-')) END, "
					 "  o.created_at, o.attempts, o.key IS NOT NULL AND (",
					 topic_param);
	if (failed_rows)
		appendStringInfo(sql,
						 "EXISTS (SELECT 1 FROM %s f "
						 "       WHERE f.attempts OPERATOR(pg_catalog.>) 0 AND f.key OPERATOR(pg_catalog.=) o.key "
						 "         AND f.id OPERATOR(pg_catalog.<) o.id)",
						 ob->qname);
	else
		appendStringInfoString(sql, "false");
	if (ob->block_on_dead)
		appendStringInfo(sql,
						 " OR EXISTS (SELECT 1 FROM %s d "
						 "       WHERE d.blocking AND d.outbox OPERATOR(pg_catalog.=) %u::pg_catalog.oid "
						 "         AND d.key OPERATOR(pg_catalog.=) o.key)",
						 courier_qualified("dead_letters"), ob->relid);
	appendStringInfo(sql,
					 "), o.headers IS NULL OR pg_catalog.jsonb_typeof(o.headers) OPERATOR(pg_catalog.=) ANY "
					 "     ('{object,\"null\"}'::pg_catalog.text[]) "
					 "FROM %s o ",
					 ob->qname);
}

/*
 * A row is ready to be sent when it never failed, or its retry is due.  A
 * retry time that is NULL or not finite was not set by us: due now.
 */
#define READY "(o.attempts IS NULL OR o.attempts OPERATOR(pg_catalog.<=) 0 OR o.next_attempt_at IS NULL " \
	"OR o.next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp() " \
	"OR NOT pg_catalog.isfinite(o.next_attempt_at))"

/*
 * make_reads
 *		The three reads and the look-up of the next retry time.
 */
static void
make_reads(OutboxState *ob, StringInfo sql)
{
	Oid			fetch_types[3] = {INT8OID, INT4OID, TEXTOID};
	Oid			ids_types[2] = {INT8ARRAYOID, TEXTOID};

	for (int failed = 0; failed <= 1; failed++)
	{
		/* fresh rows, from the cursor on */
		resetStringInfo(sql);
		append_select(sql, ob, "$3", failed);
		appendStringInfoString(sql, "WHERE o.id OPERATOR(pg_catalog.>) $1 AND " READY " ORDER BY o.id LIMIT $2");
		ob->fetch_plans[failed] = SPI_prepare(sql->data, 3, fetch_types);
		/* parked rows, by id */
		resetStringInfo(sql);
		append_select(sql, ob, "$2", failed);
		appendStringInfoString(sql, "WHERE o.id OPERATOR(pg_catalog.=) ANY ($1) AND " READY " ORDER BY o.id");
		ob->ids_plans[failed] = SPI_prepare(sql->data, 2, ids_types);
	}
	/* failed rows whose retry is due (through the small partial index on failed rows) */
	resetStringInfo(sql);
	append_select(sql, ob, "$3", true);
	appendStringInfoString(sql, "WHERE o.attempts OPERATOR(pg_catalog.>) 0 "
						   "AND (o.next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp() "
						   "     OR NOT pg_catalog.isfinite(o.next_attempt_at)) "
						   "AND o.id OPERATOR(pg_catalog.>) $1 ORDER BY o.id LIMIT $2");
	ob->retry_plan = SPI_prepare(sql->data, 3, fetch_types);
	ob->plans_block = ob->block_on_dead;
	/* is there a failed row at all? */
	resetStringInfo(sql);
	appendStringInfo(sql, "SELECT 1 FROM %s o WHERE o.attempts OPERATOR(pg_catalog.>) 0 LIMIT 1", ob->qname);
	ob->failed_plan = SPI_prepare(sql->data, 0, NULL);
	/* the next failed row to come due (rows already due are being retried) */
	resetStringInfo(sql);
	appendStringInfo(sql, "SELECT pg_catalog.min(o.next_attempt_at) FROM %s o "
					 "WHERE o.attempts OPERATOR(pg_catalog.>) 0 "
					 "AND o.next_attempt_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp() "
					 "AND pg_catalog.isfinite(o.next_attempt_at)", ob->qname);
	ob->next_retry_plan = SPI_prepare(sql->data, 0, NULL);
}

/*
 * courier_has_failed_rows
 *		Does the outbox hold a row that failed (attempts > 0), in the
 *		round's snapshot?  When not, the reads of this round may use the
 *		plans that do not look for earlier failed rows of each row's key.
 *		(One probe of the small partial index on failed rows.)
 */
bool
courier_has_failed_rows(OutboxState *ob)
{
	if (courier_owner_execute_plan(ob->owner, ob->failed_plan, NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "pg_courier: could not read outbox %s", ob->qname);
	return SPI_processed > 0;
}

/*
 * append_dead_letter_insert
 *		INSERT INTO dead_letters from the CTE "moved" (columns of the outbox
 *		row plus d_status, d_err, d_blocking); $outbox_param is the outbox.
 */
static void
append_dead_letter_insert(StringInfo sql, const char *outbox_param)
{
	appendStringInfo(sql,
					 "INSERT INTO %s (outbox, owner, outbox_id, event_id, topic, key, payload, headers, "
					 "  created_at, attempts, first_failed_at, last_failed_at, last_status, last_error, blocking) "
					 "SELECT %s, (SELECT c.relowner::pg_catalog.regrole FROM pg_catalog.pg_class c "
					 "             WHERE c.oid OPERATOR(pg_catalog.=) %s), "
					 "  m.id, m.event_id, m.topic, m.key, m.payload, m.headers, m.created_at, "
					 "  " SAFE_ATTEMPTS("m.attempts") " OPERATOR(pg_catalog.+) 1, "
					 "  COALESCE(m.first_failed_at, pg_catalog.clock_timestamp()), pg_catalog.clock_timestamp(), "
					 "  CASE WHEN m.d_status OPERATOR(pg_catalog.=) 0 THEN NULL ELSE m.d_status END, m.d_err, "
					 "  m.d_blocking AND m.key IS NOT NULL FROM moved m",
					 courier_qualified("dead_letters"), outbox_param, outbox_param);
}

/*
 * make_writes
 *		The four writes: delete (or keep) acknowledged rows, record a
 *		failure, move rows to the dead letters by id, and move rows whose id
 *		is NULL or not positive (they have no place in the order, and the
 *		reads, which start above id 0, never meet them).
 */
static void
make_writes(OutboxState *ob, StringInfo sql)
{
	Oid			delete_types[1] = {INT8ARRAYOID};
	Oid			fail_types[6] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, INT8ARRAYOID, FLOAT8OID, FLOAT8OID};
	Oid			dead_types[5] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, REGCLASSOID, BOOLOID};
	Oid			null_id_types[1] = {REGCLASSOID};

	/* acknowledged rows: deleted, or kept in courier.delivered_events (option "retention") */
	resetStringInfo(sql);
	if (ob->retain)
		appendStringInfo(sql,
						 "WITH d AS (DELETE FROM %s o WHERE o.id OPERATOR(pg_catalog.=) ANY ($1) "
						 "  RETURNING o.id, o.event_id, o.topic, o.key, o.payload, o.headers, o.created_at, o.attempts) "
						 "INSERT INTO %s (outbox, outbox_id, event_id, topic, key, payload, "
						 "  headers, created_at, attempts) "
						 "SELECT %u::pg_catalog.oid::pg_catalog.regclass, d.id, d.event_id, d.topic, d.key, d.payload, "
						 "  d.headers, d.created_at, " SAFE_ATTEMPTS("d.attempts") " OPERATOR(pg_catalog.+) 1 FROM d",
						 ob->qname, courier_qualified("delivered_events"), ob->relid);
	else
		appendStringInfo(sql, "DELETE FROM %s o WHERE o.id OPERATOR(pg_catalog.=) ANY ($1)", ob->qname);
	ob->delete_plan = SPI_prepare(sql->data, 1, delete_types);
	ob->plans_retain = ob->retain;

	/*
	 * Full-jitter exponential backoff ($5 base, $6 cap), never below the
	 * endpoint's Retry-After (itself capped at a day).
	 */
	resetStringInfo(sql);
	appendStringInfo(sql,
					 "WITH u AS (UPDATE %s o SET attempts = " SAFE_ATTEMPTS("o.attempts") " OPERATOR(pg_catalog.+) 1, "
					 "    last_status = CASE WHEN d.status OPERATOR(pg_catalog.=) 0 THEN NULL ELSE d.status END, "
					 "    last_error = d.err, first_failed_at = COALESCE(o.first_failed_at, pg_catalog.clock_timestamp()), "
					 "    next_attempt_at = pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => "
					 "        GREATEST(LEAST(d.retry_after_ms, 86400000), pg_catalog.random() OPERATOR(pg_catalog.*) "
					 "          LEAST($6, $5 OPERATOR(pg_catalog.*) pg_catalog.power(2, LEAST(" SAFE_ATTEMPTS("o.attempts") ", 30)))) "
					 "        OPERATOR(pg_catalog./) 1000.0) "
					 "  FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), "
					 "                  pg_catalog.unnest($4)) AS d(id, status, err, retry_after_ms) "
					 "  WHERE o.id OPERATOR(pg_catalog.=) d.id RETURNING o.next_attempt_at) "
					 "SELECT pg_catalog.min(u.next_attempt_at) FROM u",
					 ob->qname);
	ob->fail_plan = SPI_prepare(sql->data, 6, fail_types);

	/* permanent failures, exhausted attempts, unsendable rows: one place for operators to look */
	resetStringInfo(sql);
	appendStringInfo(sql,
					 "WITH moved AS (DELETE FROM %s o "
					 "  USING ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3)) AS d(id, status, err) "
					 "  WHERE o.id OPERATOR(pg_catalog.=) d.id "
					 "  RETURNING o.id, o.event_id, o.topic, o.key, o.payload, o.headers, o.created_at, o.attempts, "
					 "    o.first_failed_at, d.status AS d_status, d.err AS d_err, $5 AS d_blocking) ",
					 ob->qname);
	append_dead_letter_insert(sql, "$4");
	ob->dead_plan = SPI_prepare(sql->data, 5, dead_types);

	resetStringInfo(sql);
	appendStringInfo(sql,
					 "WITH moved AS (DELETE FROM %s o WHERE o.id IS NULL OR o.id OPERATOR(pg_catalog.<=) 0 "
					 "  RETURNING o.id, o.event_id, o.topic, o.key, o.payload, o.headers, o.created_at, o.attempts, "
					 "    o.first_failed_at, 0 AS d_status, "
					 "    CASE WHEN o.id IS NULL THEN 'id is NULL' ELSE 'id is not positive' END::pg_catalog.text AS d_err, "
					 "    false AS d_blocking) ",
					 ob->qname);
	append_dead_letter_insert(sql, "$1");
	ob->null_id_plan = SPI_prepare(sql->data, 1, null_id_types);
}

/* the prepared statements of an outbox */
#define NPLANS 11

/*
 * plan_slots
 *		Where an outbox's prepared statements are kept, for making and
 *		freeing them all.
 */
static void
plan_slots(OutboxState *ob, SPIPlanPtr **plans)
{
	SPIPlanPtr *all[NPLANS] = {&ob->fetch_plans[0], &ob->fetch_plans[1], &ob->retry_plan,
		&ob->ids_plans[0], &ob->ids_plans[1], &ob->failed_plan, &ob->next_retry_plan,
	&ob->delete_plan, &ob->fail_plan, &ob->dead_plan, &ob->null_id_plan};

	memcpy(plans, all, sizeof(all));
}

/*
 * courier_make_plans
 *		Prepare the statements the worker runs against one outbox.  An
 *		error here (a column renamed or dropped, no privilege) marks the
 *		outbox broken (see outbox_health.c).
 */
void
courier_make_plans(OutboxState *ob)
{
	StringInfoData sql;
	MemoryContext old = MemoryContextSwitchTo(ob->cxt);
	SPIPlanPtr *plans[NPLANS];

	plan_slots(ob, plans);
	initStringInfo(&sql);
	make_reads(ob, &sql);
	make_writes(ob, &sql);
	pfree(sql.data);
	MemoryContextSwitchTo(old);

	for (int i = 0; i < lengthof(plans); i++)
		if (*plans[i] == NULL)
		{
			int			code = SPI_result;

			courier_free_plans(ob);
			elog(ERROR, "pg_courier: could not prepare statements for outbox %s: %s",
				 ob->qname, SPI_result_code_string(code));
		}
	for (int i = 0; i < lengthof(plans); i++)
		SPI_keepplan(*plans[i]);
}

/*
 * courier_free_plans
 *		Drop an outbox's prepared statements (they are made again when
 *		needed: after a rename, an error, a change of mode).
 */
void
courier_free_plans(OutboxState *ob)
{
	SPIPlanPtr *plans[NPLANS];

	plan_slots(ob, plans);
	for (int i = 0; i < lengthof(plans); i++)
	{
		if (*plans[i])
			SPI_freeplan(*plans[i]);
		*plans[i] = NULL;
	}
}

/*
 * courier_check_row_shape
 *		Refuse the result of a read whose columns are not of the types the
 *		row is decoded as (the owner changed a column's type: the plan was
 *		re-made with the new one).  Text columns (topic, key) are read
 *		through their type's output function and may be of any type.
 */
void
courier_check_row_shape(const OutboxState *ob, TupleDesc desc)
{
	static const struct
	{
		int			col;
		const char *name;
		Oid			type;
	}			expected[] = {
		{1, "id", INT8OID}, {2, "event_id", UUIDOID}, {5, "payload", JSONBOID},
		{7, "created_at", TIMESTAMPTZOID}, {8, "attempts", INT4OID}
	};

	if (desc->natts != 10)
		elog(ERROR, "pg_courier: a read of outbox %s returned %d columns, not 10", ob->qname, desc->natts);
	for (int i = 0; i < lengthof(expected); i++)
	{
		Oid			actual = SPI_gettypeid(desc, expected[i].col);

		if (actual != expected[i].type)
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("column \"%s\" is of type %s, not %s", expected[i].name,
							format_type_be(actual), format_type_be(expected[i].type))));
	}
}

/*
 * courier_probe_statements
 *		Make sure the outbox's statements can be prepared and its read runs
 *		and returns rows of the expected shape, without taking any row.
 *		Used before declaring a broken outbox healthy again.
 */
void
courier_probe_statements(OutboxState *ob)
{
	Datum		args[3];

	if (ob->fetch_plans[1] == NULL)
		courier_make_plans(ob);
	args[0] = Int64GetDatum(0);
	args[1] = Int32GetDatum(0);
	args[2] = CStringGetTextDatum(ob->default_topic);
	if (SPI_execute_plan(ob->fetch_plans[1], args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "pg_courier: could not read outbox %s", ob->qname);
	courier_check_row_shape(ob, SPI_tuptable->tupdesc);
}

/*
 * courier_dead_letter_null_ids
 *		Move the outbox's rows whose id is NULL (its owner dropped the
 *		primary key) or not positive (written explicitly) to the dead
 *		letters.  Returns how many there were.
 */
uint64
courier_dead_letter_null_ids(OutboxState *ob)
{
	Datum		arg = ObjectIdGetDatum(ob->relid);

	if (SPI_execute_plan(ob->null_id_plan, &arg, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "pg_courier: could not move rows of %s to the dead letters", ob->qname);
	return SPI_processed;
}

/*
 * courier_purge_orphaned_delivered
 *		Remove retained delivered events whose outbox is gone or keeps none
 *		any more (no interval arithmetic: this cannot fail on a value an
 *		owner stored).  Caller is connected to SPI.  Returns true when more
 *		may remain.
 */
bool
courier_purge_orphaned_delivered(void)
{
	char	   *sql = psprintf("DELETE FROM %s d WHERE d.id OPERATOR(pg_catalog.=) ANY ("
							   "  SELECT e.id FROM %s e WHERE NOT EXISTS ("
							   "    SELECT 1 FROM %s o WHERE o.outbox OPERATOR(pg_catalog.=) e.outbox "
							   "       AND o.options OPERATOR(pg_catalog.?) 'retention') "
							   "  LIMIT %d)",
							   courier_qualified("delivered_events"),
							   courier_qualified("delivered_events"),
							   courier_qualified("outboxes"), PURGE_BATCH);

	if (SPI_execute(sql, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "pg_courier: could not purge delivered events of dropped outboxes");
	return SPI_processed == PURGE_BATCH;
}

/*
 * courier_purge_delivered_of
 *		Remove one outbox's retained delivered events older than its
 *		retention.  The retention is the owner's value: an interval that
 *		cannot be subtracted from now() fails this outbox's purge only.
 *		Caller is connected to SPI.  Returns true when more may remain.
 */
bool
courier_purge_delivered_of(const OutboxState *ob)
{
	Oid			types[1] = {REGCLASSOID};
	Datum		args[1] = {ObjectIdGetDatum(ob->relid)};
	char	   *sql = psprintf("DELETE FROM %s d WHERE d.id OPERATOR(pg_catalog.=) ANY ("
							   "  SELECT e.id FROM %s e WHERE e.outbox OPERATOR(pg_catalog.=) $1 "
							   "     AND e.delivered_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) "
							   "       (SELECT (o.options OPERATOR(pg_catalog.->>) 'retention')::pg_catalog.interval "
							   "          FROM %s o WHERE o.outbox OPERATOR(pg_catalog.=) $1)) "
							   "  LIMIT %d)",
							   courier_qualified("delivered_events"),
							   courier_qualified("delivered_events"),
							   courier_qualified("outboxes"), PURGE_BATCH);

	if (SPI_execute_with_args(sql, 1, types, args, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "pg_courier: could not purge delivered events of outbox %s", ob->qname);
	return SPI_processed == PURGE_BATCH;
}
