/*-------------------------------------------------------------------------
 *
 * cache.c
 *	  The shared-memory cache: GUCs, shared memory, and the get/set/delete
 *	  SQL functions.
 *
 * A bounded key/value cache in shared memory, shared by every backend of
 * the server, namespaced per database.  See cache.h for the layout,
 * cache_store.c for the partitions, cache_load.c for get_or_load (stampede
 * protection) and cache_inval.c for invalidation on commit.
 *
 * Hot path.  cache_get hashes the key, takes its partition's LWLock
 * exclusively (an uncontended exclusive acquisition costs one atomic
 * operation, the same as a shared one, and lets a hit move the entry to the
 * front of the LRU list in place), copies the value into one palloc'd
 * varlena and releases the lock.  No SPI, no catalog access, one palloc.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/pg_prng.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg_courier.h"
#include "cache.h"
#include "key_space.h"

PG_FUNCTION_INFO_V1(courier_cache_set_text);
PG_FUNCTION_INFO_V1(courier_cache_set_jsonb);
PG_FUNCTION_INFO_V1(courier_cache_set_bytea);
PG_FUNCTION_INFO_V1(courier_cache_get);
PG_FUNCTION_INFO_V1(courier_cache_get_jsonb);
PG_FUNCTION_INFO_V1(courier_cache_get_bytea);
PG_FUNCTION_INFO_V1(courier_cache_delete);
PG_FUNCTION_INFO_V1(courier_cache_delete_prefix);
PG_FUNCTION_INFO_V1(courier_cache_clear);
PG_FUNCTION_INFO_V1(courier_cache_touch);

CacheShared *cache_shared = NULL;

/* GUCs */
static int	cache_size_kb = 64 * 1024;
static int	cache_max_entries = 0;
static int	cache_max_value_bytes = 1024 * 1024;
static int	cache_partitions = 16;
int			cache_default_ttl_s = 0;
double		cache_ttl_jitter = 0.0;
int			cache_load_timeout_ms = 30000;

/* the layout computed from the GUCs (same in every process) */
typedef struct CacheLayout
{
	int			npartitions;
	int32		nentries;
	int32		nchunks;
	int32		nbuckets;
	Size		partition_size;
	int			max_value_bytes;
} CacheLayout;

/*
 * check_cache_size
 *		0 (disabled) or at least 1MB.
 */
static bool
check_cache_size(int *newval, void **extra, GucSource source)
{
	if (*newval != 0 && *newval < 1024)
	{
		GUC_check_errdetail("courier.cache_size must be 0 (disabled) or at least 1MB.");
		return false;
	}
	return true;
}

/*
 * courier_cache_init
 *		Define the cache GUCs (called from _PG_init).  The sizing GUCs exist
 *		only when preloaded: without preload there is no cache to size.
 */
void
courier_cache_init(void)
{
	DefineCustomIntVariable("courier.cache_default_ttl",
							"Time to live of entries stored without a ttl (0: no expiry).",
							NULL,
							&cache_default_ttl_s,
							0, 0, INT_MAX,
							PGC_USERSET, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomRealVariable("courier.cache_ttl_jitter",
							 "Random spread of TTLs, as a fraction (0.1: +/- 10%).",
							 "Spreads the expiry of entries stored together so they are not reloaded together.",
							 &cache_ttl_jitter,
							 0.0, 0.0, 0.9,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("courier.cache_load_timeout",
							"How long cache_get_or_load waits for another session's loader.",
							NULL,
							&cache_load_timeout_ms,
							30000, 10, INT_MAX,
							PGC_USERSET, GUC_UNIT_MS,
							NULL, NULL, NULL);

	/* PostgreSQL allows PGC_POSTMASTER variables only at preload (FATAL otherwise) */
	if (!process_shared_preload_libraries_in_progress)
		return;
	DefineCustomIntVariable("courier.cache_size",
							"Shared memory used by the cache (0 disables it).",
							"Everything the cache stores, bookkeeping included, fits in this much memory.",
							&cache_size_kb,
							64 * 1024, 0, INT_MAX / 2,
							PGC_POSTMASTER, GUC_UNIT_KB,
							check_cache_size, NULL, NULL);
	DefineCustomIntVariable("courier.cache_max_entries",
							"Maximum number of cache entries (0: bounded by courier.cache_size only).",
							NULL,
							&cache_max_entries,
							0, 0, INT_MAX / 2,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.cache_max_value_bytes",
							"Largest value the cache accepts; larger values are refused with an error.",
							NULL,
							&cache_max_value_bytes,
							1024 * 1024, 16, MaxAllocSize / 2,
							PGC_POSTMASTER, GUC_UNIT_BYTE,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.cache_partitions",
							"Number of lock partitions of the cache.",
							"Each has its own lock and LRU list; fewer are used for small caches.",
							&cache_partitions,
							16, 1, 1024,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
}

/*
 * compute_layout
 *		Partitions and their sizes from the GUCs.  Small max_entries use fewer
 *		partitions (so that e.g. 3 is an exact LRU of 3 entries); partitions
 *		are halved until one can hold the largest value.
 */
static void
compute_layout(CacheLayout *l)
{
	Size		total = (Size) cache_size_kb * 1024;
	int			n = cache_partitions;

	if (cache_max_entries > 0)
		n = Min(n, Max(1, cache_max_entries / 256));
	for (;;)
	{
		Size		header = MAXALIGN(offsetof(CacheShared, partitions) + n * sizeof(CachePartition *));
		Size		per = (total - header) / n - PG_CACHE_LINE_SIZE;
		int64		room;

		cache_partition_layout(n, per, cache_max_entries, &l->nentries, &l->nchunks, &l->nbuckets);
		room = (int64) l->nchunks * CACHE_CHUNK_DATA - CACHE_MAX_KEY_BYTES;
		if (room >= cache_max_value_bytes || n == 1)
		{
			l->npartitions = n;
			l->max_value_bytes = (int) Min((int64) cache_max_value_bytes, room);
			l->partition_size = cache_partition_size(l->nentries, l->nchunks, l->nbuckets);
			return;
		}
		n /= 2;
	}
}

/*
 * courier_cache_shmem_size
 *		Bytes of shared memory the cache uses (at most courier.cache_size).
 */
Size
courier_cache_shmem_size(void)
{
	CacheLayout l;

	if (cache_size_kb == 0)
		return 0;
	compute_layout(&l);
	return add_size(MAXALIGN(offsetof(CacheShared, partitions) + l.npartitions * sizeof(CachePartition *)),
					mul_size(l.npartitions, l.partition_size + PG_CACHE_LINE_SIZE));
}

/*
 * courier_cache_shmem_request
 *		Request the cache's memory and one LWLock per partition.
 */
void
courier_cache_shmem_request(void)
{
	CacheLayout l;

	if (cache_size_kb == 0)
		return;
	compute_layout(&l);
	if (l.nchunks < 16 || l.max_value_bytes < 16)
		ereport(FATAL,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("courier.cache_size (%dkB) is too small for courier.cache_max_entries (%d)",
						cache_size_kb, cache_max_entries),
				 errhint("Raise courier.cache_size or lower courier.cache_max_entries.")));
	RequestAddinShmemSpace(courier_cache_shmem_size());
	RequestNamedLWLockTranche(CACHE_TRANCHE, l.npartitions);
}

/*
 * courier_cache_shmem_init
 *		Create or attach the cache (caller holds AddinShmemInitLock).
 */
void
courier_cache_shmem_init(void)
{
	CacheLayout l;
	bool		found;
	char	   *mem;
	LWLockPadded *locks;

	if (cache_size_kb == 0)
		return;
	compute_layout(&l);
	cache_shared = ShmemInitStruct("pg_courier cache", courier_cache_shmem_size(), &found);
	if (found)
		return;

	cache_shared->npartitions = l.npartitions;
	cache_shared->max_value_bytes = l.max_value_bytes;
	cache_shared->total_bytes = courier_cache_shmem_size();
	pg_atomic_init_u64(&cache_shared->load_seq, 0);
	pg_atomic_init_u64(&cache_shared->clock_offset, 0);
	locks = GetNamedLWLockTranche(CACHE_TRANCHE);
	mem = (char *) cache_shared + MAXALIGN(offsetof(CacheShared, partitions) +
										   l.npartitions * sizeof(CachePartition *));
	for (int i = 0; i < l.npartitions; i++)
	{
		CachePartition *p = (CachePartition *) CACHELINEALIGN(mem);

		cache_partition_init(p, l.nentries, l.nchunks, l.nbuckets);
		p->lock = &locks[i].lock;
		cache_shared->partitions[i] = p;
		mem = (char *) p + l.partition_size;
	}
}

/*
 * cache_check_available
 *		Error out, with a hint, when there is no cache to use; otherwise set
 *		the key space of this call (every SQL entry point starts here).
 */
void
cache_check_available(void)
{
	if (likely(cache_shared != NULL))
	{
		cache_space = courier_key_space();
		return;
	}
	courier_require_preload("the courier cache");
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("the courier cache is disabled"),
			 errhint("Set courier.cache_size to a non-zero size and restart the server.")));
}

/*
 * cache_now
 *		The cache's clock: real time plus the test-only offset.
 */
TimestampTz
cache_now(void)
{
	return GetCurrentTimestamp() + (int64) pg_atomic_read_u64(&cache_shared->clock_offset);
}

/*
 * cache_expiry
 *		When an entry stored now with this ttl expires (0: never).  A NULL
 *		ttl means courier.cache_default_ttl; courier.cache_ttl_jitter spreads
 *		the result.
 */
TimestampTz
cache_expiry(Interval *ttl, bool ttl_null, TimestampTz now)
{
	int64		us;

	if (ttl_null)
	{
		if (cache_default_ttl_s == 0)
			return 0;
		us = (int64) cache_default_ttl_s * USECS_PER_SEC;
	}
	else
	{
		us = ttl->time + ttl->day * USECS_PER_DAY + (int64) ttl->month * DAYS_PER_MONTH * USECS_PER_DAY;
		if (us <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("cache ttl must be positive"),
					 errhint("Pass NULL for courier.cache_default_ttl, or delete the key with courier.cache_delete().")));
	}
	if (cache_ttl_jitter > 0)
		us += (int64) (us * cache_ttl_jitter * (2.0 * pg_prng_double(&pg_global_prng_state) - 1.0));
	return now + Max(us, 1);
}

/*
 * cache_check_key / cache_check_value
 *		Refuse keys and values the cache will not hold.  Large values are
 *		refused rather than truncated or allowed to flush the cache.
 */
void
cache_check_key(int keylen)
{
	if (keylen > CACHE_MAX_KEY_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("cache key is too long (%d bytes)", keylen),
				 errdetail("Keys are limited to %d bytes.", CACHE_MAX_KEY_BYTES)));
}

void
cache_check_value(int vallen)
{
	if (vallen > cache_shared->max_value_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("cache value of %d bytes exceeds the limit of %d bytes", vallen,
						cache_shared->max_value_bytes),
				 errhint("The limit is courier.cache_max_value_bytes (capped by the size of a cache partition).")));
}

/*
 * cache_value_to_text / _jsonb / _bytea
 *		A cached value as the requested type: text and jsonb convert as casts
 *		do; bytea gives the stored bytes (text in the server encoding).
 */
Datum
cache_value_to_text(CacheValue *v)
{
	switch (v->type)
	{
		case CACHE_TYPE_JSONB:
			{
				Jsonb	   *jb = (Jsonb *) v->data;

				return PointerGetDatum(cstring_to_text(JsonbToCString(NULL, &jb->root, VARSIZE(jb))));
			}
		case CACHE_TYPE_BYTEA:
			return PointerGetDatum(cstring_to_text(DatumGetCString(DirectFunctionCall1(byteaout,
																					   PointerGetDatum(v->data)))));
		default:
			return PointerGetDatum(v->data);
	}
}

Datum
cache_value_to_jsonb(CacheValue *v)
{
	switch (v->type)
	{
		case CACHE_TYPE_JSONB:
			return PointerGetDatum(v->data);
		case CACHE_TYPE_BYTEA:
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("cached value is bytea, not jsonb"),
					 errhint("Read it with courier.cache_get_bytea().")));
			return (Datum) 0;
		default:
			return DirectFunctionCall1(jsonb_in, CStringGetDatum(text_to_cstring((text *) v->data)));
	}
}

Datum
cache_value_to_bytea(CacheValue *v)
{
	if (v->type == CACHE_TYPE_JSONB)
		return cache_value_to_text(v);	/* text and bytea share a layout */
	return PointerGetDatum(v->data);
}

/*
 * cache_fetch
 *		Look a key up; on a hit copy the value out and move it to the front.
 *		Expired entries are reclaimed on the spot and count as misses.
 */
static bool
cache_fetch(text *key, CacheValue *v)
{
	const char *k = VARDATA_ANY(key);
	int			klen = VARSIZE_ANY_EXHDR(key);
	uint32		hash;
	CachePartition *p;
	int32		idx;
	bool		hit = false;

	cache_check_available();
	if (klen > CACHE_MAX_KEY_BYTES)
		return false;
	hash = cache_hash(k, klen);
	p = cache_partition(hash);

	cache_lock(p);
	idx = cache_lookup(p, hash, k, klen);
	if (idx >= 0 && p->entries[idx].state == CACHE_VALID)
	{
		CacheEntry *e = &p->entries[idx];

		if (e->expires != 0 && e->expires <= cache_now())
		{
			cache_remove(p, idx);
			p->c.expirations++;
		}
		else
		{
			cache_move_front(p, idx);
			p->c.hits++;
			v->type = e->type;
			v->data = cache_copy_value(p, e);
			hit = true;
		}
	}
	if (!hit)
		p->c.misses++;
	LWLockRelease(p->lock);
	return hit;
}

/*
 * courier_cache_get / _jsonb / _bytea
 *		courier.cache_get*(key): the value, or NULL on a miss.
 */
Datum
courier_cache_get(PG_FUNCTION_ARGS)
{
	CacheValue	v;

	if (!cache_fetch(PG_GETARG_TEXT_PP(0), &v))
		PG_RETURN_NULL();
	if (v.type == CACHE_TYPE_TEXT)
		PG_RETURN_POINTER(v.data);
	PG_RETURN_DATUM(cache_value_to_text(&v));
}

Datum
courier_cache_get_jsonb(PG_FUNCTION_ARGS)
{
	CacheValue	v;

	if (!cache_fetch(PG_GETARG_TEXT_PP(0), &v))
		PG_RETURN_NULL();
	PG_RETURN_DATUM(cache_value_to_jsonb(&v));
}

Datum
courier_cache_get_bytea(PG_FUNCTION_ARGS)
{
	CacheValue	v;

	if (!cache_fetch(PG_GETARG_TEXT_PP(0), &v))
		PG_RETURN_NULL();
	PG_RETURN_DATUM(cache_value_to_bytea(&v));
}

/*
 * cache_store_value
 *		Store key -> value (replacing any entry, a loading one included: its
 *		loader will see it was overtaken and its waiters read this value).
 */
static void
cache_store_value(text *key, const char *val, int vallen, uint8 type, TimestampTz expires)
{
	const char *k = VARDATA_ANY(key);
	int			klen = VARSIZE_ANY_EXHDR(key);
	uint32		hash = cache_hash(k, klen);
	CachePartition *p = cache_partition(hash);
	int32		idx;
	bool		was_loading = false;

	cache_lock(p);
	idx = cache_lookup(p, hash, k, klen);
	if (idx >= 0)
	{
		was_loading = (p->entries[idx].state == CACHE_LOADING);
		cache_remove(p, idx);
	}
	idx = cache_insert(p, hash, k, klen, val, vallen, type, CACHE_VALID);
	if (idx >= 0)
	{
		p->entries[idx].expires = expires;
		p->c.sets++;
	}
	LWLockRelease(p->lock);
	if (was_loading)
		ConditionVariableBroadcast(&p->cv);
	if (idx < 0)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("no room in the cache for this value"),
				 errdetail("Every entry of its cache partition is being loaded by courier.cache_get_or_load().")));
}

/*
 * cache_set_common
 *		courier.cache_set(key, value, ttl) for every value type.
 */
static Datum
cache_set_common(FunctionCallInfo fcinfo, uint8 type)
{
	text	   *key;
	struct varlena *val;
	TimestampTz expires;

	cache_check_available();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("cache key must not be NULL")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("cannot cache a NULL value"),
				 errhint("Use courier.cache_delete() to remove a key.")));
	key = PG_GETARG_TEXT_PP(0);
	val = PG_GETARG_VARLENA_PP(1);
	cache_check_key(VARSIZE_ANY_EXHDR(key));
	cache_check_value(VARSIZE_ANY_EXHDR(val));
	expires = cache_expiry(PG_ARGISNULL(2) ? NULL : PG_GETARG_INTERVAL_P(2), PG_ARGISNULL(2), cache_now());
	cache_store_value(key, VARDATA_ANY(val), VARSIZE_ANY_EXHDR(val), type, expires);
	PG_RETURN_VOID();
}

Datum
courier_cache_set_text(PG_FUNCTION_ARGS)
{
	return cache_set_common(fcinfo, CACHE_TYPE_TEXT);
}

Datum
courier_cache_set_jsonb(PG_FUNCTION_ARGS)
{
	return cache_set_common(fcinfo, CACHE_TYPE_JSONB);
}

Datum
courier_cache_set_bytea(PG_FUNCTION_ARGS)
{
	return cache_set_common(fcinfo, CACHE_TYPE_BYTEA);
}

/*
 * courier_cache_delete
 *		courier.cache_delete(key): whether a value was deleted.
 */
Datum
courier_cache_delete(PG_FUNCTION_ARGS)
{
	text	   *key = PG_GETARG_TEXT_PP(0);

	cache_check_available();
	if (VARSIZE_ANY_EXHDR(key) > CACHE_MAX_KEY_BYTES)
		PG_RETURN_BOOL(false);
	PG_RETURN_BOOL(cache_delete_key(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key)));
}

/*
 * courier_cache_delete_prefix
 *		courier.cache_delete_prefix(prefix): number of values deleted.
 */
Datum
courier_cache_delete_prefix(PG_FUNCTION_ARGS)
{
	text	   *prefix = PG_GETARG_TEXT_PP(0);

	cache_check_available();
	if (VARSIZE_ANY_EXHDR(prefix) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cache key prefix must not be empty"),
				 errhint("Use courier.cache_clear() to delete every key.")));
	PG_RETURN_INT64(cache_delete_matching(VARDATA_ANY(prefix), VARSIZE_ANY_EXHDR(prefix),
										  CACHE_REACH_KEY_SPACE));
}

/*
 * courier_cache_clear
 *		courier.cache_clear(all_databases): number of values deleted, of
 *		every key space (an administrator's function: EXECUTE is revoked
 *		from PUBLIC).
 */
Datum
courier_cache_clear(PG_FUNCTION_ARGS)
{
	bool		all = PG_GETARG_BOOL(0);

	cache_check_available();
	if (all && !superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("only superusers can clear the cache of every database")));
	PG_RETURN_INT64(cache_delete_matching("", 0, all ? CACHE_REACH_CLUSTER : CACHE_REACH_DATABASE));
}

/*
 * courier_cache_touch
 *		courier.cache_touch(key, ttl): give a live entry a new ttl (NULL: the
 *		default ttl) and mark it recently used.  Whether the key was there.
 */
Datum
courier_cache_touch(PG_FUNCTION_ARGS)
{
	text	   *key;
	const char *k;
	int			klen;
	uint32		hash;
	CachePartition *p;
	int32		idx;
	TimestampTz now;
	TimestampTz expires;
	bool		found = false;

	cache_check_available();
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	key = PG_GETARG_TEXT_PP(0);
	k = VARDATA_ANY(key);
	klen = VARSIZE_ANY_EXHDR(key);
	if (klen > CACHE_MAX_KEY_BYTES)
		PG_RETURN_BOOL(false);
	now = cache_now();
	expires = cache_expiry(PG_ARGISNULL(1) ? NULL : PG_GETARG_INTERVAL_P(1), PG_ARGISNULL(1), now);
	hash = cache_hash(k, klen);
	p = cache_partition(hash);

	cache_lock(p);
	idx = cache_lookup(p, hash, k, klen);
	if (idx >= 0 && p->entries[idx].state == CACHE_VALID)
	{
		CacheEntry *e = &p->entries[idx];

		if (e->expires != 0 && e->expires <= now)
		{
			cache_remove(p, idx);
			p->c.expirations++;
		}
		else
		{
			e->expires = expires;
			cache_move_front(p, idx);
			found = true;
		}
	}
	LWLockRelease(p->lock);
	PG_RETURN_BOOL(found);
}
