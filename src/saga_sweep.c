/*-------------------------------------------------------------------------
 *
 * saga_sweep.c
 *	  Saga step timeouts: the database worker's periodic sweep (and
 *	  courier.saga_enforce_timeouts()) fails the running steps that are past
 *	  their deadline, one saga per subtransaction.
 *
 * Containment.  A saga whose timeout cannot be applied (its command INSERT
 * fails: an outbox owner's trigger raises, the outbox was dropped) is
 * reported once and skipped; the sweep goes on past it, in (deadline,
 * saga_id) order, so a run of failing sagas at the head never keeps the
 * others from timing out.  The statements run as the saga tables' owner
 * with a safe search_path (saga_become_owner), the command INSERT as the
 * saga type's owner, restricted (saga_catalog.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "pg_courier.h"
#include "owner_exec.h"
#include "saga.h"

PG_FUNCTION_INFO_V1(courier_saga_enforce_timeouts);

/* Rows failed per statement of the sweep; more wait for the next one. */
#define SWEEP_BATCH		200

static TimestampTz last_sweep = 0;
static SPIPlanPtr plan_sweep = NULL;

/*
 * Where a sweep goes on: sagas at or before (deadline, saga_id) were looked
 * at.  A saga that cannot be timed out stays due: the sweep goes past it
 * rather than meet the same failing sagas at the head of every batch.
 */
typedef struct SweepCursor
{
	TimestampTz deadline;
	pg_uuid_t	id;
} SweepCursor;

static SweepCursor sweep_cursor = {DT_NOBEGIN};

/*
 * Sagas whose timeout failed and was reported (the worker's, in
 * TopMemoryContext): each is reported once until it times out; past
 * FAILING_SAGAS_MAX the further ones are not reported.
 */
#define FAILING_SAGAS_MAX 1024
static HTAB *failing_sagas = NULL;

/*
 * first_failure
 *		Remember that saga id could not be timed out; true the first time
 *		(report it), false while it keeps failing.
 */
static bool
first_failure(pg_uuid_t *id)
{
	bool		found;

	if (failing_sagas == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = ctl.entrysize = sizeof(pg_uuid_t);
		ctl.hcxt = TopMemoryContext;
		failing_sagas = hash_create("pg_courier failing sagas", 64, &ctl,
									HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	if (hash_get_num_entries(failing_sagas) >= FAILING_SAGAS_MAX)
		return false;			/* that many are reported already */
	hash_search(failing_sagas, id, HASH_ENTER, &found);
	return !found;
}

/*
 * time_out_one
 *		Fail the running step of one saga (locked by the sweep) if it is
 *		still past its deadline, in a subtransaction: a saga that cannot be
 *		failed (say its outbox was dropped) is reported and skipped instead
 *		of stopping the sweep.
 */
static bool
time_out_one(pg_uuid_t *id, TimestampTz now)
{
	MemoryContext oldcontext = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	volatile bool done = false;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcontext);
	PG_TRY();
	{
		SagaInstance inst;

		if (saga_load(&inst, id, true, true) && inst.status == SAGA_RUNNING && inst.current >= 0 &&
			inst.states[inst.current] == STEP_RUNNING && inst.has_deadline && inst.deadline <= now)
		{
			char		json[128];

			snprintf(json, sizeof(json), "{\"reason\": \"timeout\", \"timeout_ms\": " INT64_FORMAT "}",
					 inst.def->steps[inst.current].timeout_ms);
			inst.error = saga_make_jsonb(json);
			saga_apply(&inst, SAGA_OP_TIMEOUT, inst.current, now);
			if (inst.changed)
			{
				saga_store(&inst, (Datum) 0, (Datum) 0, false);
				saga_send_command(&inst);
				done = true;
			}
		}
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;
		if (failing_sagas)
			hash_search(failing_sagas, id, HASH_REMOVE, NULL);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcontext);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;
		if (first_failure(id))
			ereport(WARNING,
					(errmsg("pg_courier: could not time out a step of saga %s: %s", saga_uuid_text(id), edata->message),
					 errdetail("The sweep goes on with the other sagas and tries this one again at every sweep; it is reported again only after it timed out.")));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	return done;
}

/*
 * sweep
 *		Fail the steps that are past their deadline, looking at most at
 *		SWEEP_BATCH sagas after *cursor (which it advances); returns how many
 *		it looked at and adds the number of steps it failed to *timed_out.
 *		Rows being driven right now are skipped (SKIP LOCKED): they are
 *		either finishing the step or will be seen by the next sweep.
 */
static uint64
sweep(TimestampTz now, uint64 *timed_out, SweepCursor *cursor)
{
	Datum		args[4];
	pg_uuid_t  *ids;
	uint64		n;

	SPI_connect();
	if (plan_sweep == NULL)
	{
		Oid			types[4] = {TIMESTAMPTZOID, INT8OID, TIMESTAMPTZOID, UUIDOID};

		plan_sweep = SPI_prepare(psprintf("SELECT saga_id, deadline FROM %s.saga_instances"
										  " WHERE deadline OPERATOR(pg_catalog.<=) $1"
										  "   AND (deadline OPERATOR(pg_catalog.>) $3"
										  "     OR (deadline OPERATOR(pg_catalog.=) $3"
										  "       AND saga_id OPERATOR(pg_catalog.>) $4))"
										  " ORDER BY deadline, saga_id LIMIT $2 FOR UPDATE SKIP LOCKED",
										  courier_schema_name()), 4, types);
		if (plan_sweep == NULL)
			elog(ERROR, "pg_courier: could not prepare the saga sweep");
		SPI_keepplan(plan_sweep);
	}
	args[0] = TimestampTzGetDatum(now);
	args[1] = Int64GetDatum(SWEEP_BATCH);
	args[2] = TimestampTzGetDatum(cursor->deadline);
	args[3] = UUIDPGetDatum(&cursor->id);
	if (SPI_execute_plan(plan_sweep, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "pg_courier: saga sweep failed");

	n = SPI_processed;
	ids = palloc(sizeof(pg_uuid_t) * Max(n, 1));
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;

		ids[i] = *DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		if (i == n - 1)
		{
			cursor->deadline = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[i],
																 SPI_tuptable->tupdesc, 2, &isnull));
			cursor->id = ids[i];
		}
	}
	for (uint64 i = 0; i < n; i++)
		if (time_out_one(&ids[i], now))
			(*timed_out)++;
	SPI_finish();
	return n;
}

/*
 * courier_saga_enforce_timeouts
 *		courier.saga_enforce_timeouts() RETURNS bigint: run the timeout sweep
 *		now, in the caller's transaction (for servers without the worker, and
 *		for tests).  Loops until nothing more is due.
 */
Datum
courier_saga_enforce_timeouts(PG_FUNCTION_ARGS)
{
	TimestampTz now = GetCurrentTimestamp();
	SagaIdentity who;
	uint64		total = 0;
	uint64		n;
	SweepCursor cursor = {DT_NOBEGIN};

	saga_become_owner(&who);
	do
	{
		n = sweep(now, &total, &cursor);
	} while (n == SWEEP_BATCH);
	saga_become_caller(&who);
	PG_RETURN_INT64((int64) total);
}

/*
 * courier_saga_maintenance
 *		Called by the database worker about once a second, in a transaction:
 *		when courier.saga_timeout_interval has elapsed, fail the steps that
 *		are past their deadline (which starts their retry or compensation).
 *		Cheap when nothing is due: one probe of the partial deadline index.
 */
void
courier_saga_maintenance(void)
{
	TimestampTz now = GetCurrentTimestamp();
	uint64		timed_out = 0;

	if (saga_timeout_interval_ms <= 0 ||
		!TimestampDifferenceExceeds(last_sweep, now, saga_timeout_interval_ms))
		return;
	last_sweep = now;
	if (sweep(now, &timed_out, &sweep_cursor) == SWEEP_BATCH)
		last_sweep = 0;			/* more may be due: go on next time */
	else
		sweep_cursor.deadline = DT_NOBEGIN; /* done: the next sweep starts over */
}
