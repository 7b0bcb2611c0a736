/*-------------------------------------------------------------------------
 *
 * shard.h
 *	  Declarations shared by the shard routing files (shard.c, shard_ring.c,
 *	  shard_cache.c, shard_map.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef COURIER_SHARD_H
#define COURIER_SHARD_H

#include "postgres.h"

#include "fmgr.h"
#include "utils/memutils.h"

/*
 * The 64-bit hash of a key's bytes used by the ring and by jump_hash(text):
 * PostgreSQL's hash_bytes_extended with seed 0, i.e. what
 * hashtextextended(key, 0) returns under a deterministic collation.
 */
extern int64 courier_key_hash64(text *key);

/* ---- backend-local cache of rings and maps (shard_cache.c) ---- */

/*
 * Bumped by the relcache callback whenever a ring or map table changes (and
 * on a full cache reset); whatever was built under an older value is stale.
 */
extern uint64 courier_shard_generation;

/* Registers the invalidation callback once per backend. */
extern void courier_shard_cache_setup(void);

/*
 * Memory context holding everything cached for the current generation; it is
 * reset (not deleted) when the generation moves on.
 */
extern MemoryContext courier_shard_cache_context(void);

/*
 * Runs a read-only query (with optional text parameters) against the latest
 * committed state of the catalogs, so that a cache filled from it never holds
 * data older than the last invalidation it has seen.  The caller must have
 * done SPI_connect.
 */
extern void courier_shard_cache_query(const char *sql, int nargs, Oid *argtypes,
									  Datum *values);

/* Raises the "unknown ring/map" or NULL-name errors. */
extern void courier_shard_check_name(const char *what, bool isnull);

#endif							/* COURIER_SHARD_H */
