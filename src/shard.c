/*-------------------------------------------------------------------------
 *
 * shard.c
 *	  (placeholder: implemented by its own issue)
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "pg_courier.h"

/*
 * courier_shard_init
 *		Define this module's GUCs (called from _PG_init).
 */
void
courier_shard_init(void)
{
}

