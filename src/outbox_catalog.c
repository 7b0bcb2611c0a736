/*-------------------------------------------------------------------------
 *
 * outbox_catalog.c
 *	  The worker's view of courier.outboxes: one OutboxState per registered
 *	  outbox, refreshed from the catalog.  The query is the worker's own (as
 *	  superuser): every name and operator in it is qualified, and the
 *	  extension's schema is the one pg_extension records.  (Statements on
 *	  the outboxes themselves run as their owners: see owner_exec.c.)
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "pg_courier.h"
#include "outbox_worker.h"
#include "owner_exec.h"

/*
 * courier_forget_outbox
 *		Free a state whose outbox is gone (no request may be in flight), and
 *		its counter slot.
 */
void
courier_forget_outbox(OutboxState *ob)
{
	courier_counters_release(ob->counters, ob->relid);
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
	ob->settings = AllocSetContextCreate(ob->cxt, "pg_courier outbox settings", ALLOCSET_SMALL_SIZES);
	ctl.keysize = sizeof(uint32);
	ctl.entrysize = sizeof(BusyKey);
	ctl.hcxt = ob->cxt;
	ob->busy_keys = hash_create("pg_courier busy keys", 256, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	ctl.keysize = sizeof(int64);
	ctl.entrysize = sizeof(int64);
	ob->inflight_ids = hash_create("pg_courier inflight", 1024, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	ob->counters = courier_counters_for(relid);
	ob->tls_verify = true;
	ob->caught_up = true;		/* (nothing read yet: its first read is one batch) */
	courier_parking_init(ob);
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
	ob->static_headers = MemoryContextAlloc(ob->settings, sizeof(char *) * 32);
	for (line = strtok_r(lines, "\n", &save); line && ob->nstatic_headers < 32; line = strtok_r(NULL, "\n", &save))
		ob->static_headers[ob->nstatic_headers++] = line;
}

/*
 * refresh_query
 *		The worker's read of courier.outboxes.  It runs as superuser with the
 *		worker's search_path, over values any outbox owner chose: every
 *		function, operator and type is spelled with its schema, and the
 *		catalog is the one in the extension's own schema.
 */
static char *
refresh_query(void)
{
#define OPT(k)		"(o.options OPERATOR(pg_catalog.->>) '" k "')"
#define CONCAT		" OPERATOR(pg_catalog.||) "
	return psprintf("SELECT o.outbox::pg_catalog.oid,"
					"  pg_catalog.format('%%I.%%I', n.nspname, c.relname),"
					"  o.endpoint, o.format,"
					"  COALESCE(o.default_topic, c.relname::pg_catalog.text), o.enabled,"
					"  COALESCE(" OPT("batch") "::pg_catalog.bool, false),"
					"  COALESCE(" OPT("batch_size") "::pg_catalog.int4, 0),"
					"  COALESCE(" OPT("max_inflight") "::pg_catalog.int4, 0),"
					"  COALESCE(" OPT("timeout_ms") "::pg_catalog.int4, 0),"
					"  " OPT("source") ","
					"  COALESCE(" OPT("envelope") ", 'cloudevents'),"
					"  COALESCE(" OPT("retry_base_ms") "::pg_catalog.int4, 0),"
					"  COALESCE(" OPT("retry_max_ms") "::pg_catalog.int4, 0),"
					"  COALESCE(" OPT("max_attempts") "::pg_catalog.int4, -1),"
					"  COALESCE(" OPT("on_dead_letter") ", 'skip') OPERATOR(pg_catalog.=) 'block',"
					"  COALESCE(" OPT("tls_verify") "::pg_catalog.bool, true),"
					"  (SELECT pg_catalog.string_agg(h.key" CONCAT "': '" CONCAT "h.value, E'\\n')"
					"     FROM pg_catalog.jsonb_each_text(o.options OPERATOR(pg_catalog.->) 'headers') h"
					"    WHERE h.key OPERATOR(pg_catalog.~) '^[!#$%%&''*+.^_`|~0-9A-Za-z-]+$'"
					"      AND h.value OPERATOR(pg_catalog.!~) '[\\r\\n]'"
					"      AND pg_catalog.lower(h.key) OPERATOR(pg_catalog.<>) ALL (ARRAY['content-type', 'content-length',"
					"          'host', 'idempotency-key', 'transfer-encoding', 'connection', 'expect']::pg_catalog.text[])),"
					"  c.relowner, o.options OPERATOR(pg_catalog.?) 'retention',"
					"  COALESCE(" OPT("embedded_format") ", 'json') OPERATOR(pg_catalog.=) 'binary',"
					"  " OPT("cluster_id") ","
					"  pg_catalog.array_to_string(ARRAY(SELECT pg_catalog.jsonb_array_elements_text(CASE"
					"    WHEN pg_catalog.jsonb_typeof(o.options OPERATOR(pg_catalog.->) 'signing_secret') OPERATOR(pg_catalog.=) 'array'"
					"    THEN o.options OPERATOR(pg_catalog.->) 'signing_secret'"
					"    ELSE pg_catalog.jsonb_build_array(o.options OPERATOR(pg_catalog.->) 'signing_secret') END)), E'\\n'),"
					"  COALESCE(" OPT("max_request_bytes") "::pg_catalog.int4, 0) "
					"FROM %s.outboxes o"
					"  JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) o.outbox::pg_catalog.oid"
					"  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace",
					courier_schema_name());
#undef OPT
#undef CONCAT
}

/*
 * set_cluster_option
 *		Kafka REST v3's cluster_id option (NULL: discovered).  A value the
 *		registration checks refused is ignored (a direct write bypassing
 *		them cannot put text of its choice in the URL path).  A discovered
 *		id is kept until the proxy answers 404 for it (outbox_complete.c).
 */
static void
set_cluster_option(OutboxState *ob, char *value)
{
	ob->cluster_option = (value && courier_valid_cluster_id(value))
		? MemoryContextStrdup(ob->settings, value) : NULL;
	if (ob->cluster_found && ob->format != COURIER_FORMAT_KAFKA_REST_V3)
	{
		pfree(ob->cluster_found);
		ob->cluster_found = NULL;
	}
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

	rc = SPI_execute(refresh_query(), true, 0);
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

		qname = state_text(tup, desc, 2, CurrentMemoryContext);
		if (ob->qname == NULL || strcmp(ob->qname, qname) != 0)
		{
			/* renamed (or new): statements must be prepared again */
			courier_free_plans(ob);
		}
		/* the settings are copied afresh each time: their memory is reset first */
		MemoryContextReset(ob->settings);
		ob->qname = MemoryContextStrdup(ob->settings, qname);
		topic = state_text(tup, desc, 5, ob->settings);
		ob->default_topic = topic;
		ob->endpoint = state_text(tup, desc, 3, ob->settings);
		ob->endpoint_shown = MemoryContextStrdup(ob->settings, courier_redact_text(ob->endpoint));
		format = state_text(tup, desc, 4, CurrentMemoryContext);
		ob->format = strcmp(format, "kafka_rest_v2") == 0 ? COURIER_FORMAT_KAFKA_REST_V2 :
			strcmp(format, "kafka_rest_v3") == 0 ? COURIER_FORMAT_KAFKA_REST_V3 : COURIER_FORMAT_CLOUDEVENTS;
		ob->enabled = DatumGetBool(SPI_getbinval(tup, desc, 6, &isnull));
		ob->ce_batch = DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
		ob->batch_size = DatumGetInt32(SPI_getbinval(tup, desc, 8, &isnull));
		ob->max_inflight = DatumGetInt32(SPI_getbinval(tup, desc, 9, &isnull));
		ob->timeout_ms = DatumGetInt32(SPI_getbinval(tup, desc, 10, &isnull));
		ob->source = state_text(tup, desc, 11, ob->settings);
		if (ob->source == NULL)
			ob->source = courier_default_source(relid, ob->settings);
		ob->kafka_envelope = strcmp(state_text(tup, desc, 12, CurrentMemoryContext), "none") != 0;
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
		set_static_headers(ob, state_text(tup, desc, 18, ob->settings));
		ob->origin = MemoryContextStrdup(ob->settings, courier_origin_text(ob->endpoint));
		ob->breaker = courier_breaker_for(courier_endpoint_identity(ob->endpoint));
		ob->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 19, &isnull));
		ob->retain = DatumGetBool(SPI_getbinval(tup, desc, 20, &isnull));
		if (ob->fetch_plan && ob->plans_retain != ob->retain)
			courier_free_plans(ob);
		ob->kafka_binary = DatumGetBool(SPI_getbinval(tup, desc, 21, &isnull));
		set_cluster_option(ob, SPI_getvalue(tup, desc, 22));
		courier_signing_refresh(ob, state_text(tup, desc, 23, CurrentMemoryContext));
		ob->max_request_bytes = DatumGetInt32(SPI_getbinval(tup, desc, 24, &isnull));
		/* health: the table's shape, and a retry when a broken outbox's registration changed */
		courier_health_refreshed(ob, tup, desc);
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

