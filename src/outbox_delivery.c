/*-------------------------------------------------------------------------
 *
 * outbox_delivery.c
 *	  Reading committed outbox rows, packing them into requests, and
 *	  recording the outcome: delete on acknowledgement, record the failure
 *	  and schedule a retry otherwise.
 *
 * Order per key.  Rows are read in id order.  A row is held back when
 *	- an earlier row of its key failed and still waits (the SQL excludes it),
 *	- a row of its key is in flight in another request (busy_keys), or
 *	- a transaction the snapshot cannot see may own an earlier row of its
 *	  key (the registry's holds, see outbox_registry.c),
 * and once a key is held in a read, its later rows in that read are too.
 * Rows without a key are independent.
 *
 * Reading.  A cursor remembers the highest id looked at, so a busy outbox
 * is read incrementally.  Rows left behind the cursor (held, or failed and
 * waiting for their retry time) are picked up by a rescan from the start,
 * scheduled when something that could release them happens.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "pg_courier.h"
#include "outbox_worker.h"

extern MemoryContext courier_worker_context;

/* Even with nothing due, read every outbox from the start this often. */
#define FULL_SCAN_INTERVAL_MS	5000

/*
 * make_state_plans
 *		Prepare the statements the worker runs against one outbox.
 */
static void
make_state_plans(OutboxState *ob)
{
	StringInfoData sql;
	Oid			fetch_types[3] = {INT8OID, INT4OID, TEXTOID};
	Oid			delete_types[1] = {INT8ARRAYOID};
	Oid			fail_types[6] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, INT8ARRAYOID, FLOAT8OID, FLOAT8OID};
	Oid			dead_types[5] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, REGCLASSOID, BOOLOID};
	MemoryContext old = MemoryContextSwitchTo(ob->cxt);

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT o.id, o.event_id::text, COALESCE(o.topic, $3), o.key, o.payload::text, "
					 "  CASE WHEN o.headers IS NOT NULL THEN "
					 "    (SELECT string_agg(h.k || ': ' || h.v, E'\\n') FROM jsonb_each_text(o.headers) h(k, v) "
					 "      WHERE h.k ~ '^[!#$%%&''*+.^_`|~0-9A-Za-z-]+$' AND h.v !~ '[\\r\\n]' "
					 "        AND lower(h.k) NOT IN ('content-type', 'content-length', 'host', 'idempotency-key', "
					 "                               'transfer-encoding', 'connection', 'expect')) END, "
					 "  to_char(o.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), o.attempts "
					 "FROM %s o "
					 "WHERE o.id > $1 AND (o.attempts = 0 OR o.next_attempt_at IS NULL OR o.next_attempt_at <= clock_timestamp()) "
					 "  AND (o.key IS NULL OR NOT EXISTS (SELECT 1 FROM %s f "
					 "       WHERE f.attempts > 0 AND f.key = o.key AND f.id < o.id)) ",
					 ob->qname, ob->qname);
	if (ob->block_on_dead)
		appendStringInfo(&sql,
						 "  AND (o.key IS NULL OR NOT EXISTS (SELECT 1 FROM courier.dead_letters d "
						 "       WHERE d.blocking AND d.outbox = %u::oid::regclass AND d.key = o.key)) ",
						 ob->relid);
	appendStringInfoString(&sql, "ORDER BY o.id LIMIT $2");
	ob->fetch_plan = SPI_prepare(sql.data, 3, fetch_types);
	ob->plans_block = ob->block_on_dead;

	resetStringInfo(&sql);
	appendStringInfo(&sql, "DELETE FROM %s WHERE id = ANY($1)", ob->qname);
	ob->delete_plan = SPI_prepare(sql.data, 1, delete_types);

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

	if (!ob->fetch_plan || !ob->delete_plan || !ob->fail_plan || !ob->dead_plan)
		elog(ERROR, "pg_courier: could not prepare statements for outbox %s: %s",
			 ob->qname, SPI_result_code_string(SPI_result));
	SPI_keepplan(ob->fetch_plan);
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
	SPIPlanPtr *plans[] = {&ob->fetch_plan, &ob->delete_plan, &ob->fail_plan, &ob->dead_plan};

	for (int i = 0; i < lengthof(plans); i++)
	{
		if (*plans[i])
			SPI_freeplan(*plans[i]);
		*plans[i] = NULL;
	}
}

/*
 * courier_forget_outbox
 *		Free a state whose outbox is gone (no request may be in flight).
 */
void
courier_forget_outbox(OutboxState *ob)
{
	courier_free_plans(ob);
	MemoryContextDelete(ob->cxt);
	pfree(ob);
}

/*
 * new_state
 *		Worker-side state of a newly seen outbox.
 */
static OutboxState *
new_state(Oid relid)
{
	OutboxState *ob = MemoryContextAllocZero(courier_worker_context, sizeof(OutboxState));
	HASHCTL		ctl;

	ob->relid = relid;
	ob->cxt = AllocSetContextCreate(courier_worker_context, "pg_courier outbox", ALLOCSET_SMALL_SIZES);
	ctl.keysize = sizeof(uint32);
	ctl.entrysize = sizeof(uint32) + sizeof(int);
	ctl.hcxt = ob->cxt;
	ob->busy_keys = hash_create("pg_courier busy keys", 256, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	ctl.keysize = sizeof(int64);
	ctl.entrysize = sizeof(int64);
	ob->inflight_ids = hash_create("pg_courier inflight", 1024, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	ob->counters = courier_counters_for(relid);
	ob->tls_verify = true;
	return ob;
}

/*
 * state_text
 *		Column i of the current SPI row as a string in cxt (NULL for NULL).
 */
static char *
state_text(HeapTuple tup, TupleDesc desc, int col, MemoryContext cxt)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	if (isnull)
		return NULL;
	return MemoryContextStrdup(cxt, TextDatumGetCString(d));
}

/*
 * set_static_headers
 *		The outbox's headers option ("Name: value" lines) as an array.
 */
static void
set_static_headers(OutboxState *ob, char *lines)
{
	char	   *save;
	char	   *line;

	ob->nstatic_headers = 0;
	if (lines == NULL)
		return;
	ob->static_headers = MemoryContextAlloc(ob->cxt, sizeof(char *) * 32);
	for (line = strtok_r(lines, "\n", &save); line && ob->nstatic_headers < 32; line = strtok_r(NULL, "\n", &save))
		ob->static_headers[ob->nstatic_headers++] = line;
}

/*
 * courier_refresh_outboxes
 *		Re-read courier.outboxes into the worker's list: new outboxes get a
 *		state, changed settings apply, dropped ones are forgotten once their
 *		requests are finished.
 */
void
courier_refresh_outboxes(List **outboxes)
{
	ListCell   *lc;
	int			rc;

	foreach(lc, *outboxes)
		((OutboxState *) lfirst(lc))->seen = false;

	rc = SPI_execute("SELECT o.outbox::oid, format('%I.%I', n.nspname, c.relname), o.endpoint, o.format, "
					 "  COALESCE(o.default_topic, c.relname), o.enabled, "
					 "  COALESCE((o.options->>'batch')::boolean, false), "
					 "  COALESCE((o.options->>'batch_size')::int, 0), "
					 "  COALESCE((o.options->>'max_inflight')::int, 0), "
					 "  COALESCE((o.options->>'timeout_ms')::int, 0), "
					 "  COALESCE(o.options->>'source', '/pg_courier/' || current_database() || '/' || n.nspname || '.' || c.relname), "
					 "  COALESCE(o.options->>'envelope', 'cloudevents'), "
					 "  COALESCE((o.options->>'retry_base_ms')::int, 0), COALESCE((o.options->>'retry_max_ms')::int, 0), "
					 "  COALESCE((o.options->>'max_attempts')::int, -1), "
					 "  COALESCE(o.options->>'on_dead_letter', 'skip') = 'block', "
					 "  COALESCE((o.options->>'tls_verify')::boolean, true), "
					 "  (SELECT string_agg(h.key || ': ' || h.value, E'\\n') FROM jsonb_each_text(o.options->'headers') h) "
					 "FROM courier.outboxes o JOIN pg_class c ON c.oid = o.outbox "
					 "JOIN pg_namespace n ON n.oid = c.relnamespace", true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "pg_courier: could not read courier.outboxes: %s", SPI_result_code_string(rc));

	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Oid			relid = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
		OutboxState *ob = NULL;
		char	   *qname;
		char	   *topic;
		char	   *format;

		foreach(lc, *outboxes)
			if (((OutboxState *) lfirst(lc))->relid == relid)
				ob = lfirst(lc);
		if (ob == NULL)
		{
			/* the list outlives the transaction */
			MemoryContext old = MemoryContextSwitchTo(courier_worker_context);

			ob = new_state(relid);
			*outboxes = lappend(*outboxes, ob);
			MemoryContextSwitchTo(old);
		}
		ob->seen = true;

		qname = state_text(tup, desc, 2, ob->cxt);
		topic = state_text(tup, desc, 5, ob->cxt);
		if (ob->qname == NULL || strcmp(ob->qname, qname) != 0)
		{
			/* renamed (or new): statements must be prepared again */
			courier_free_plans(ob);
		}
		ob->qname = qname;
		ob->default_topic = topic;
		if (ob->endpoint == NULL || strcmp(ob->endpoint, state_text(tup, desc, 3, ob->cxt)) != 0)
		{
			ob->endpoint = state_text(tup, desc, 3, ob->cxt);
			ob->endpoint_shown = MemoryContextStrdup(ob->cxt, courier_redact_text(ob->endpoint));
		}
		format = state_text(tup, desc, 4, ob->cxt);
		ob->format = strcmp(format, "kafka_rest_v2") == 0 ? COURIER_FORMAT_KAFKA_REST_V2 : COURIER_FORMAT_CLOUDEVENTS;
		ob->enabled = DatumGetBool(SPI_getbinval(tup, desc, 6, &isnull));
		ob->ce_batch = DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
		ob->batch_size = DatumGetInt32(SPI_getbinval(tup, desc, 8, &isnull));
		ob->max_inflight = DatumGetInt32(SPI_getbinval(tup, desc, 9, &isnull));
		ob->timeout_ms = DatumGetInt32(SPI_getbinval(tup, desc, 10, &isnull));
		ob->source = state_text(tup, desc, 11, ob->cxt);
		ob->kafka_envelope = strcmp(state_text(tup, desc, 12, ob->cxt), "none") != 0;
		ob->retry_base_ms = DatumGetInt32(SPI_getbinval(tup, desc, 13, &isnull));
		ob->retry_max_ms = DatumGetInt32(SPI_getbinval(tup, desc, 14, &isnull));
		ob->max_attempts = DatumGetInt32(SPI_getbinval(tup, desc, 15, &isnull));
		ob->block_on_dead = DatumGetBool(SPI_getbinval(tup, desc, 16, &isnull));
		if (ob->fetch_plan && ob->plans_block != ob->block_on_dead)
			courier_free_plans(ob);
		if (!DatumGetBool(SPI_getbinval(tup, desc, 17, &isnull)) && ob->tls_verify)
			ereport(WARNING,
					(errmsg("pg_courier: TLS certificate verification is disabled for outbox %s", ob->qname)));
		ob->tls_verify = DatumGetBool(SPI_getbinval(tup, desc, 17, &isnull));
		set_static_headers(ob, state_text(tup, desc, 18, ob->cxt));
		ob->origin = MemoryContextStrdup(ob->cxt, courier_origin_text(ob->endpoint));
		ob->breaker = courier_breaker_for(ob->origin);
	}

	foreach(lc, *outboxes)
	{
		OutboxState *ob = lfirst(lc);

		if (!ob->seen && ob->inflight == 0)
		{
			*outboxes = foreach_delete_current(*outboxes, lc);
			courier_forget_outbox(ob);
		}
	}
}

/* effective settings: per-outbox options override the GUCs */
#define OB_BATCH(ob)	((ob)->batch_size > 0 ? (ob)->batch_size : courier_batch_size)
#define OB_INFLIGHT(ob) ((ob)->max_inflight > 0 ? (ob)->max_inflight : courier_max_inflight)
#define OB_TIMEOUT(ob)	((ob)->timeout_ms > 0 ? (ob)->timeout_ms : courier_http_timeout_ms)
#define OB_BATCHED(ob)	((ob)->format == COURIER_FORMAT_KAFKA_REST_V2 || (ob)->ce_batch)

/*
 * new_delivery
 *		An empty request for up to maxrows rows, in its own memory context.
 */
static Delivery *
new_delivery(OutboxState *ob, int maxrows, const char *topic)
{
	MemoryContext cxt = AllocSetContextCreate(courier_worker_context, "pg_courier delivery",
											  ALLOCSET_DEFAULT_SIZES);
	Delivery   *d = MemoryContextAllocZero(cxt, sizeof(Delivery));

	d->ob = ob;
	d->cxt = cxt;
	d->maxrows = maxrows;
	d->ids = MemoryContextAlloc(cxt, sizeof(int64) * maxrows);
	d->attempts = MemoryContextAlloc(cxt, sizeof(int) * maxrows);
	d->keyhashes = MemoryContextAlloc(cxt, sizeof(uint32) * maxrows);
	d->haskey = MemoryContextAlloc(cxt, sizeof(bool) * maxrows);
	d->topic = topic ? MemoryContextStrdup(cxt, topic) : NULL;
	d->extra = MemoryContextAllocZero(cxt, sizeof(char *) * 96);
	for (int i = 0; i < ob->nstatic_headers; i++)
		d->extra[d->nextra++] = ob->static_headers[i];
	d->body.data = NULL;
	return d;
}

/*
 * add_row
 *		Put one row into a request and mark it (and its key) in flight.
 */
static void
add_row(Delivery *d, const OutboxRow *r, uint32 keyhash)
{
	OutboxState *ob = d->ob;
	MemoryContext old = MemoryContextSwitchTo(d->cxt);
	bool		found;
	int		   *count;

	if (d->body.data == NULL)
	{
		initStringInfo(&d->body);
		if (ob->format == COURIER_FORMAT_KAFKA_REST_V2)
			appendStringInfoString(&d->body, "{\"records\":[");
		else if (ob->ce_batch)
			appendStringInfoChar(&d->body, '[');
	}
	else
		appendStringInfoChar(&d->body, ',');

	if (ob->format == COURIER_FORMAT_KAFKA_REST_V2)
		courier_format_kafka_record(&d->body, ob, r);
	else
		courier_format_cloudevent(&d->body, ob, r);

	if (!OB_BATCHED(ob))
	{
		/* one event per request: the event id and the row's own headers travel as HTTP headers */
		d->extra[d->nextra++] = psprintf("Idempotency-Key: \"%s\"", r->event_id);
		if (r->headers)
		{
			char	   *save;
			char	   *line;

			for (line = strtok_r(pstrdup(r->headers), "\n", &save); line && d->nextra < 96;
				 line = strtok_r(NULL, "\n", &save))
				d->extra[d->nextra++] = line;
		}
	}
	MemoryContextSwitchTo(old);

	if (r->attempts > 0)
		d->retried = true;
	d->ids[d->nrows] = r->id;
	d->attempts[d->nrows] = r->attempts;
	d->keyhashes[d->nrows] = keyhash;
	d->haskey[d->nrows] = (r->key != NULL);
	d->nrows++;

	hash_search(ob->inflight_ids, &r->id, HASH_ENTER, NULL);
	if (r->key)
	{
		count = hash_search(ob->busy_keys, &keyhash, HASH_ENTER, &found);
		count[1] = found ? count[1] + 1 : 1;
	}
}

/*
 * start_delivery
 *		Close the body and hand the request to libcurl.
 */
static void
start_delivery(Delivery *d)
{
	OutboxState *ob = d->ob;
	CourierHttpOptions o = {0};
	MemoryContext old = MemoryContextSwitchTo(d->cxt);

	if (ob->format == COURIER_FORMAT_KAFKA_REST_V2)
	{
		size_t		n = strlen(ob->endpoint);

		appendStringInfoString(&d->body, "]}");
		while (n > 0 && ob->endpoint[n - 1] == '/')
			n--;
		d->url = psprintf("%.*s/topics/%s", (int) n, ob->endpoint, d->topic);
		o.content_type = "application/vnd.kafka.json.v2+json";
		o.accept = "application/vnd.kafka.v2+json";
	}
	else
	{
		if (ob->ce_batch)
			appendStringInfoChar(&d->body, ']');
		d->url = ob->endpoint;
		o.content_type = ob->ce_batch ? "application/cloudevents-batch+json" : "application/cloudevents+json";
	}
	MemoryContextSwitchTo(old);

	o.url = d->url;
	o.body = d->body.data;
	o.body_len = d->body.len;
	o.extra_headers = d->extra;
	o.nextra = d->nextra;
	o.timeout_ms = OB_TIMEOUT(ob);
	o.tls_verify = ob->tls_verify;
	o.ca_file = courier_ca_file;
	d->req = courier_http_post(&o, d);
	ob->inflight++;
}

/*
 * read_row
 *		Decode one fetched row (strings live in the SPI tuple table).
 */
static void
read_row(HeapTuple tup, TupleDesc desc, OutboxRow *r)
{
	bool		isnull;

	r->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	r->event_id = SPI_getvalue(tup, desc, 2);
	r->topic = SPI_getvalue(tup, desc, 3);
	r->key = SPI_getvalue(tup, desc, 4);
	r->payload = SPI_getvalue(tup, desc, 5);
	r->headers = SPI_getvalue(tup, desc, 6);
	r->time = SPI_getvalue(tup, desc, 7);
	r->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 8, &isnull));
}

/*
 * open_delivery_for
 *		The request a row goes into: an open one with room (batched formats,
 *		same topic for Kafka) or a new one if the in-flight budget allows.
 *		Returns NULL when the budget is exhausted.
 */
static Delivery *
open_delivery_for(OutboxState *ob, List **open, const OutboxRow *r, int *budget)
{
	ListCell   *lc;
	Delivery   *d;
	bool		kafka = (ob->format == COURIER_FORMAT_KAFKA_REST_V2);

	foreach(lc, *open)
	{
		d = lfirst(lc);
		if (d->nrows < d->maxrows && (!kafka || strcmp(d->topic, r->topic) == 0))
			return d;
		if (kafka && strcmp(d->topic, r->topic) == 0)
		{
			/* full: send it now and open another below */
			start_delivery(d);
			*open = foreach_delete_current(*open, lc);
			break;
		}
	}
	if (*budget <= 0)
		return NULL;
	(*budget)--;
	d = new_delivery(ob, OB_BATCHED(ob) ? OB_BATCH(ob) : 1, kafka ? r->topic : NULL);
	*open = lappend(*open, d);
	return d;
}

/*
 * fail_unsendable
 *		Record a failed attempt for a row that cannot be sent as it is, so
 *		that it waits for its retry instead of spinning.
 */
static void
fail_unsendable(OutboxState *ob, int64 id, const char *why)
{
	Datum		args[6];
	Datum		v;

	v = Int64GetDatum(id);
	args[0] = PointerGetDatum(construct_array(&v, 1, INT8OID, 8, true, TYPALIGN_DOUBLE));
	v = Int32GetDatum(0);
	args[1] = PointerGetDatum(construct_array(&v, 1, INT4OID, 4, true, TYPALIGN_INT));
	v = CStringGetTextDatum(why);
	args[2] = PointerGetDatum(construct_array(&v, 1, TEXTOID, -1, false, TYPALIGN_INT));
	v = Int64GetDatum(-1);
	args[3] = PointerGetDatum(construct_array(&v, 1, INT8OID, 8, true, TYPALIGN_DOUBLE));
	args[4] = Float8GetDatum(ob->retry_base_ms > 0 ? ob->retry_base_ms : courier_retry_base_ms);
	args[5] = Float8GetDatum(ob->retry_max_ms > 0 ? ob->retry_max_ms : courier_retry_max_ms);
	if (SPI_execute_plan(ob->fail_plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "pg_courier: could not record a failed attempt in %s", ob->qname);
	courier_counters_record(ob->counters, 0, 1, 0, why);
}

/*
 * courier_dispatch_possible
 *		Could a read of this outbox start anything now?  Checked before any
 *		transaction work, so that paused outboxes, exhausted budgets and open
 *		breakers cost nothing.
 */
bool
courier_dispatch_possible(OutboxState *ob)
{
	TimestampTz next = courier_breaker_next_change(ob->breaker);

	return ob->enabled && OB_INFLIGHT(ob) > ob->inflight && (next == 0 || GetCurrentTimestamp() >= next);
}

/*
 * courier_dispatch
 *		Read ready rows of one outbox and start requests for them, within the
 *		outbox's in-flight budget.  Runs inside the round's transaction, with
 *		the snapshot the holds were taken with.  Returns true when a full
 *		read was consumed (more rows may be waiting).
 */
bool
courier_dispatch(OutboxState *ob, const CourierHoldSet *holds)
{
	int			budget = OB_INFLIGHT(ob) - ob->inflight;
	int			limit;
	Datum		args[3];
	TimestampTz now = GetCurrentTimestamp();
	List	   *open = NIL;
	ListCell   *lc;
	bool		stopped = false;
	HTAB	   *held_keys = NULL;
	int64		consumed = ob->cursor;
	int64		first_held = PG_INT64_MAX;
	int			started = 0;
	int			admitted;
	uint64		n;

	if (!ob->enabled || budget <= 0)
		return false;

	/* an open breaker sends nothing (rows keep their attempts); half-open sends one probe */
	admitted = courier_breaker_admit(ob->breaker);
	if (admitted == 0)
		return false;
	if (admitted == 1)
		budget = 1;

	if ((ob->rescan && now >= ob->rescan_at) || (ob->retry_at != 0 && now >= ob->retry_at) ||
		TimestampDifferenceExceeds(ob->last_full_scan, now, FULL_SCAN_INTERVAL_MS))
	{
		/* rows behind the cursor (failed, or behind a failure) are due */
		ob->cursor = consumed = 0;
		ob->rescan = false;
		ob->retry_at = 0;
		ob->last_full_scan = now;
	}
	if (ob->fetch_plan == NULL)
		make_state_plans(ob);

	limit = Min((OB_BATCHED(ob) && admitted != 1 ? OB_BATCH(ob) : 1) * budget, 100000);
	args[0] = Int64GetDatum(ob->cursor);
	args[1] = Int32GetDatum(limit);
	args[2] = CStringGetTextDatum(ob->default_topic);
	if (SPI_execute_plan(ob->fetch_plan, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "pg_courier: could not read outbox %s", ob->qname);
	n = SPI_processed;

	for (uint64 i = 0; i < n; i++)
	{
		OutboxRow	r;
		uint32		keyhash = 0;
		Delivery   *d;

		read_row(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, &r);
		if (hash_search(ob->inflight_ids, &r.id, HASH_FIND, NULL))
		{
			consumed = r.id;
			continue;
		}
		if (r.key)
		{
			keyhash = courier_key_hash(r.key, strlen(r.key));
			/* once a key is held in this read, its later rows are held too */
			if ((held_keys && hash_search(held_keys, &keyhash, HASH_FIND, NULL)) ||
				hash_search(ob->busy_keys, &keyhash, HASH_FIND, NULL) ||
				courier_hold_applies(holds, ob->relid, r.id, keyhash))
			{
				if (held_keys == NULL)
				{
					HASHCTL		ctl;

					ctl.keysize = ctl.entrysize = sizeof(uint32);
					ctl.hcxt = CurrentMemoryContext;
					held_keys = hash_create("pg_courier held keys", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
				}
				hash_search(held_keys, &keyhash, HASH_ENTER, NULL);
				first_held = Min(first_held, r.id);
				consumed = r.id;
				continue;
			}
		}
		if (ob->format == COURIER_FORMAT_KAFKA_REST_V2 && !courier_valid_kafka_topic(r.topic))
		{
			fail_unsendable(ob, r.id, "invalid Kafka topic name");
			consumed = r.id;
			continue;
		}
		d = open_delivery_for(ob, &open, &r, &budget);
		if (d == NULL)
		{
			stopped = true;
			break;
		}
		if (admitted == 1)
		{
			/* the probe carries a single event: a failure costs one attempt */
			d->probe = true;
			d->maxrows = 1;
		}
		add_row(d, &r, keyhash);
		started++;
		consumed = r.id;
		if (!OB_BATCHED(ob))
		{
			open = list_delete_ptr(open, d);
			start_delivery(d);
		}
	}
	foreach(lc, open)
		start_delivery(lfirst(lc));
	list_free(open);
	if (admitted == 1 && started == 0)
		courier_breaker_release_probe(ob->breaker);

	/*
	 * Advance the cursor over what this read dealt with, but never past a
	 * held row (it must be read again before later rows of its key) nor past
	 * an id that a transaction still in progress may own.
	 */
	ob->cursor = Min(consumed, first_held - 1);
	ob->cursor = Min(ob->cursor, courier_hold_horizon(holds, ob->relid) - 1);
	return !stopped && n == (uint64) limit;
}
