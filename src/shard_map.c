/*-------------------------------------------------------------------------
 *
 * shard_map.c
 *	  Range and directory maps: map_route from the backend-local cache.
 *
 * A range map sends a bigint key to the target of the range [lower, upper)
 * that holds it (ranges never overlap; a NULL bound is unbounded).  A
 * directory map sends a key to the target listed for exactly that key.  Both
 * fall back to the map's default target, or NULL when it has none.  The
 * entries are cached per backend (shard_cache.c) as sorted arrays, so a route
 * is a binary search.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"

#include "pg_courier.h"
#include "shard.h"

PG_FUNCTION_INFO_V1(courier_map_route_text);
PG_FUNCTION_INFO_V1(courier_map_route_int8);

typedef struct MapEntry
{
	struct MapEntry *next;
	char	   *name;
	bool		is_range;
	text	   *default_target; /* NULL if none */
	int			n;
	/* range maps */
	int64	   *lower;
	bool	   *lower_inf;
	int64	   *upper;
	bool	   *upper_inf;
	/* directory maps */
	text	  **key;
	/* both */
	text	  **target;
} MapEntry;

static MapEntry *map_list = NULL;
static uint64 map_list_generation = 0;

typedef struct MapRouteCache
{
	uint64		generation;
	MapEntry   *map;
} MapRouteCache;

/*
 * copy_text
 *		A copy of a text datum in cxt.
 */
static text *
copy_text(Datum d, MemoryContext cxt)
{
	text	   *t = DatumGetTextPP(d);
	text	   *copy = MemoryContextAlloc(cxt, VARSIZE_ANY(t));

	memcpy(copy, t, VARSIZE_ANY(t));
	return copy;
}

/*
 * text_cmp_bytes
 *		Byte-wise text order (the directory's sort and search order; keys
 *		match exactly, whatever the collation).
 */
static int
text_cmp_bytes(const text *a, const text *b)
{
	int			la = VARSIZE_ANY_EXHDR(a);
	int			lb = VARSIZE_ANY_EXHDR(b);
	int			c = memcmp(VARDATA_ANY(a), VARDATA_ANY(b), Min(la, lb));

	return c != 0 ? c : (la > lb) - (la < lb);
}

/* qsort over indexes into the directory's keys */
static text **sort_keys;

static int
cmp_key_index(const void *a, const void *b)
{
	return text_cmp_bytes(sort_keys[*(const int *) a], sort_keys[*(const int *) b]);
}

/*
 * map_load_entries
 *		Read the map's ranges (ordered by lower bound) or keys (then sorted
 *		byte-wise) into the cache context.
 */
static void
map_load_entries(MapEntry *map, Datum name, MemoryContext cxt)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1] = {name};

	courier_shard_cache_query(map->is_range ?
							  "SELECT pg_catalog.lower(r.keys), pg_catalog.upper(r.keys), r.target FROM courier.map_ranges r "
							  "WHERE r.map OPERATOR(pg_catalog.=) $1 ORDER BY pg_catalog.lower(r.keys) NULLS FIRST" :
							  "SELECT k.key, k.target FROM courier.map_keys k WHERE k.map OPERATOR(pg_catalog.=) $1",
							  1, argtypes, values);
	map->n = (int) SPI_processed;
	map->target = MemoryContextAlloc(cxt, sizeof(text *) * Max(map->n, 1));
	if (map->is_range)
	{
		map->lower = MemoryContextAlloc(cxt, sizeof(int64) * Max(map->n, 1));
		map->lower_inf = MemoryContextAlloc(cxt, sizeof(bool) * Max(map->n, 1));
		map->upper = MemoryContextAlloc(cxt, sizeof(int64) * Max(map->n, 1));
		map->upper_inf = MemoryContextAlloc(cxt, sizeof(bool) * Max(map->n, 1));
		for (int i = 0; i < map->n; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			Datum		lo = SPI_getbinval(tup, desc, 1, &map->lower_inf[i]);
			Datum		hi = SPI_getbinval(tup, desc, 2, &map->upper_inf[i]);
			bool		isnull;

			map->lower[i] = map->lower_inf[i] ? 0 : DatumGetInt64(lo);
			map->upper[i] = map->upper_inf[i] ? 0 : DatumGetInt64(hi);
			map->target[i] = copy_text(SPI_getbinval(tup, desc, 3, &isnull), cxt);
		}
	}
	else
	{
		text	  **keys = palloc(sizeof(text *) * Max(map->n, 1));
		text	  **targets = palloc(sizeof(text *) * Max(map->n, 1));
		int		   *order = palloc(sizeof(int) * Max(map->n, 1));

		for (int i = 0; i < map->n; i++)
		{
			bool		isnull;

			keys[i] = copy_text(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull), cxt);
			targets[i] = copy_text(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull), cxt);
			order[i] = i;
		}
		sort_keys = keys;
		qsort(order, map->n, sizeof(int), cmp_key_index);
		map->key = MemoryContextAlloc(cxt, sizeof(text *) * Max(map->n, 1));
		for (int i = 0; i < map->n; i++)
		{
			map->key[i] = keys[order[i]];
			map->target[i] = targets[order[i]];
		}
	}
}

/*
 * map_load
 *		Read a map's definition and entries; errors if it does not exist.
 */
static MapEntry *
map_load(const char *name, MemoryContext cxt)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};
	MapEntry   *map;
	bool		isnull;
	Datum		d;

	SPI_connect();
	courier_shard_cache_query("SELECT m.kind, m.default_target FROM courier.maps m WHERE m.name OPERATOR(pg_catalog.=) $1",
							  1, argtypes, values);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("map \"%s\" does not exist", name),
				 errhint("Create it with courier.map_create(name, kind); courier.maps lists the maps.")));

	map = MemoryContextAllocZero(cxt, sizeof(MapEntry));
	map->name = MemoryContextStrdup(cxt, name);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	map->is_range = strcmp(TextDatumGetCString(d), "range") == 0;
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	map->default_target = isnull ? NULL : copy_text(d, cxt);

	map_load_entries(map, values[0], cxt);
	SPI_finish();
	return map;
}

/*
 * map_lookup
 *		The cached map of that name (see ring_lookup for the retry).
 */
static MapEntry *
map_lookup(const char *name)
{
	for (;;)
	{
		MemoryContext cxt = courier_shard_cache_context();
		uint64		generation = courier_shard_generation;
		MapEntry   *map;

		if (map_list_generation != generation)
		{
			map_list = NULL;
			map_list_generation = generation;
		}
		for (map = map_list; map != NULL; map = map->next)
			if (strcmp(map->name, name) == 0)
				return map;

		map = map_load(name, cxt);
		if (generation == courier_shard_generation)
		{
			map->next = map_list;
			map_list = map;
			return map;
		}
	}
}

/*
 * map_for_call
 *		The map named by argument 0, through the call site's fn_extra.
 */
static MapEntry *
map_for_call(FunctionCallInfo fcinfo)
{
	MapRouteCache *cache = (MapRouteCache *) fcinfo->flinfo->fn_extra;
	text	   *name;

	courier_shard_check_name("map", PG_ARGISNULL(0));
	name = PG_GETARG_TEXT_PP(0);
	if (cache == NULL)
		cache = fcinfo->flinfo->fn_extra =
			MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(MapRouteCache));
	if (cache->map == NULL || cache->generation != courier_shard_generation ||
		strlen(cache->map->name) != VARSIZE_ANY_EXHDR(name) ||
		memcmp(cache->map->name, VARDATA_ANY(name), VARSIZE_ANY_EXHDR(name)) != 0)
	{
		char	   *cname = text_to_cstring(name);

		cache->map = NULL;
		cache->map = map_lookup(cname);
		cache->generation = courier_shard_generation;
		pfree(cname);
	}
	return cache->map;
}

/*
 * map_route_range
 *		Target of the range holding key: the last range whose lower bound is
 *		<= key, if key is below its upper bound.
 */
static text *
map_route_range(const MapEntry *map, int64 key)
{
	int			lo = 0;
	int			hi = map->n;

	while (lo < hi)				/* first range with lower > key */
	{
		int			mid = lo + (hi - lo) / 2;

		if (map->lower_inf[mid] || map->lower[mid] <= key)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo > 0 && (map->upper_inf[lo - 1] || key < map->upper[lo - 1]))
		return map->target[lo - 1];
	return map->default_target;
}

/*
 * map_route_key
 *		Target listed for exactly this key.
 */
static text *
map_route_key(const MapEntry *map, const text *key)
{
	int			lo = 0;
	int			hi = map->n - 1;

	while (lo <= hi)
	{
		int			mid = lo + (hi - lo) / 2;
		int			c = text_cmp_bytes(map->key[mid], key);

		if (c == 0)
			return map->target[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return map->default_target;
}

/*
 * return_target
 *		A palloc'd copy of the target (cache memory may be reset later in the
 *		query), or NULL.
 */
static Datum
return_target(FunctionCallInfo fcinfo, text *target)
{
	text	   *result;

	if (target == NULL)
	{
		fcinfo->isnull = true;
		return (Datum) 0;
	}
	result = palloc(VARSIZE_ANY(target));
	memcpy(result, target, VARSIZE_ANY(target));
	return PointerGetDatum(result);
}

/*
 * courier_map_route_text
 *		map_route(name text, key text): a directory lookup, or for a range map
 *		the key read as a bigint.
 */
Datum
courier_map_route_text(PG_FUNCTION_ARGS)
{
	MapEntry   *map = map_for_call(fcinfo);

	if (PG_ARGISNULL(1))
		PG_RETURN_NULL();
	if (map->is_range)
	{
		char	   *s = text_to_cstring(PG_GETARG_TEXT_PP(1));

		return return_target(fcinfo, map_route_range(map, DatumGetInt64(DirectFunctionCall1(int8in, CStringGetDatum(s)))));
	}
	return return_target(fcinfo, map_route_key(map, PG_GETARG_TEXT_PP(1)));
}

/*
 * courier_map_route_int8
 *		map_route(name text, key bigint): a range lookup, or for a directory
 *		map the key's decimal text.
 */
Datum
courier_map_route_int8(PG_FUNCTION_ARGS)
{
	MapEntry   *map = map_for_call(fcinfo);

	if (PG_ARGISNULL(1))
		PG_RETURN_NULL();
	if (map->is_range)
		return return_target(fcinfo, map_route_range(map, PG_GETARG_INT64(1)));
	return return_target(fcinfo,
						 map_route_key(map, cstring_to_text(DatumGetCString(DirectFunctionCall1(int8out,
																								PG_GETARG_DATUM(1))))));
}
