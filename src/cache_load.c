/*-------------------------------------------------------------------------
 *
 * cache_load.c
 *	  courier.cache_get_or_load(): read-through with stampede protection.
 *
 * On a miss the first caller inserts a LOADING entry for the key (its key
 * only, no value) stamped with a fresh load id, releases the partition lock
 * and runs the loader through SPI.  Concurrent callers for the same key find
 * the LOADING entry and sleep on the partition's condition variable until
 * the load ends, then read.  Exactly one loader runs per key at a time.
 *
 * How a load ends:
 *	- success: the LOADING entry is replaced by the value (unless the key
 *	  was deleted or invalidated meanwhile, see below); waiters read it;
 *	- the loader returned no row or NULL: the entry becomes a FAILED marker
 *	  with no error code for that load id; its waiters return NULL too;
 *	- the loader raised an error: the entry becomes a FAILED marker carrying
 *	  the SQLSTATE and message; each waiter of that load raises it;
 *	- the loading backend exited (pg_terminate_backend, FATAL): a
 *	  before_shmem_exit callback removes the LOADING entry; waiters retry and
 *	  one of them becomes the loader.  Waiters also check every second that
 *	  the loader's PID is alive and reclaim the entry if it is not, and give
 *	  up after courier.cache_load_timeout.
 * FAILED markers are invisible to readers and are replaced by the next load.
 *
 * Stale values.  A delete or commit-time invalidation that finds a LOADING
 * entry marks it invalidated: the loader may have read the row before the
 * change committed, so it returns its result to its own caller but does not
 * store it, and waiters load again.  In READ COMMITTED the loader's snapshot
 * is taken after the entry exists, so this is exact.  Under REPEATABLE READ
 * or SERIALIZABLE the snapshot may predate the entry, so the loader also
 * refuses to store when anything in the partition was deleted since its
 * transaction started.  A loader whose own transaction has pending
 * invalidations (it wrote a watched table) never stores either: it may have
 * read its own uncommitted rows.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "parser/parse_func.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/procarray.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "pg_courier.h"
#include "cache.h"

PG_FUNCTION_INFO_V1(courier_cache_get_or_load);
PG_FUNCTION_INFO_V1(courier_cache_get_or_load_jsonb);

/* longest loader error message kept for waiters */
#define CACHE_MAX_ERROR_BYTES	1000

typedef enum ProbeResult
{
	PROBE_HIT,					/* value copied out */
	PROBE_NULL,					/* the awaited load returned NULL */
	PROBE_FAILED,				/* the awaited load failed */
	PROBE_WAIT,					/* another backend is loading */
	PROBE_CLAIMED,				/* we are the loader now */
	PROBE_RECURSIVE,			/* we are already loading this key */
	PROBE_NO_ROOM				/* could not insert the LOADING entry */
} ProbeResult;

typedef struct LoadKey
{
	const char *key;
	int			keylen;
	uint32		hash;
	Oid			space;			/* key space (cache_space) of the call */
	CachePartition *p;
} LoadKey;

/* The load this backend is running, for the exit callback. */
static struct
{
	bool		active;
	uint32		hash;
	Oid			space;
	uint64		load_id;
	int			keylen;
	char		key[CACHE_MAX_KEY_BYTES];
}			my_load;
static bool exit_callback_registered = false;

/*
 * probe
 *		One look at the key under the partition lock: read it, wait for the
 *		load in progress, or claim the load.  *waiting_for is the load id the
 *		caller waits for (0: none yet); on PROBE_CLAIMED it is our load id; on
 *		PROBE_WAIT *loader_pid says who loads.
 */
static ProbeResult
probe(LoadKey *lk, bool first, uint64 *waiting_for, int *loader_pid, CacheValue *v, int *sqlstate)
{
	CachePartition *p = lk->p;
	int32		idx;
	CacheEntry *e;
	ProbeResult result;

	cache_space = lk->space;	/* a loader run meanwhile may have changed it */
	cache_lock(p);
	idx = cache_lookup(p, lk->hash, lk->key, lk->keylen);
	e = idx >= 0 ? &p->entries[idx] : NULL;
	if (e && e->state == CACHE_VALID && e->expires != 0 && e->expires <= cache_now())
	{
		cache_remove(p, idx);
		p->c.expirations++;
		e = NULL;
	}

	if (e && e->state == CACHE_VALID)
	{
		cache_move_front(p, idx);
		v->type = e->type;
		v->data = cache_copy_value(p, e);
		result = PROBE_HIT;
	}
	else if (e && e->state == CACHE_FAILED && *waiting_for != 0 && e->load_id == *waiting_for)
	{
		v->type = CACHE_TYPE_TEXT;
		v->data = cache_copy_value(p, e);
		*sqlstate = e->errcode;
		result = e->errcode == 0 ? PROBE_NULL : PROBE_FAILED;
	}
	else if (e && e->state == CACHE_LOADING && e->loader_pid == MyProcPid)
		result = PROBE_RECURSIVE;
	else if (e && e->state == CACHE_LOADING)
	{
		if (*waiting_for == 0)
			p->c.stampede_waits++;
		*waiting_for = e->load_id;
		*loader_pid = e->loader_pid;
		result = PROBE_WAIT;
	}
	else
	{
		/* absent, or a FAILED marker of an earlier load: load it ourselves */
		if (e)
			cache_remove(p, idx);
		idx = cache_insert(p, lk->hash, lk->key, lk->keylen, NULL, 0, CACHE_TYPE_TEXT, CACHE_LOADING);
		if (idx >= 0)
		{
			e = &p->entries[idx];
			e->loader_pid = MyProcPid;
			e->load_id = pg_atomic_add_fetch_u64(&cache_shared->load_seq, 1);
			*waiting_for = e->load_id;
			result = PROBE_CLAIMED;
		}
		else
			result = PROBE_NO_ROOM;
	}
	if (first)
	{
		if (result == PROBE_HIT)
			p->c.hits++;
		else
			p->c.misses++;
	}
	LWLockRelease(p->lock);
	return result;
}

/*
 * end_load
 *		Replace our LOADING entry (if still ours) by the value, by a FAILED
 *		marker (value = NULL: the message, errcode 0 for a NULL result), or
 *		by nothing (store = false), and wake the waiters.  Never raises an
 *		error: it runs from PG_CATCH and at exit.
 */
static void
end_load(CachePartition *p, uint32 hash, const char *key, int keylen, uint64 load_id,
		 bool store, CacheValue *v, TimestampTz expires, int sqlstate, const char *msg)
{
	int32		idx;
	bool		held = LWLockHeldByMe(p->lock);

	if (!held)
		cache_lock(p);
	idx = cache_lookup(p, hash, key, keylen);
	if (idx >= 0 && p->entries[idx].state == CACHE_LOADING && p->entries[idx].load_id == load_id)
	{
		bool		invalidated = p->entries[idx].invalidated;

		cache_remove(p, idx);
		if (v && store && !invalidated)
		{
			idx = cache_insert(p, hash, key, keylen, VARDATA(v->data), VARSIZE(v->data) - VARHDRSZ,
							   v->type, CACHE_VALID);
			if (idx >= 0)
			{
				p->entries[idx].expires = expires;
				p->c.sets++;
			}
		}
		else if (!v && store)
		{
			int			len = msg ? Min((int) strlen(msg), CACHE_MAX_ERROR_BYTES) : 0;

			idx = cache_insert(p, hash, key, keylen, msg, len, CACHE_TYPE_TEXT, CACHE_FAILED);
			if (idx >= 0)
			{
				p->entries[idx].load_id = load_id;
				p->entries[idx].errcode = sqlstate;
			}
		}
		p->c.loads++;
		if (sqlstate != 0)
			p->c.load_failures++;
	}
	if (!held)
		LWLockRelease(p->lock);
	ConditionVariableBroadcast(&p->cv);
}

/*
 * cache_load_exit
 *		before_shmem_exit callback: a backend that exits while loading (it
 *		was terminated) withdraws its LOADING entry so waiters retry at once.
 */
static void
cache_load_exit(int code, Datum arg)
{
	if (!my_load.active || cache_shared == NULL)
		return;
	my_load.active = false;
	cache_space = my_load.space;
	end_load(cache_partition(my_load.hash), my_load.hash, my_load.key, my_load.keylen,
			 my_load.load_id, false, NULL, 0, 0, NULL);
}

/*
 * reclaim_if_dead
 *		A waiter's check that the loader still exists; if not, remove its
 *		LOADING entry so that the next probe claims the load.
 */
static void
reclaim_if_dead(LoadKey *lk, uint64 load_id, int loader_pid)
{
	if (BackendPidGetProc(loader_pid) != NULL)
		return;
	cache_space = lk->space;
	end_load(lk->p, lk->hash, lk->key, lk->keylen, load_id, false, NULL, 0, 0, NULL);
}

/*
 * loader_query
 *		The SQL to run: the loader itself, or "SELECT fn($1)" when the loader
 *		is a function name (no spaces, parentheses or semicolons), resolved
 *		now so a wrong name is reported as such.
 */
static char *
loader_query(const char *loader)
{
	Oid			argtypes[1] = {TEXTOID};
	Oid			fn;

	if (strpbrk(loader, " \t\r\n();") != NULL)
		return pstrdup(loader);
	fn = LookupFuncName(courier_qualified_name_list(loader), 1, argtypes, false);
	return psprintf("SELECT %s($1)",
					quote_qualified_identifier(get_namespace_name(get_func_namespace(fn)),
											   get_func_name(fn)));
}

/*
 * run_loader
 *		Run the loader with the key as $1; returns false for no row or NULL,
 *		else the value (jsonb and bytea kept as such, anything else as text)
 *		allocated in the caller's memory context.
 */
static bool
run_loader(text *loader, text *key, CacheValue *v)
{
	MemoryContext callercxt = CurrentMemoryContext;
	char	   *query = loader_query(text_to_cstring(loader));
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1] = {PointerGetDatum(key)};
	TupleDesc	desc;
	Datum		value;
	bool		isnull;
	Oid			type;
	int			ret;

	SPI_connect();
	ret = SPI_execute_with_args(query, 1, argtypes, args, NULL, false, 2);
	if (ret < 0 || SPI_tuptable == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cache loader must be a query that returns one value"),
				 errhint("For example: 'SELECT status FROM orders WHERE id = split_part($1, '':'', 2)::int'.")));
	desc = SPI_tuptable->tupdesc;
	if (desc->natts != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cache loader returned %d columns, expected one", desc->natts)));
	if (SPI_processed > 1)
		ereport(ERROR,
				(errcode(ERRCODE_CARDINALITY_VIOLATION),
				 errmsg("cache loader returned more than one row")));
	if (SPI_processed == 0)
	{
		SPI_finish();
		return false;
	}
	value = SPI_getbinval(SPI_tuptable->vals[0], desc, 1, &isnull);
	if (isnull)
	{
		SPI_finish();
		return false;
	}
	type = SPI_gettypeid(desc, 1);
	if (type == JSONBOID || type == BYTEAOID || type == TEXTOID)
	{
		MemoryContext spicxt = MemoryContextSwitchTo(callercxt);

		/* a detoasted copy always has a 4-byte header (end_load reads VARSIZE) */
		v->data = PG_DETOAST_DATUM_COPY(value);
		v->type = type == JSONBOID ? CACHE_TYPE_JSONB : type == BYTEAOID ? CACHE_TYPE_BYTEA : CACHE_TYPE_TEXT;
		MemoryContextSwitchTo(spicxt);
	}
	else
	{
		char	   *s = SPI_getvalue(SPI_tuptable->vals[0], desc, 1);
		MemoryContext spicxt = MemoryContextSwitchTo(callercxt);

		v->data = (struct varlena *) cstring_to_text(s);
		v->type = CACHE_TYPE_TEXT;
		MemoryContextSwitchTo(spicxt);
	}
	SPI_finish();
	return true;
}

/*
 * load
 *		Run the loader as the claimed loader of lk (load id load_id) and end
 *		the load whatever happens.  Returns false for a NULL result.
 */
static bool
load(LoadKey *lk, text *key, text *loader, Interval *ttl, bool ttl_null, uint64 load_id,
	 CacheValue *v)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool found = false;
	bool		store;

	my_load.hash = lk->hash;
	my_load.space = lk->space;
	my_load.load_id = load_id;
	my_load.keylen = lk->keylen;
	memcpy(my_load.key, lk->key, lk->keylen);
	my_load.active = true;

	PG_TRY();
	{
		found = run_loader(loader, key, v);
		if (found)
			cache_check_value(VARSIZE(v->data) - VARHDRSZ);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		my_load.active = false;
		cache_space = lk->space;	/* the loader may have used the cache */
		end_load(lk->p, lk->hash, lk->key, lk->keylen, load_id, true, NULL, 0,
				 edata->sqlerrcode ? edata->sqlerrcode : ERRCODE_INTERNAL_ERROR, edata->message);
		PG_RE_THROW();
	}
	PG_END_TRY();
	my_load.active = false;
	cache_space = lk->space;	/* the loader may have used the cache */

	/* see the header comment: results that may be stale are not stored */
	store = !cache_inval_pending();
	if (store && IsolationUsesXactSnapshot())
	{
		LWLockAcquire(lk->p->lock, LW_SHARED);
		store = lk->p->last_delete < GetCurrentTransactionStartTimestamp();
		LWLockRelease(lk->p->lock);
	}
	if (!found)
		end_load(lk->p, lk->hash, lk->key, lk->keylen, load_id, true, NULL, 0, 0, NULL);
	else
		end_load(lk->p, lk->hash, lk->key, lk->keylen, load_id, store, v,
				 cache_expiry(ttl, ttl_null, cache_now()), 0, NULL);
	return found;
}

/*
 * get_or_load
 *		The body of courier.cache_get_or_load*(key, loader, ttl).
 */
static bool
get_or_load(FunctionCallInfo fcinfo, CacheValue *v)
{
	text	   *key;
	text	   *loader;
	Interval   *ttl = PG_ARGISNULL(2) ? NULL : PG_GETARG_INTERVAL_P(2);
	LoadKey		lk;
	uint64		waiting_for = 0;
	int			loader_pid = 0;
	int			sqlstate = 0;
	bool		sleeping = false;
	bool		first = true;
	TimestampTz deadline = GetCurrentTimestamp() + (int64) cache_load_timeout_ms * 1000;

	/* a loader that exits must release its waiters: see cache_load_exit */
	if (!exit_callback_registered)
	{
		before_shmem_exit(cache_load_exit, (Datum) 0);
		exit_callback_registered = true;
	}

	cache_check_available();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("cache key must not be NULL")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("cache loader must not be NULL")));
	key = PG_GETARG_TEXT_PP(0);
	loader = PG_GETARG_TEXT_PP(1);
	lk.key = VARDATA_ANY(key);
	lk.keylen = VARSIZE_ANY_EXHDR(key);
	cache_check_key(lk.keylen);
	(void) cache_expiry(ttl, ttl == NULL, 0);	/* validate the ttl up front */
	lk.space = cache_space;
	lk.hash = cache_hash(lk.key, lk.keylen);
	lk.p = cache_partition(lk.hash);

	for (;;)
	{
		ProbeResult r = probe(&lk, first, &waiting_for, &loader_pid, v, &sqlstate);
		TimestampTz now;

		first = false;
		if (r != PROBE_WAIT && sleeping)
			ConditionVariableCancelSleep();
		switch (r)
		{
			case PROBE_HIT:
				return true;
			case PROBE_NULL:
				return false;
			case PROBE_FAILED:
				ereport(ERROR,
						(errcode(sqlstate),
						 errmsg("cache loader for key \"%s\" failed in another session: %s",
								text_to_cstring(key), text_to_cstring((text *) v->data))));
				break;
			case PROBE_RECURSIVE:
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_IN_USE),
						 errmsg("cache loader for key \"%s\" calls itself", text_to_cstring(key))));
				break;
			case PROBE_NO_ROOM:
				ereport(ERROR,
						(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
						 errmsg("no room in the cache to load key \"%s\"", text_to_cstring(key)),
						 errdetail("Every entry of its cache partition is being loaded.")));
				break;
			case PROBE_CLAIMED:
				return load(&lk, key, loader, ttl, ttl == NULL, waiting_for, v);
			case PROBE_WAIT:
				now = GetCurrentTimestamp();
				if (now >= deadline)
				{
					ConditionVariableCancelSleep();
					ereport(ERROR,
							(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
							 errmsg("timed out waiting for another session to load cache key \"%s\"",
									text_to_cstring(key)),
							 errdetail("The loader runs in the backend with PID %d.", loader_pid),
							 errhint("Raise courier.cache_load_timeout, or make the loader faster.")));
				}
				if (!sleeping)
				{
					/* prepare first, then re-check: no wake-up can be missed */
					ConditionVariablePrepareToSleep(&lk.p->cv);
					sleeping = true;
					continue;
				}
				if (ConditionVariableTimedSleep(&lk.p->cv, Min(1000, (deadline - now) / 1000 + 1),
												PG_WAIT_EXTENSION))
					reclaim_if_dead(&lk, waiting_for, loader_pid);
				break;
		}
	}
}

/*
 * courier_cache_get_or_load / _jsonb
 *		courier.cache_get_or_load*(key, loader, ttl): the cached value, or the
 *		loader's result (stored with ttl) when there was none.
 */
Datum
courier_cache_get_or_load(PG_FUNCTION_ARGS)
{
	CacheValue	v;

	if (!get_or_load(fcinfo, &v))
		PG_RETURN_NULL();
	PG_RETURN_DATUM(cache_value_to_text(&v));
}

Datum
courier_cache_get_or_load_jsonb(PG_FUNCTION_ARGS)
{
	CacheValue	v;

	if (!get_or_load(fcinfo, &v))
		PG_RETURN_NULL();
	PG_RETURN_DATUM(cache_value_to_jsonb(&v));
}
