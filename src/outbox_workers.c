/*-------------------------------------------------------------------------
 *
 * outbox_workers.c
 *	  The worker table (which process serves which database, wake-up and
 *	  rescan requests), per-outbox counters, and the SQL functions that read
 *	  them.  Shares pg_courier's registry shared memory (outbox_shmem.h).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "pg_courier.h"
#include "outbox_registry.h"
#include "outbox_shmem.h"

static CourierWorkerInfo *my_worker = NULL;

/*
 * courier_worker_attach
 *		Claim this database's entry in the worker table so producers can wake
 *		us.  Returns NULL when another worker already serves the database, or
 *		when it is being dropped.
 */
CourierWorkerInfo *
courier_worker_attach(const char *dbname)
{
	CourierWorkerInfo *free_entry = NULL;

	LWLockAcquire(courier_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < courier_shared->nworkers; i++)
	{
		CourierWorkerInfo *w = &courier_shared->workers[i];

		/* (or the database is being dropped: outbox_dropdb.c) */
		if ((w->pid != 0 && w->dboid == MyDatabaseId) || courier_database_leaving(MyDatabaseId))
		{
			LWLockRelease(courier_shared->lock);
			return NULL;
		}
		if (w->pid == 0 && free_entry == NULL)
			free_entry = w;
	}
	if (free_entry != NULL)
	{
		free_entry->dboid = MyDatabaseId;
		strlcpy(free_entry->dbname, dbname, NAMEDATALEN);
		free_entry->pid = MyProcPid;
		free_entry->procno = COURIER_MY_PROCNO;
		free_entry->started_at = GetCurrentTimestamp();
		strlcpy(free_entry->state, "starting", sizeof(free_entry->state));
	}
	LWLockRelease(courier_shared->lock);
	my_worker = free_entry;
	return free_entry;
}

/*
 * courier_worker_detach
 *		Release the worker table entry (on_shmem_exit of the worker).
 */
void
courier_worker_detach(void)
{
	if (my_worker == NULL)
		return;
	LWLockAcquire(courier_shared->lock, LW_EXCLUSIVE);
	my_worker->pid = 0;
	my_worker->dboid = InvalidOid;
	LWLockRelease(courier_shared->lock);
	my_worker = NULL;
}

/*
 * courier_worker_set_state
 *		Publish what the worker is doing (for courier.worker_status).
 */
void
courier_worker_set_state(const char *state)
{
	if (my_worker == NULL)
		return;
	strlcpy(my_worker->state, state, sizeof(my_worker->state));
	pg_atomic_fetch_add_u64(&my_worker->rounds, 1);
}

/*
 * courier_worker_take_rescan
 *		Did a producer ask for a read from the start?  (Clears the request.)
 */
bool
courier_worker_take_rescan(void)
{
	return my_worker != NULL && pg_atomic_exchange_u32(&my_worker->rescan, 0) != 0;
}

/*
 * courier_worker_take_wake
 *		Let producers wake us again; returns whether one asked to (call after
 *		ResetLatch and before taking a snapshot).
 */
bool
courier_worker_take_wake(void)
{
	return my_worker != NULL && pg_atomic_exchange_u32(&my_worker->wake_pending, 0) != 0;
}

/*
 * Counter slots.  The table (COURIER_MAX_OUTBOXES entries) is shared by the
 * whole cluster and filled by outboxes that any role can create, so:
 *	- only the worker claims a slot, for an outbox it serves (producers only
 *	  look one up to count commits), and frees it when it forgets the outbox
 *	  (dropped or unregistered);
 *	- one database holds at most courier.max_outboxes_per_database slots
 *	  (create_outbox refuses outboxes beyond that number as well);
 *	- when the table is full, slots whose relation is gone (a drop the worker
 *	  did not see: it was not running) or whose database has no worker are
 *	  reclaimed;
 *	- a claimed slot starts from zero, so an OID reused after a drop never
 *	  inherits the old outbox's counters.
 * An outbox without a slot is still delivered; outbox_stats shows its
 * counters as unavailable (courier._counter_slots_exhausted()).
 */
int			courier_max_outboxes_per_database = 256;

/*
 * find_counters
 *		This database's slot of relid, or NULL (caller holds counters_mutex).
 */
static CourierOutboxCounters *
find_counters(Oid relid)
{
	for (int i = 0; i < COURIER_MAX_OUTBOXES; i++)
	{
		CourierOutboxCounters *c = &courier_shared->counters[i];

		if (c->relid == relid && c->dboid == MyDatabaseId)
			return c;
	}
	return NULL;
}

/*
 * reset_counters
 *		Empty a slot and give it to (dboid, relid) (InvalidOid: free it).
 *		Caller holds counters_mutex; the slot's own mutex guards the rest.
 */
static void
reset_counters(CourierOutboxCounters *c, Oid dboid, Oid relid)
{
	SpinLockAcquire(&c->mutex);
	c->delivered = c->failed_attempts = c->retries = c->dead_lettered = c->requests = 0;
	c->rate_window_start = c->last_success_at = c->last_failure_at = 0;
	c->rate_window_count = 0;
	c->delivered_per_second = 0;
	c->last_error[0] = '\0';
	c->status = 0;				/* not looked at yet */
	c->status_since = 0;
	c->status_reason[0] = '\0';
	c->dboid = dboid;
	c->relid = relid;
	SpinLockRelease(&c->mutex);
	pg_atomic_write_u64(&c->commits, 0);
}

/*
 * database_has_worker
 *		Does a running worker serve dboid?
 */
static bool
database_has_worker(Oid dboid)
{
	bool		found = false;

	LWLockAcquire(courier_shared->lock, LW_SHARED);
	for (int i = 0; i < courier_shared->nworkers && !found; i++)
		found = (courier_shared->workers[i].pid != 0 && courier_shared->workers[i].dboid == dboid);
	LWLockRelease(courier_shared->lock);
	return found;
}

/*
 * reclaim_stale_counters
 *		Free the slots of relations of this database that no longer exist and
 *		of databases that no worker serves.  Catalog lookups cannot run under
 *		a spinlock, so candidates are copied first and freed only if they
 *		still belong to the same outbox.  Needs a transaction.
 */
static void
reclaim_stale_counters(void)
{
	Oid			dbs[COURIER_MAX_OUTBOXES];
	Oid			rels[COURIER_MAX_OUTBOXES];
	bool		stale[COURIER_MAX_OUTBOXES];

	SpinLockAcquire(&courier_shared->counters_mutex);
	for (int i = 0; i < COURIER_MAX_OUTBOXES; i++)
	{
		dbs[i] = courier_shared->counters[i].dboid;
		rels[i] = courier_shared->counters[i].relid;
	}
	SpinLockRelease(&courier_shared->counters_mutex);

	for (int i = 0; i < COURIER_MAX_OUTBOXES; i++)
	{
		stale[i] = false;
		if (rels[i] == InvalidOid)
			continue;
		if (dbs[i] == MyDatabaseId)
			stale[i] = !SearchSysCacheExists1(RELOID, ObjectIdGetDatum(rels[i]));
		else
			stale[i] = !database_has_worker(dbs[i]);
	}

	SpinLockAcquire(&courier_shared->counters_mutex);
	for (int i = 0; i < COURIER_MAX_OUTBOXES; i++)
	{
		CourierOutboxCounters *c = &courier_shared->counters[i];

		if (stale[i] && c->dboid == dbs[i] && c->relid == rels[i])
			reset_counters(c, InvalidOid, InvalidOid);
	}
	SpinLockRelease(&courier_shared->counters_mutex);
}

/*
 * claim_counters
 *		Find or take a slot for relid; NULL if this database has its share or
 *		the table is full.
 */
static CourierOutboxCounters *
claim_counters(Oid relid)
{
	CourierOutboxCounters *result;
	CourierOutboxCounters *free_slot = NULL;
	int			mine = 0;

	SpinLockAcquire(&courier_shared->counters_mutex);
	result = find_counters(relid);
	for (int i = 0; i < COURIER_MAX_OUTBOXES && result == NULL; i++)
	{
		CourierOutboxCounters *c = &courier_shared->counters[i];

		if (c->relid == InvalidOid && free_slot == NULL)
			free_slot = c;
		else if (c->relid != InvalidOid && c->dboid == MyDatabaseId)
			mine++;
	}
	if (result == NULL && free_slot != NULL && mine < courier_max_outboxes_per_database)
	{
		reset_counters(free_slot, MyDatabaseId, relid);
		result = free_slot;
	}
	SpinLockRelease(&courier_shared->counters_mutex);
	return result;
}

/*
 * courier_counters_for
 *		The worker's slot for an outbox it serves: found, or claimed (from
 *		zero).  Returns NULL when none can be had (counting stops; delivery
 *		does not).  Needs a transaction (stale slots are looked up).
 */
CourierOutboxCounters *
courier_counters_for(Oid relid)
{
	CourierOutboxCounters *result = claim_counters(relid);

	if (result == NULL && IsTransactionState())
	{
		reclaim_stale_counters();
		result = claim_counters(relid);
	}
	return result;
}

/*
 * courier_counters_lookup
 *		A producer's view: the outbox's slot if the worker gave it one.
 */
CourierOutboxCounters *
courier_counters_lookup(Oid relid)
{
	CourierOutboxCounters *result;

	SpinLockAcquire(&courier_shared->counters_mutex);
	result = find_counters(relid);
	SpinLockRelease(&courier_shared->counters_mutex);
	return result;
}

/*
 * courier_counters_release
 *		The worker forgets an outbox (dropped or unregistered): free its slot.
 */
void
courier_counters_release(CourierOutboxCounters *c, Oid relid)
{
	if (c == NULL)
		return;
	SpinLockAcquire(&courier_shared->counters_mutex);
	if (c->relid == relid && c->dboid == MyDatabaseId)
		reset_counters(c, InvalidOid, InvalidOid);
	SpinLockRelease(&courier_shared->counters_mutex);
}

/*
 * courier_counter_slots_exhausted
 *		courier._counter_slots_exhausted(): can this database's outboxes that
 *		have no counters yet not get any (share used or table full)?  Lets
 *		outbox_stats show "unavailable" instead of zeros.
 */
PG_FUNCTION_INFO_V1(courier_counter_slots_exhausted);
Datum
courier_counter_slots_exhausted(PG_FUNCTION_ARGS)
{
	int			mine = 0;
	bool		any_free = false;

	if (courier_shared == NULL)
		PG_RETURN_BOOL(false);
	SpinLockAcquire(&courier_shared->counters_mutex);
	for (int i = 0; i < COURIER_MAX_OUTBOXES; i++)
	{
		CourierOutboxCounters *c = &courier_shared->counters[i];

		any_free |= (c->relid == InvalidOid);
		mine += (c->relid != InvalidOid && c->dboid == MyDatabaseId);
	}
	SpinLockRelease(&courier_shared->counters_mutex);
	PG_RETURN_BOOL(!any_free || mine >= courier_max_outboxes_per_database);
}

/*
 * courier_counters_record
 *		Add one request's outcome to an outbox's counters: rows delivered,
 *		rows scheduled for a retry, rows moved to the dead letters.
 */
void
courier_counters_record(CourierOutboxCounters *c, uint64 delivered, uint64 retries, uint64 dead,
						const char *error)
{
	TimestampTz now = GetCurrentTimestamp();
	uint64		failed = retries + dead;
	int			errlen = 0;

	if (c == NULL)
		return;
	/* cut on a character boundary: the copy must stay valid text */
	if (error)
		errlen = pg_mbcliplen(error, strlen(error), COURIER_ERRLEN - 1);
	SpinLockAcquire(&c->mutex);
	c->requests++;
	c->delivered += delivered;
	c->failed_attempts += failed;
	c->retries += retries;
	c->dead_lettered += dead;
	c->rate_window_count += delivered;
	if (TimestampDifferenceExceeds(c->rate_window_start, now, 1000))
	{
		long		ms = TimestampDifferenceMilliseconds(c->rate_window_start, now);

		c->delivered_per_second = (c->rate_window_start == 0 || ms <= 0) ? 0 :
			(double) c->rate_window_count * 1000.0 / ms;
		c->rate_window_start = now;
		c->rate_window_count = 0;
	}
	if (delivered > 0)
		c->last_success_at = now;
	if (failed > 0)
	{
		c->last_failure_at = now;
		if (error)
		{
			memcpy(c->last_error, error, errlen);
			c->last_error[errlen] = '\0';
		}
	}
	SpinLockRelease(&c->mutex);
}

/*
 * courier_counters_set_status
 *		Publish an outbox's health: status, why (NULL when ok) and since when.
 */
void
courier_counters_set_status(CourierOutboxCounters *c, CourierOutboxStatus status, const char *reason,
							TimestampTz since)
{
	if (c == NULL)
		return;
	SpinLockAcquire(&c->mutex);
	c->status = status;
	c->status_since = since;
	strlcpy(c->status_reason, reason ? reason : "", COURIER_ERRLEN);
	SpinLockRelease(&c->mutex);
}

/* ---- SQL-callable readers of the shared state ---- */


PG_FUNCTION_INFO_V1(courier_worker_counters);
PG_FUNCTION_INFO_V1(courier_worker_status);

/*
 * courier_worker_counters
 *		courier._worker_counters(): this database's per-outbox counters.
 */
Datum
courier_worker_counters(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	if (courier_shared == NULL)
		PG_RETURN_VOID();
	for (int i = 0; i < COURIER_MAX_OUTBOXES; i++)
	{
		CourierOutboxCounters c;
		static const char *const status_names[] = {"ok", "broken", "degraded"};
		Datum		values[13];
		bool		nulls[13] = {0};

		SpinLockAcquire(&courier_shared->counters[i].mutex);
		memcpy(&c, &courier_shared->counters[i], sizeof(c));
		SpinLockRelease(&courier_shared->counters[i].mutex);
		if (c.relid == InvalidOid || c.dboid != MyDatabaseId)
			continue;
		/* another role's outbox: its errors may quote what its endpoint answered */
		{
			bool		missing = false;

			if (pg_class_aclcheck_ext(c.relid, GetUserId(), ACL_SELECT, &missing) != ACLCHECK_OK || missing)
				continue;
		}
		values[0] = ObjectIdGetDatum(c.relid);
		values[1] = Int64GetDatum((int64) c.delivered);
		values[2] = Int64GetDatum((int64) c.failed_attempts);
		values[3] = Int64GetDatum((int64) c.retries);
		values[4] = Int64GetDatum((int64) c.dead_lettered);
		values[5] = Int64GetDatum((int64) c.requests);
		values[6] = Float8GetDatum(c.delivered_per_second);
		values[7] = CStringGetTextDatum(c.last_error);
		nulls[7] = (c.last_error[0] == '\0');
		values[8] = TimestampTzGetDatum(c.last_success_at);
		nulls[8] = (c.last_success_at == 0);
		values[9] = TimestampTzGetDatum(c.last_failure_at);
		nulls[9] = (c.last_failure_at == 0);
		values[10] = CStringGetTextDatum(status_names[c.status >= 0 && c.status < lengthof(status_names) ? c.status : 1]);
		values[11] = CStringGetTextDatum(c.status_reason);
		nulls[11] = (c.status_reason[0] == '\0');
		values[12] = TimestampTzGetDatum(c.status_since);
		nulls[12] = (c.status_since == 0);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	PG_RETURN_VOID();
}

/*
 * courier_worker_status
 *		courier.worker_status(): the delivery workers and what they are doing.
 */
Datum
courier_worker_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	if (courier_shared == NULL)
		PG_RETURN_VOID();
	LWLockAcquire(courier_shared->lock, LW_SHARED);
	for (int i = 0; i < courier_shared->nworkers; i++)
	{
		CourierWorkerInfo *w = &courier_shared->workers[i];
		Datum		values[5];
		bool		nulls[5] = {0};

		if (w->pid == 0)
			continue;
		values[0] = DirectFunctionCall1(namein, CStringGetDatum(w->dbname));
		values[1] = Int32GetDatum(w->pid);
		values[2] = CStringGetTextDatum(w->state);
		values[3] = TimestampTzGetDatum(w->started_at);
		values[4] = Int64GetDatum((int64) pg_atomic_read_u64(&w->rounds));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(courier_shared->lock);
	PG_RETURN_VOID();
}
