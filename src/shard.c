/*-------------------------------------------------------------------------
 *
 * shard.c
 *	  Stateless shard routing: Citus-compatible hash shards (shard_for,
 *	  shard_range), jump consistent hash and Redis Cluster key slots.
 *
 * These functions agree bit for bit with the engines they model, so that an
 * application can route in SQL, in stored procedures or in plproxy and land
 * on the same shard as Citus, a jump-hash client or a Redis Cluster client.
 * The formulas and test vectors are in doc/sharding.md.
 *
 * The stateful parts (consistent-hash rings, range and directory maps) are in
 * shard_ring.c, shard_map.c and their cache in shard_cache.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "common/hashfn.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/typcache.h"

#include "pg_courier.h"
#include "shard.h"

PG_FUNCTION_INFO_V1(courier_shard_for);
PG_FUNCTION_INFO_V1(courier_shard_index);
PG_FUNCTION_INFO_V1(courier_shard_range);
PG_FUNCTION_INFO_V1(courier_jump_hash_int8);
PG_FUNCTION_INFO_V1(courier_jump_hash_text);
PG_FUNCTION_INFO_V1(courier_redis_slot);
PG_FUNCTION_INFO_V1(courier_redis_slot_bytea);

/* Citus splits the 2^32 values of a 32-bit hash into shard_count ranges. */
#define HASH_TOKEN_COUNT	INT64CONST(4294967296)

/* Redis Cluster has 16384 slots. */
#define REDIS_SLOTS			16384

/* What shard_for keeps in fn_extra: the hash function of the argument type. */
typedef struct ShardForCache
{
	Oid			typid;			/* argument type the entry was built for */
	FmgrInfo	hashfn;			/* its default hash opclass support proc 1 */
} ShardForCache;

/*
 * courier_shard_init
 *		Module initialisation (called from _PG_init).  Shard routing has no
 *		GUCs and no shared memory; the backend-local cache registers its
 *		invalidation callback on first use.
 */
void
courier_shard_init(void)
{
}

/*
 * courier_key_hash64
 *		The ring's and jump_hash(text)'s key hash: hash_bytes_extended of the
 *		key's bytes with seed 0 (= hashtextextended(key, 0) under a
 *		deterministic collation, so users can check it in SQL).
 */
int64
courier_key_hash64(text *key)
{
	return (int64) hash_bytes_extended((unsigned char *) VARDATA_ANY(key),
									   VARSIZE_ANY_EXHDR(key), 0);
}

/*
 * check_shard_count
 *		Shard counts must be positive.
 */
static void
check_shard_count(int32 shard_count)
{
	if (shard_count < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("shard_count must be at least 1, not %d", shard_count)));
}

/*
 * shard_index_of_hash
 *		Citus's uniform-range rule: the 2^32 hash values are cut into
 *		shard_count ranges of floor(2^32 / shard_count) values; the last shard
 *		also takes the remainder.
 */
static inline int32
shard_index_of_hash(int32 hash, int32 shard_count)
{
	uint64		increment = HASH_TOKEN_COUNT / shard_count;
	uint64		index = (uint64) ((int64) hash - PG_INT32_MIN) / increment;

	return index >= (uint64) shard_count ? shard_count - 1 : (int32) index;
}

/*
 * shard_for_hash_function
 *		The default hash function of the argument's type, looked up once per
 *		call site and kept in fn_extra.  Domains use their base type's hash
 *		function, as Citus does.
 */
static FmgrInfo *
shard_for_hash_function(FunctionCallInfo fcinfo)
{
	ShardForCache *cache = (ShardForCache *) fcinfo->flinfo->fn_extra;
	Oid			typid = get_fn_expr_argtype(fcinfo->flinfo, 0);
	TypeCacheEntry *typentry;

	if (cache != NULL && cache->typid == typid)
		return &cache->hashfn;

	if (!OidIsValid(typid))
		ereport(ERROR,
				(errcode(ERRCODE_INDETERMINATE_DATATYPE),
				 errmsg("could not determine the data type of the value passed to shard_for")));

	typentry = lookup_type_cache(getBaseType(typid), TYPECACHE_HASH_PROC_FINFO);
	if (!OidIsValid(typentry->hash_proc_finfo.fn_oid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("could not identify a hash function for type %s",
						format_type_be(typid)),
				 errhint("shard_for needs a type with a default hash operator class, as a Citus distribution column does.")));

	if (cache == NULL)
		cache = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(ShardForCache));
	fmgr_info_copy(&cache->hashfn, &typentry->hash_proc_finfo, fcinfo->flinfo->fn_mcxt);
	cache->typid = typid;
	fcinfo->flinfo->fn_extra = cache;
	return &cache->hashfn;
}

/*
 * courier_shard_for
 *		shard_for(value anyelement, shard_count int) -> shard index (0-based):
 *		the value's type hash (with the input collation) mapped to a shard the
 *		way Citus maps a hash-distributed table's values to its shards.
 */
Datum
courier_shard_for(PG_FUNCTION_ARGS)
{
	int32		shard_count = PG_GETARG_INT32(1);
	FmgrInfo   *hashfn;
	Datum		hash;

	check_shard_count(shard_count);
	hashfn = shard_for_hash_function(fcinfo);
	hash = FunctionCall1Coll(hashfn, PG_GET_COLLATION(), PG_GETARG_DATUM(0));
	PG_RETURN_INT32(shard_index_of_hash(DatumGetInt32(hash), shard_count));
}

/*
 * courier_shard_index
 *		shard_index(hash int, shard_count int): the uniform-range rule alone,
 *		for hashes computed elsewhere (e.g. by a Citus worker_hash()).
 */
Datum
courier_shard_index(PG_FUNCTION_ARGS)
{
	int32		shard_count = PG_GETARG_INT32(1);

	check_shard_count(shard_count);
	PG_RETURN_INT32(shard_index_of_hash(PG_GETARG_INT32(0), shard_count));
}

/*
 * courier_shard_range
 *		shard_range(shard_count, shard, OUT min_hash int, OUT max_hash int):
 *		the inclusive hash range of one shard, matching Citus's
 *		shardminvalue/shardmaxvalue for uniformly split shards.
 */
Datum
courier_shard_range(PG_FUNCTION_ARGS)
{
	int32		shard_count = PG_GETARG_INT32(0);
	int32		shard = PG_GETARG_INT32(1);
	int64		increment;
	int64		min_hash;
	int64		max_hash;
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};

	check_shard_count(shard_count);
	if (shard < 0 || shard >= shard_count)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("shard %d is out of range for %d shards", shard, shard_count),
				 errhint("Shards are numbered from 0 to shard_count - 1.")));

	increment = HASH_TOKEN_COUNT / shard_count;
	min_hash = PG_INT32_MIN + shard * increment;
	max_hash = (shard == shard_count - 1) ? PG_INT32_MAX : min_hash + increment - 1;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	values[0] = Int32GetDatum((int32) min_hash);
	values[1] = Int32GetDatum((int32) max_hash);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

/*
 * jump_consistent_hash
 *		Lamping & Veach (2014), as published: the floating-point step is the
 *		reference implementation's, so results match other ports exactly.
 */
static int32
jump_consistent_hash(uint64 key, int32 buckets)
{
	int64		b = -1;
	int64		j = 0;

	while (j < buckets)
	{
		b = j;
		key = key * UINT64CONST(2862933555777941757) + 1;
		j = (int64) ((b + 1) * ((double) (INT64CONST(1) << 31) / (double) ((key >> 33) + 1)));
	}
	return (int32) b;
}

/*
 * check_buckets
 *		jump_hash needs at least one bucket.
 */
static void
check_buckets(int32 buckets)
{
	if (buckets < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("buckets must be at least 1, not %d", buckets)));
}

/*
 * courier_jump_hash_int8
 *		jump_hash(key bigint, buckets int): the key's 64 bits taken as the
 *		unsigned key of the algorithm.
 */
Datum
courier_jump_hash_int8(PG_FUNCTION_ARGS)
{
	int32		buckets = PG_GETARG_INT32(1);

	check_buckets(buckets);
	PG_RETURN_INT32(jump_consistent_hash((uint64) PG_GETARG_INT64(0), buckets));
}

/*
 * courier_jump_hash_text
 *		jump_hash(key text, buckets int) = jump_hash(hashtextextended(key, 0),
 *		buckets): text keys are first hashed to 64 bits.
 */
Datum
courier_jump_hash_text(PG_FUNCTION_ARGS)
{
	int32		buckets = PG_GETARG_INT32(1);

	check_buckets(buckets);
	PG_RETURN_INT32(jump_consistent_hash((uint64) courier_key_hash64(PG_GETARG_TEXT_PP(0)),
										 buckets));
}

/* CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, not reflected. */
static uint16 crc16_table[256];
static bool crc16_ready = false;

/*
 * crc16_init
 *		Build the byte-at-a-time table once per backend.
 */
static void
crc16_init(void)
{
	for (int i = 0; i < 256; i++)
	{
		uint16		crc = (uint16) (i << 8);

		for (int bit = 0; bit < 8; bit++)
			crc = (crc & 0x8000) ? (uint16) ((crc << 1) ^ 0x1021) : (uint16) (crc << 1);
		crc16_table[i] = crc;
	}
	crc16_ready = true;
}

/*
 * crc16
 *		CRC16/XMODEM of len bytes.
 */
static uint16
crc16(const unsigned char *buf, int len)
{
	uint16		crc = 0;

	if (!crc16_ready)
		crc16_init();
	for (int i = 0; i < len; i++)
		crc = (uint16) ((crc << 8) ^ crc16_table[((crc >> 8) ^ buf[i]) & 0xff]);
	return crc;
}

/*
 * redis_key_slot
 *		Redis Cluster's keyHashSlot(): with a hash tag ("{...}" holding at
 *		least one byte, first '{' and the first '}' after it) only the tag is
 *		hashed; otherwise the whole key.
 */
static int32
redis_key_slot(const char *key, int len)
{
	const char *open = memchr(key, '{', len);

	if (open != NULL)
	{
		int			start = (int) (open - key) + 1;
		const char *close = memchr(key + start, '}', len - start);

		if (close != NULL && close - (key + start) > 0)
			return crc16((const unsigned char *) key + start, (int) (close - (key + start))) & (REDIS_SLOTS - 1);
	}
	return crc16((const unsigned char *) key, len) & (REDIS_SLOTS - 1);
}

/*
 * courier_redis_slot
 *		redis_slot(key text): the Redis Cluster slot (0..16383) of a key.
 */
Datum
courier_redis_slot(PG_FUNCTION_ARGS)
{
	text	   *key = PG_GETARG_TEXT_PP(0);

	PG_RETURN_INT32(redis_key_slot(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key)));
}

/*
 * courier_redis_slot_bytea
 *		redis_slot(key bytea): the same for binary keys.
 */
Datum
courier_redis_slot_bytea(PG_FUNCTION_ARGS)
{
	bytea	   *key = PG_GETARG_BYTEA_PP(0);

	PG_RETURN_INT32(redis_key_slot(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key)));
}
