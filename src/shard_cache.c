/*-------------------------------------------------------------------------
 *
 * shard_cache.c
 *	  Backend-local cache of rings and maps, invalidated through relcache
 *	  invalidation messages.
 *
 * Routing must not scan a table per call, and pg_courier's shard routing has
 * no shared memory, so each backend keeps the rings and maps it uses in a
 * memory context of its own.  Keeping it correct rests on PostgreSQL's own
 * cache-invalidation machinery:
 *
 *	- a statement-level trigger on every ring and map table calls
 *	  CacheInvalidateRelcacheByRelid() on the changed table, which queues a
 *	  relcache invalidation message in the writing transaction;
 *	- the message is applied locally at the next command boundary (so the
 *	  writing session sees its own change), broadcast to every backend only
 *	  at commit, and discarded on abort (other sessions never see an
 *	  uncommitted ring);
 *	- every backend applies pending messages at transaction start and when it
 *	  takes a lock; our callback then bumps courier_shard_generation;
 *	- a cache entry is built from the latest committed data (a fresh snapshot
 *	  taken after the messages were applied) and is thrown away if the
 *	  generation moved while it was being built.
 *
 * A route is therefore a generation comparison plus the lookup itself.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"

#include "pg_courier.h"
#include "shard.h"

PG_FUNCTION_INFO_V1(courier_shard_invalidate);

/* The tables whose changes invalidate the cache. */
static const char *const watched_names[] = {
	"rings", "ring_points", "maps", "map_ranges", "map_keys"
};

#define N_WATCHED	lengthof(watched_names)

uint64		courier_shard_generation = 1;

static bool callback_registered = false;
static bool cache_valid = false;
static Oid	watched_oids[N_WATCHED];
static MemoryContext cache_cxt = NULL;

/*
 * shard_relcache_callback
 *		Relcache invalidation: a change to one of our tables (or a full reset,
 *		relid = InvalidOid) makes everything cached stale.  Only flags are set
 *		here: callbacks may run in the middle of a cache build, and must not
 *		access catalogs.
 */
static void
shard_relcache_callback(Datum arg, Oid relid)
{
	if (!cache_valid)
		return;
	if (OidIsValid(relid))
	{
		bool		ours = false;

		for (int i = 0; i < (int) N_WATCHED; i++)
			ours |= (watched_oids[i] == relid);
		if (!ours)
			return;
	}
	cache_valid = false;
	courier_shard_generation++;
}

/*
 * courier_shard_cache_setup
 *		Register the callback (once per backend: the number of relcache
 *		callbacks is limited, so only backends that route use one).
 */
void
courier_shard_cache_setup(void)
{
	if (callback_registered)
		return;
	CacheRegisterRelcacheCallback(shard_relcache_callback, (Datum) 0);
	cache_cxt = AllocSetContextCreate(TopMemoryContext, "pg_courier shard cache",
									  ALLOCSET_DEFAULT_SIZES);
	callback_registered = true;
}

/*
 * courier_shard_cache_context
 *		The context of the current generation, emptied first if the previous
 *		generation was invalidated.  Also (re)learns the watched tables' OIDs,
 *		which change when the extension is dropped and created again.
 */
MemoryContext
courier_shard_cache_context(void)
{
	courier_shard_cache_setup();
	if (!cache_valid)
	{
		Oid			nsp = get_namespace_oid(COURIER_SCHEMA, false);

		MemoryContextReset(cache_cxt);
		for (int i = 0; i < (int) N_WATCHED; i++)
		{
			watched_oids[i] = get_relname_relid(watched_names[i], nsp);
			if (!OidIsValid(watched_oids[i]))
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_TABLE),
						 errmsg("pg_courier table %s.%s is missing", COURIER_SCHEMA, watched_names[i]),
						 errhint("Reinstall the extension: DROP EXTENSION pg_courier; CREATE EXTENSION pg_courier.")));
		}
		cache_valid = true;
	}
	return cache_cxt;
}

/*
 * courier_shard_cache_query
 *		Execute a read-only query on the latest committed data (plus this
 *		transaction's own changes).  In parallel mode no new snapshot may be
 *		taken; the leader's active snapshot is used there.
 */
void
courier_shard_cache_query(const char *sql, int nargs, Oid *argtypes, Datum *values)
{
	Snapshot	snap = IsInParallelMode() ? GetActiveSnapshot() : GetLatestSnapshot();
	int			rc;

	PushActiveSnapshot(snap);
	rc = SPI_execute_with_args(sql, nargs, argtypes, values, NULL, true, 0);
	PopActiveSnapshot();
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "pg_courier shard cache query failed: %s", SPI_result_code_string(rc));
}

/*
 * courier_shard_check_name
 *		Ring and map names must not be NULL (routing with a NULL name is a
 *		programming error, not "no route").
 */
void
courier_shard_check_name(const char *what, bool isnull)
{
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s name must not be NULL", what)));
}

/*
 * courier_shard_invalidate
 *		Statement-level trigger on the ring and map tables: queue a relcache
 *		invalidation of the changed table (sent to other backends at commit).
 */
Datum
courier_shard_invalidate(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("courier._shard_invalidate() must be called as a trigger")));
	CacheInvalidateRelcacheByRelid(RelationGetRelid(trigdata->tg_relation));
	return PointerGetDatum(NULL);
}
