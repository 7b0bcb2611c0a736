/*-------------------------------------------------------------------------
 *
 * cache_stats.c
 *	  Statistics and maintenance functions of the shared-memory cache.
 *
 * Counters live in each partition and are updated under its lock, so they
 * cost nothing extra on the hot path.  Reading them locks each partition in
 * turn: totals are a sum of per-partition snapshots, not one atomic view.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "pg_courier.h"
#include "cache.h"

PG_FUNCTION_INFO_V1(courier_cache_stats);
PG_FUNCTION_INFO_V1(courier_cache_partition_stats);
PG_FUNCTION_INFO_V1(courier_cache_stats_reset);
PG_FUNCTION_INFO_V1(courier_cache_purge_expired);
PG_FUNCTION_INFO_V1(courier_cache_test_clock_advance);

typedef struct PartitionSnapshot
{
	int64		capacity_entries;
	int64		capacity_bytes;
	int64		entries;
	int64		used_bytes;
	CacheCounters c;
} PartitionSnapshot;

/*
 * snapshot_partition
 *		Copy a partition's figures under its lock.  Bytes count whole chunks
 *		and entry headers: what the data really occupies.
 */
static void
snapshot_partition(CachePartition *p, PartitionSnapshot *s)
{
	LWLockAcquire(p->lock, LW_SHARED);
	s->capacity_entries = p->nentries;
	s->capacity_bytes = (int64) p->nchunks * CACHE_CHUNK_SIZE + (int64) p->nentries * sizeof(CacheEntry);
	s->entries = p->used_entries;
	s->used_bytes = (int64) p->used_chunks * CACHE_CHUNK_SIZE + (int64) p->used_entries * sizeof(CacheEntry);
	s->c = p->c;
	LWLockRelease(p->lock);
}

static void
add_counters(CacheCounters *sum, const CacheCounters *c)
{
	sum->hits += c->hits;
	sum->misses += c->misses;
	sum->sets += c->sets;
	sum->evictions += c->evictions;
	sum->expirations += c->expirations;
	sum->deletes += c->deletes;
	sum->loads += c->loads;
	sum->load_failures += c->load_failures;
	sum->stampede_waits += c->stampede_waits;
	sum->contended += c->contended;
}

static Datum
hit_ratio(const CacheCounters *c, bool *isnull)
{
	*isnull = (c->hits + c->misses == 0);
	return *isnull ? (Datum) 0 : Float8GetDatum((double) c->hits / (double) (c->hits + c->misses));
}

/*
 * courier_cache_stats
 *		courier.cache_stats(): one row of totals over every partition.
 */
Datum
courier_cache_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	PartitionSnapshot sum;
	Datum		values[18];
	bool		nulls[18] = {0};
	int			i = 0;

	cache_check_available();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	memset(&sum, 0, sizeof(sum));
	for (int p = 0; p < cache_shared->npartitions; p++)
	{
		PartitionSnapshot s;

		snapshot_partition(cache_shared->partitions[p], &s);
		sum.capacity_entries += s.capacity_entries;
		sum.capacity_bytes += s.capacity_bytes;
		sum.entries += s.entries;
		sum.used_bytes += s.used_bytes;
		add_counters(&sum.c, &s.c);
	}

	values[i++] = Int32GetDatum(cache_shared->npartitions);
	values[i++] = Int64GetDatum((int64) cache_shared->total_bytes);
	values[i++] = Int64GetDatum(sum.capacity_entries);
	values[i++] = Int64GetDatum(sum.capacity_bytes);
	values[i++] = Int32GetDatum(cache_shared->max_value_bytes);
	values[i++] = Int64GetDatum(sum.entries);
	values[i++] = Int64GetDatum(sum.used_bytes);
	values[i++] = Int64GetDatum(sum.c.hits);
	values[i++] = Int64GetDatum(sum.c.misses);
	values[i] = hit_ratio(&sum.c, &nulls[i]);
	i++;
	values[i++] = Int64GetDatum(sum.c.sets);
	values[i++] = Int64GetDatum(sum.c.deletes);
	values[i++] = Int64GetDatum(sum.c.evictions);
	values[i++] = Int64GetDatum(sum.c.expirations);
	values[i++] = Int64GetDatum(sum.c.loads);
	values[i++] = Int64GetDatum(sum.c.load_failures);
	values[i++] = Int64GetDatum(sum.c.stampede_waits);
	values[i++] = Int64GetDatum(sum.c.contended);
	Assert(i == tupdesc->natts);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * courier_cache_partition_stats
 *		courier.cache_partition_stats(): one row per partition, to see skew
 *		and lock contention.
 */
Datum
courier_cache_partition_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	cache_check_available();
	InitMaterializedSRF(fcinfo, 0);
	for (int p = 0; p < cache_shared->npartitions; p++)
	{
		PartitionSnapshot s;
		Datum		values[12];
		bool		nulls[12] = {0};
		int			i = 0;

		snapshot_partition(cache_shared->partitions[p], &s);
		values[i++] = Int32GetDatum(p);
		values[i++] = Int64GetDatum(s.capacity_entries);
		values[i++] = Int64GetDatum(s.capacity_bytes);
		values[i++] = Int64GetDatum(s.entries);
		values[i++] = Int64GetDatum(s.used_bytes);
		values[i++] = Int64GetDatum(s.c.hits);
		values[i++] = Int64GetDatum(s.c.misses);
		values[i++] = Int64GetDatum(s.c.sets);
		values[i++] = Int64GetDatum(s.c.evictions);
		values[i++] = Int64GetDatum(s.c.expirations);
		values[i++] = Int64GetDatum(s.c.stampede_waits);
		values[i++] = Int64GetDatum(s.c.contended);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * courier_cache_stats_reset
 *		courier.cache_stats_reset(): zero every counter (not the contents).
 */
Datum
courier_cache_stats_reset(PG_FUNCTION_ARGS)
{
	cache_check_available();
	for (int i = 0; i < cache_shared->npartitions; i++)
	{
		CachePartition *p = cache_shared->partitions[i];

		LWLockAcquire(p->lock, LW_EXCLUSIVE);
		memset(&p->c, 0, sizeof(p->c));
		LWLockRelease(p->lock);
	}
	PG_RETURN_VOID();
}

/*
 * courier_cache_purge_expired
 *		courier.cache_purge_expired(): reclaim every expired entry now (they
 *		are otherwise reclaimed when looked up or when they reach the LRU
 *		tail).  Returns how many were reclaimed.
 */
Datum
courier_cache_purge_expired(PG_FUNCTION_ARGS)
{
	int64		count = 0;

	cache_check_available();
	for (int i = 0; i < cache_shared->npartitions; i++)
	{
		CachePartition *p = cache_shared->partitions[i];
		TimestampTz now = cache_now();
		int32		idx;

		cache_lock(p);
		idx = p->lru_head;
		while (idx >= 0)
		{
			CacheEntry *e = &p->entries[idx];
			int32		next = e->next;

			if (e->state == CACHE_VALID && e->expires != 0 && e->expires <= now)
			{
				cache_remove(p, idx);
				p->c.expirations++;
				count++;
			}
			idx = next;
		}
		LWLockRelease(p->lock);
	}
	PG_RETURN_INT64(count);
}

/*
 * courier_cache_test_clock_advance
 *		courier._cache_test_clock_advance(interval): move the cache's clock
 *		forward for every backend, so tests can expire entries without
 *		sleeping.  Superuser only (not granted to anyone).
 */
Datum
courier_cache_test_clock_advance(PG_FUNCTION_ARGS)
{
	Interval   *by = PG_GETARG_INTERVAL_P(0);
	int64		us = by->time + by->day * USECS_PER_DAY;

	cache_check_available();
	if (by->month != 0 || us < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the cache clock can only move forward by days, hours, minutes or seconds")));
	pg_atomic_fetch_add_u64(&cache_shared->clock_offset, (uint64) us);
	PG_RETURN_VOID();
}
