/*-------------------------------------------------------------------------
 *
 * cache.c
 *	  (placeholder: the shared-memory cache is implemented by its own issue)
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "pg_courier.h"

/*
 * courier_cache_init
 *		Define the cache GUCs (called from _PG_init).
 */
void
courier_cache_init(void)
{
}

/*
 * courier_cache_shmem_request
 *		Request the cache's shared memory and LWLock tranche (shmem_request_hook).
 */
void
courier_cache_shmem_request(void)
{
}

/*
 * courier_cache_shmem_size
 *		Bytes of shared memory the cache needs.
 */
Size
courier_cache_shmem_size(void)
{
	return 0;
}

/*
 * courier_cache_shmem_init
 *		Create or attach the cache's shared state (under AddinShmemInitLock).
 */
void
courier_cache_shmem_init(void)
{
}
