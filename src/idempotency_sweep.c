/*-------------------------------------------------------------------------
 *
 * idempotency_sweep.c
 *	  Expiry of idempotency keys and of consumer deduplication records:
 *	  the module's GUCs, the delivery worker's periodic sweep and
 *	  courier.idempotency_sweep().
 *
 * Deletes go in small batches of rows locked with SKIP LOCKED, so a sweep
 * never waits for a request that is working on a key, and a request waits
 * at most for one short batch (only when it reuses an expired key at the
 * very moment that key is being swept).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "pg_courier.h"
#include "owner_exec.h"
#include "idempotency.h"

PG_FUNCTION_INFO_V1(courier_idempotency_sweep);

int			courier_idempotency_sweep_ms = 10000;
int			courier_idempotency_sweep_batch = 1000;
int			courier_dedupe_retention_s = 7 * 24 * 3600;

static SPIPlanPtr plan_sweep_keys = NULL;
static SPIPlanPtr plan_sweep_events = NULL;

/* When the worker last swept, and whether it left rows behind. */
static TimestampTz last_sweep = 0;
static bool sweep_backlog = false;

/*
 * courier_idempotency_init
 *		Define this module's GUCs (called from _PG_init, with or without
 *		preload: the on-demand sweep reads them too).
 */
void
courier_idempotency_init(void)
{
	DefineCustomIntVariable("courier.idempotency_sweep_ms",
							"Interval at which each database's worker removes expired idempotency keys and dedupe records.",
							"0 disables the background sweep (courier.idempotency_sweep() still works).  "
							"The worker looks about once a second, so shorter intervals act as 1s.",
							&courier_idempotency_sweep_ms,
							10000, 0, 24 * 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.idempotency_sweep_batch",
							"Maximum number of rows one sweep batch deletes from each table.",
							"The worker sweeps one batch per table per round and comes back the next second while rows are left.",
							&courier_idempotency_sweep_batch,
							1000, 1, 1000000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.dedupe_retention",
							"How long courier.consume_once remembers a consumed event.",
							"A duplicate delivered later than this is processed again; 0 keeps records forever.",
							&courier_dedupe_retention_s,
							7 * 24 * 3600, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
}

/*
 * sweep_keys
 *		Delete up to "limit" expired idempotency keys; returns how many.
 */
static uint64
sweep_keys(int limit)
{
	static Oid	types[] = {INT4OID};
	Datum		args[1] = {Int32GetDatum(limit)};
	SPIPlanPtr	plan;
	int			rc;

	plan = plan_sweep_keys ? plan_sweep_keys :
		courier_idem_plan(&plan_sweep_keys,
						  psprintf("DELETE FROM %1$s.idempotency_keys "
								   " WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY("
								   "         SELECT ctid FROM %1$s.idempotency_keys "
								   "          WHERE expires_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp() "
								   "          ORDER BY expires_at LIMIT $1 "
								   "          FOR UPDATE SKIP LOCKED)) "
								   "   AND expires_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()",
								   courier_schema_name()),
						  1, types);
	rc = SPI_execute_plan(plan, args, NULL, false, 0);
	if (rc != SPI_OK_DELETE)
		elog(ERROR, "pg_courier: could not sweep courier.idempotency_keys: %s",
			 SPI_result_code_string(rc));
	return SPI_processed;
}

/*
 * sweep_events
 *		Delete up to "limit" consume_once records older than the retention;
 *		returns how many (none when the retention is 0, i.e. forever).
 */
static uint64
sweep_events(int limit)
{
	static Oid	types[] = {INT4OID, INT4OID};
	Datum		args[2];
	SPIPlanPtr	plan;
	int			rc;

	if (courier_dedupe_retention_s <= 0)
		return 0;
	args[0] = Int32GetDatum(limit);
	args[1] = Int32GetDatum(courier_dedupe_retention_s);
	plan = plan_sweep_events ? plan_sweep_events :
		courier_idem_plan(&plan_sweep_events,
						  psprintf("DELETE FROM %1$s.consumed_events "
								   " WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY("
								   "         SELECT ctid FROM %1$s.consumed_events "
								   "          WHERE consumed_at OPERATOR(pg_catalog.<) (pg_catalog.clock_timestamp() "
								   "                OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $2)) "
								   "          ORDER BY consumed_at LIMIT $1 "
								   "          FOR UPDATE SKIP LOCKED))",
								   courier_schema_name()),
						  2, types);
	rc = SPI_execute_plan(plan, args, NULL, false, 0);
	if (rc != SPI_OK_DELETE)
		elog(ERROR, "pg_courier: could not sweep courier.consumed_events: %s",
			 SPI_result_code_string(rc));
	return SPI_processed;
}

/*
 * courier_idempotency_maintenance
 *		Called by the database's worker about once a second, in a transaction
 *		with a snapshot, when the extension exists.  Sweeps one batch per table
 *		when courier.idempotency_sweep_ms has elapsed, or at once while the
 *		previous round left rows behind.  When nothing has expired this is two
 *		index probes.
 */
void
courier_idempotency_maintenance(void)
{
	TimestampTz now = GetCurrentTimestamp();
	uint64		keys;
	uint64		events;

	if (courier_idempotency_sweep_ms <= 0)
		return;
	if (!sweep_backlog &&
		!TimestampDifferenceExceeds(last_sweep, now, courier_idempotency_sweep_ms))
		return;
	last_sweep = now;
	sweep_backlog = false;

	SPI_connect();
	keys = sweep_keys(courier_idempotency_sweep_batch);
	events = sweep_events(courier_idempotency_sweep_batch);
	SPI_finish();

	sweep_backlog = (keys >= (uint64) courier_idempotency_sweep_batch ||
					 events >= (uint64) courier_idempotency_sweep_batch);
	if (keys > 0 || events > 0)
		elog(DEBUG1, "pg_courier: swept " UINT64_FORMAT " expired idempotency keys and "
			 UINT64_FORMAT " dedupe records", keys, events);
}

/*
 * courier_idempotency_sweep
 *		courier.idempotency_sweep(): remove everything that has expired now,
 *		batch after batch, in the caller's transaction.  Returns the numbers of
 *		keys and of dedupe records removed.
 */
Datum
courier_idempotency_sweep(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};
	int64		keys = 0;
	int64		events = 0;
	uint64		n;
	int			batch = courier_idempotency_sweep_batch;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "pg_courier: idempotency_sweep must return a row");

	SPI_connect();
	do
	{
		CHECK_FOR_INTERRUPTS();
		n = sweep_keys(batch);
		keys += n;
	} while (n >= (uint64) batch);
	do
	{
		CHECK_FOR_INTERRUPTS();
		n = sweep_events(batch);
		events += n;
	} while (n >= (uint64) batch);
	SPI_finish();

	values[0] = Int64GetDatum(keys);
	values[1] = Int64GetDatum(events);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}
