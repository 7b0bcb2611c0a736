/*-------------------------------------------------------------------------
 *
 * shard_ring.c
 *	  Consistent-hash ring: routing from the backend-local cache
 *	  (ring_route) and the comparison of two rings (_ring_diff).
 *
 * A ring is a set of points (signed 64-bit positions) each owned by a node.
 * A key is hashed to 64 bits (hashtextextended(key, 0)) and belongs to the
 * first point at or after its hash, wrapping around to the smallest point:
 * the point at p owns the hash range (previous point, p].  Where the points
 * are placed is decided by _ring_plan (shard_ring_plan.c) and stored in
 * courier.ring_points; this file only reads them.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "pg_courier.h"
#include "shard.h"

PG_FUNCTION_INFO_V1(courier_ring_route);
PG_FUNCTION_INFO_V1(courier_ring_diff);

/* One ring as cached: points sorted by position, with their node names. */
typedef struct RingEntry
{
	struct RingEntry *next;
	char	   *name;
	int			npoints;
	int64	   *pos;
	text	  **node;			/* per point; equal names share one copy */
	/* radix index: bucket b (top `bits` bits of the hash) starts at point first[b] */
	int			shift;			/* 64 - bits */
	int		   *first;			/* nbuckets + 1 entries, first[nbuckets] = npoints */
} RingEntry;

/* An order-preserving map from signed positions to unsigned ones. */
#define RING_UNSIGNED(x)	((uint64) (x) ^ (UINT64CONST(1) << 63))

/* The rings cached in the current generation. */
static RingEntry *ring_list = NULL;
static uint64 ring_list_generation = 0;

/* What ring_route keeps in fn_extra for its call site. */
typedef struct RingRouteCache
{
	uint64		generation;
	RingEntry  *ring;
} RingRouteCache;

/*
 * ring_build_index
 *		About two buckets per point (at most 2^20): a route then searches the
 *		few points of one bucket instead of the whole ring, which avoids the
 *		branch mispredictions of a long binary search.
 */
static void
ring_build_index(RingEntry *ring, MemoryContext cxt)
{
	int			bits = 1;
	int			nbuckets;
	int			p = 0;

	while (bits < 20 && (1 << bits) < 2 * ring->npoints)
		bits++;
	nbuckets = 1 << bits;
	ring->shift = 64 - bits;
	ring->first = MemoryContextAlloc(cxt, sizeof(int) * (nbuckets + 1));
	for (int b = 0; b < nbuckets; b++)
	{
		while (p < ring->npoints && (int) (RING_UNSIGNED(ring->pos[p]) >> ring->shift) < b)
			p++;
		ring->first[b] = p;
	}
	ring->first[nbuckets] = ring->npoints;
}

/*
 * ring_load
 *		Read one ring's points (ordered by position) into the cache context.
 *		Errors if the ring does not exist.
 */
static RingEntry *
ring_load(const char *name, MemoryContext cxt)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};
	RingEntry  *ring;
	text	   *last = NULL;

	SPI_connect();
	courier_shard_cache_query("SELECT p.pos, p.node FROM courier.ring_points p "
							  "WHERE p.ring OPERATOR(pg_catalog.=) $1 ORDER BY p.pos",
							  1, argtypes, values);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("ring \"%s\" does not exist", name),
				 errhint("Create it with courier.ring_create(name, nodes); courier.rings lists the rings.")));

	ring = MemoryContextAllocZero(cxt, sizeof(RingEntry));
	ring->name = MemoryContextStrdup(cxt, name);
	ring->npoints = (int) SPI_processed;
	ring->pos = MemoryContextAlloc(cxt, sizeof(int64) * ring->npoints);
	ring->node = MemoryContextAlloc(cxt, sizeof(text *) * ring->npoints);
	for (int i = 0; i < ring->npoints; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		bool		isnull;
		Datum		pos = SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull);
		text	   *node = DatumGetTextPP(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));

		ring->pos[i] = DatumGetInt64(pos);
		/* consecutive points often share a node: keep one copy per run */
		if (last == NULL || VARSIZE_ANY(last) != VARSIZE_ANY(node) ||
			memcmp(last, node, VARSIZE_ANY(node)) != 0)
		{
			last = MemoryContextAlloc(cxt, VARSIZE_ANY(node));
			memcpy(last, node, VARSIZE_ANY(node));
		}
		ring->node[i] = last;
	}
	SPI_finish();
	ring_build_index(ring, cxt);
	return ring;
}

/*
 * ring_lookup
 *		The cached ring of that name, loading it if needed.  A load during
 *		which an invalidation arrived is discarded and redone, so the cache
 *		never keeps data older than the last invalidation it processed.
 */
static RingEntry *
ring_lookup(const char *name)
{
	for (;;)
	{
		MemoryContext cxt = courier_shard_cache_context();
		uint64		generation = courier_shard_generation;
		RingEntry  *ring;

		if (ring_list_generation != generation)
		{
			ring_list = NULL;
			ring_list_generation = generation;
		}
		for (ring = ring_list; ring != NULL; ring = ring->next)
			if (strcmp(ring->name, name) == 0)
				return ring;

		ring = ring_load(name, cxt);
		if (generation == courier_shard_generation)
		{
			ring->next = ring_list;
			ring_list = ring;
			return ring;
		}
	}
}

/*
 * ring_find_point
 *		Index of the first point at or after hash, wrapping to 0: a binary
 *		search within the hash's bucket (every point of later buckets is
 *		greater, so the answer is in the bucket or is the next bucket's first).
 */
static inline int
ring_find_point(const RingEntry *ring, int64 hash)
{
	uint64		bucket = RING_UNSIGNED(hash) >> ring->shift;
	int			lo = ring->first[bucket];
	int			hi = ring->first[bucket + 1];

	while (lo < hi)
	{
		int			mid = lo + (hi - lo) / 2;

		if (ring->pos[mid] < hash)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo == ring->npoints ? 0 : lo;
}

/*
 * courier_ring_route
 *		ring_route(name text, key text) -> node.  The ring is found through
 *		fn_extra while the cache generation is unchanged, so a call is a
 *		hash plus a binary search.  NULL name is an error; NULL key gives NULL.
 */
Datum
courier_ring_route(PG_FUNCTION_ARGS)
{
	RingRouteCache *cache = (RingRouteCache *) fcinfo->flinfo->fn_extra;
	text	   *name;
	text	   *node;
	text	   *result;

	courier_shard_check_name("ring", PG_ARGISNULL(0));
	if (PG_ARGISNULL(1))
		PG_RETURN_NULL();
	name = PG_GETARG_TEXT_PP(0);

	if (cache == NULL)
		cache = fcinfo->flinfo->fn_extra =
			MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(RingRouteCache));
	if (cache->ring == NULL || cache->generation != courier_shard_generation ||
		strlen(cache->ring->name) != VARSIZE_ANY_EXHDR(name) ||
		memcmp(cache->ring->name, VARDATA_ANY(name), VARSIZE_ANY_EXHDR(name)) != 0)
	{
		char	   *cname = text_to_cstring(name);

		cache->ring = NULL;
		cache->ring = ring_lookup(cname);
		cache->generation = courier_shard_generation;
		pfree(cname);
	}

	node = cache->ring->node[ring_find_point(cache->ring,
											 courier_key_hash64(PG_GETARG_TEXT_PP(1)))];
	result = palloc(VARSIZE_ANY(node));
	memcpy(result, node, VARSIZE_ANY(node));
	PG_RETURN_TEXT_P(result);
}

/* A ring given as arrays, sorted, for _ring_diff. */
typedef struct RingArrays
{
	int			n;
	int64	   *pos;
	char	  **node;
} RingArrays;

/*
 * cmp_point_index
 *		qsort comparator: indexes ordered by the positions they refer to.
 */
static int64 *sort_pos;

static int
cmp_point_index(const void *a, const void *b)
{
	int64		pa = sort_pos[*(const int *) a];
	int64		pb = sort_pos[*(const int *) b];

	return pa < pb ? -1 : (pa > pb ? 1 : 0);
}

/*
 * ring_arrays
 *		Deconstruct (positions, nodes) arrays into a RingArrays sorted by
 *		position; what is wrong with them is reported as an error.
 */
static RingArrays
ring_arrays(ArrayType *pos_arr, ArrayType *node_arr, const char *what)
{
	RingArrays	r;
	Datum	   *pos;
	Datum	   *node;
	bool	   *pos_nulls;
	bool	   *node_nulls;
	int			npos;
	int			nnode;
	int		   *order;

	deconstruct_array(pos_arr, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &pos, &pos_nulls, &npos);
	deconstruct_array_builtin(node_arr, TEXTOID, &node, &node_nulls, &nnode);
	if (npos != nnode || npos == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s ring must have as many positions as nodes, and at least one", what)));

	r.n = npos;
	r.pos = palloc(sizeof(int64) * npos);
	r.node = palloc(sizeof(char *) * npos);
	order = palloc(sizeof(int) * npos);
	sort_pos = palloc(sizeof(int64) * npos);
	for (int i = 0; i < npos; i++)
	{
		if (pos_nulls[i] || node_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s ring must not contain NULL positions or nodes", what)));
		sort_pos[i] = DatumGetInt64(pos[i]);
		order[i] = i;
	}
	qsort(order, npos, sizeof(int), cmp_point_index);
	for (int i = 0; i < npos; i++)
	{
		r.pos[i] = sort_pos[order[i]];
		r.node[i] = TextDatumGetCString(node[order[i]]);
		if (i > 0 && r.pos[i] == r.pos[i - 1])
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s ring has two points at position " INT64_FORMAT, what, r.pos[i])));
	}
	return r;
}

/*
 * ring_owner_at
 *		Node owning hash u, advancing *cursor (the caller visits hashes in
 *		increasing order, so the whole scan is a merge).
 */
static const char *
ring_owner_at(const RingArrays *r, int *cursor, int64 u)
{
	while (*cursor < r->n && r->pos[*cursor] < u)
		(*cursor)++;
	return r->node[*cursor < r->n ? *cursor : 0];
}

/* A moved range being accumulated by _ring_diff. */
typedef struct MoveRow
{
	bool		open;
	int64		start;
	int64		end;
	const char *from;
	const char *to;
} MoveRow;

/*
 * move_emit
 *		Append the inclusive hash range [start, end] moving from -> to,
 *		merging it into the pending row when contiguous with the same nodes.
 */
static void
move_emit(ReturnSetInfo *rsinfo, MoveRow *row, int64 start, int64 end,
		  const char *from, const char *to)
{
	if (from != NULL && row->open && strcmp(from, to) != 0 && strcmp(row->from, from) == 0 &&
		strcmp(row->to, to) == 0 && row->end != PG_INT64_MAX && row->end + 1 == start)
	{
		row->end = end;
		return;
	}
	if (row->open)
	{
		Datum		values[5];
		bool		nulls[5] = {false, false, false, false, false};

		values[0] = Int64GetDatum(row->start);
		values[1] = Int64GetDatum(row->end);
		values[2] = CStringGetTextDatum(row->from);
		values[3] = CStringGetTextDatum(row->to);
		values[4] = Float8GetDatum(((double) ((uint64) row->end - (uint64) row->start) + 1.0) /
								   18446744073709551616.0);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	row->open = (from != NULL && strcmp(from, to) != 0);
	row->start = start;
	row->end = end;
	row->from = from;
	row->to = to;
}

/*
 * courier_ring_diff
 *		_ring_diff(old_pos, old_node, new_pos, new_node) -> (range_start,
 *		range_end, from_node, to_node, fraction): the inclusive hash ranges
 *		whose owner differs between two rings.  Every boundary of either ring
 *		delimits an elementary range (u_prev, u] whose owner in each ring is
 *		the owner of its first point >= u; both are found by one merge.
 */
Datum
courier_ring_diff(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	RingArrays	old_ring = ring_arrays(PG_GETARG_ARRAYTYPE_P(0), PG_GETARG_ARRAYTYPE_P(1), "old");
	RingArrays	new_ring = ring_arrays(PG_GETARG_ARRAYTYPE_P(2), PG_GETARG_ARRAYTYPE_P(3), "new");
	int64	   *bounds = palloc(sizeof(int64) * (old_ring.n + new_ring.n));
	int			nb = 0;
	int			i = 0,
				j = 0;
	int			oc = 0,
				nc = 0;
	MoveRow		row = {false};
	int64		start = PG_INT64_MIN;

	InitMaterializedSRF(fcinfo, 0);

	/* merge both position lists into the sorted, distinct boundaries */
	while (i < old_ring.n || j < new_ring.n)
	{
		int64		v;

		if (j >= new_ring.n || (i < old_ring.n && old_ring.pos[i] <= new_ring.pos[j]))
			v = old_ring.pos[i++];
		else
			v = new_ring.pos[j++];
		if (nb == 0 || bounds[nb - 1] != v)
			bounds[nb++] = v;
	}

	/* [INT64_MIN, b0], (b0, b1], ..., then (b_last, INT64_MAX] wrapping to b0 */
	for (int k = 0; k < nb; k++)
	{
		move_emit(rsinfo, &row, start, bounds[k],
				  ring_owner_at(&old_ring, &oc, bounds[k]),
				  ring_owner_at(&new_ring, &nc, bounds[k]));
		if (bounds[k] == PG_INT64_MAX)
			break;
		start = bounds[k] + 1;
	}
	if (bounds[nb - 1] != PG_INT64_MAX)
		move_emit(rsinfo, &row, start, PG_INT64_MAX, old_ring.node[0], new_ring.node[0]);
	move_emit(rsinfo, &row, 0, 0, NULL, NULL);	/* flush */
	return (Datum) 0;
}
