/*-------------------------------------------------------------------------
 *
 * saga.c
 *	  (placeholder: implemented by its own issue)
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "pg_courier.h"

/*
 * courier_saga_init
 *		Define this module's GUCs (called from _PG_init).
 */
void
courier_saga_init(void)
{
}

/*
 * courier_saga_maintenance
 *		Called by the database worker between delivery rounds (in a transaction).
 */
void
courier_saga_maintenance(void)
{
}

