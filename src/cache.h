/*-------------------------------------------------------------------------
 *
 * cache.h
 *	  Internal declarations of the shared-memory cache (cache*.c).
 *
 * Layout.  The cache is split into N partitions.  Each partition owns, in
 * one contiguous piece of shared memory: an LWLock (from the "pg_courier
 * cache" tranche), a condition variable for loaders, an array of entry
 * headers, a power-of-two array of hash buckets and an array of fixed-size
 * chunks.  An entry's key and value are stored back to back in a chain of
 * chunks, so every allocation is "take k chunks from the free list": memory
 * can never fragment into failure, and a partition with enough free chunks
 * can always store a value that fits.  Entries of a partition form one
 * doubly-linked LRU list (head = most recently used).
 *
 * Everything in a partition is protected by its LWLock.  Indexes (int32,
 * -1 = none) are used instead of pointers inside a partition.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COURIER_CACHE_H
#define COURIER_CACHE_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/lwlock.h"

#define CACHE_TRANCHE			"pg_courier cache"

/* A chunk is 128 bytes: a link to the next chunk and 124 bytes of data. */
#define CACHE_CHUNK_SIZE		128
#define CACHE_CHUNK_DATA		(CACHE_CHUNK_SIZE - sizeof(int32))

/* Longest accepted key, in bytes. */
#define CACHE_MAX_KEY_BYTES		1024

/* Entry states. */
#define CACHE_FREE				0
#define CACHE_VALID				1	/* holds a value */
#define CACHE_LOADING			2	/* a backend runs the loader; no value */
#define CACHE_FAILED			3	/* the loader failed; value = error text */

/* Value types (how the bytes are to be read back). */
#define CACHE_TYPE_TEXT			1
#define CACHE_TYPE_JSONB		2	/* a Jsonb varlena body (binary jsonb) */
#define CACHE_TYPE_BYTEA		3

typedef struct CacheChunk
{
	int32		next;
	char		data[CACHE_CHUNK_DATA];
} CacheChunk;

typedef struct CacheEntry
{
	uint32		hash;
	int32		hnext;			/* next in hash bucket chain */
	int32		prev;			/* LRU neighbours (next doubles as free list) */
	int32		next;
	int32		chunk;			/* first chunk of key || value */
	int32		nchunks;
	Oid			dboid;			/* keys are namespaced by database */
	Oid			owner;			/* ... and by key space (key_space.c) */
	uint16		keylen;
	uint8		state;
	uint8		type;
	uint32		vallen;
	bool		invalidated;	/* LOADING: deleted meanwhile, do not store */
	int			errcode;		/* FAILED: SQLSTATE of the loader's error */
	int			loader_pid;		/* LOADING: who loads */
	uint64		load_id;		/* LOADING/FAILED: which load */
	TimestampTz expires;		/* 0 = never */
} CacheEntry;

typedef struct CacheCounters
{
	uint64		hits;
	uint64		misses;
	uint64		sets;
	uint64		evictions;
	uint64		expirations;
	uint64		deletes;
	uint64		loads;
	uint64		load_failures;
	uint64		stampede_waits;
	uint64		contended;		/* lock acquisitions that had to wait */
} CacheCounters;

typedef struct CachePartition
{
	LWLock	   *lock;
	ConditionVariable cv;		/* broadcast when a load ends */
	CacheEntry *entries;
	int32	   *buckets;
	CacheChunk *chunks;
	int32		nentries;		/* capacity */
	int32		nchunks;
	uint32		bucket_mask;
	int32		lru_head;
	int32		lru_tail;
	int32		free_entry;
	int32		free_chunk;
	int32		used_entries;	/* in any state but FREE */
	int32		used_chunks;
	TimestampTz last_delete;	/* real clock of the latest delete/invalidation */
	CacheCounters c;
} CachePartition;

typedef struct CacheShared
{
	int			npartitions;
	int			max_value_bytes;
	pg_atomic_uint64 load_seq;	/* load ids */
	pg_atomic_uint64 clock_offset;	/* test-only clock shift (microseconds) */
	Size		total_bytes;
	CachePartition *partitions[FLEXIBLE_ARRAY_MEMBER];
} CacheShared;

/* A value copied out of the cache: a palloc'd varlena of its stored type. */
typedef struct CacheValue
{
	uint8		type;
	struct varlena *data;
} CacheValue;

/* cache.c */
extern CacheShared *cache_shared;
extern int	cache_default_ttl_s;
extern double cache_ttl_jitter;
extern int	cache_load_timeout_ms;

extern void cache_check_available(void);
extern TimestampTz cache_now(void);
extern TimestampTz cache_expiry(Interval *ttl, bool ttl_null, TimestampTz now);
extern void cache_check_key(int keylen);
extern void cache_check_value(int vallen);
extern Datum cache_value_to_text(CacheValue *v);
extern Datum cache_value_to_jsonb(CacheValue *v);
extern Datum cache_value_to_bytea(CacheValue *v);

/* cache_store.c (partition lock held unless said otherwise) */
extern uint32 cache_hash(const char *key, int keylen);
extern CachePartition *cache_partition(uint32 hash);
extern void cache_lock(CachePartition *p);
extern int32 cache_lookup(CachePartition *p, uint32 hash, const char *key, int keylen);
extern void cache_remove(CachePartition *p, int32 idx);
extern void cache_move_front(CachePartition *p, int32 idx);
extern int32 cache_insert(CachePartition *p, uint32 hash, const char *key, int keylen,
						  const char *val, int vallen, uint8 type, uint8 state);
extern struct varlena *cache_copy_value(CachePartition *p, CacheEntry *e);
extern bool cache_key_has_prefix(CachePartition *p, CacheEntry *e, const char *prefix, int len);
extern bool cache_delete_key(const char *key, int keylen);
/* What cache_delete_matching reaches. */
typedef enum CacheReach
{
	CACHE_REACH_KEY_SPACE,		/* this database, the current key space */
	CACHE_REACH_DATABASE,		/* this database, every key space */
	CACHE_REACH_CLUSTER			/* every database */
} CacheReach;

extern int64 cache_delete_matching(const char *prefix, int len, CacheReach reach);
extern void cache_partition_layout(int npartitions, Size bytes, int max_entries,
								   int32 *nentries, int32 *nchunks, int32 *nbuckets);
extern Size cache_partition_size(int32 nentries, int32 nchunks, int32 nbuckets);
extern void cache_partition_init(CachePartition *p, int32 nentries, int32 nchunks, int32 nbuckets);

/* cache_inval.c */
extern bool cache_inval_pending(void);

/*
 * The key space (a role, key_space.c) of the cache call being made: set by
 * cache_check_available() at each SQL entry point, and by code acting for
 * another call (the commit-time invalidation, the end of a load) before it
 * looks keys up.  Entries of other key spaces are invisible to lookups and
 * deletions.
 */
extern Oid	cache_space;

#endif							/* COURIER_CACHE_H */
