/*-------------------------------------------------------------------------
 *
 * shared_tables.c
 *	  The delivery worker never waits for a lock that another role holds on
 *	  a table all roles share.
 *
 * courier.outboxes, courier.dead_letters and courier.delivered_events are
 * shared by every role of the database (row-level security keeps each role
 * to its own rows), and PUBLIC may UPDATE or DELETE there: so any role may
 * also LOCK TABLE them in ACCESS EXCLUSIVE (or SHARE) mode and keep the
 * lock in an open transaction.  A worker that waited for it would stall
 * every role's delivery for as long as that role wished.
 *
 * Lock rule: each worker transaction that reads or writes these tables
 * first takes ROW EXCLUSIVE on all three with ConditionalLockRelationOid
 * (held to its end, so no later statement of the transaction waits).  When
 * one is not available the transaction does nothing with them: the round is
 * skipped (tried again at the next poll) and the stall is reported once, as
 * a WARNING naming the table, and its end once, as a LOG line.  Other
 * sessions of other roles (create_outbox, stats) still wait for such a lock
 * like for any lock: their own lock_timeout / statement_timeout applies.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/lsyscache.h"

#include "pg_courier.h"
#include "owner_exec.h"
#include "outbox_worker.h"

static const char *const shared_tables[] = {"outboxes", "dead_letters", "delivered_events"};

#define NSHARED lengthof(shared_tables)

/* the worker reported that this table was locked, and not yet its release */
static bool reported[NSHARED];

/*
 * courier_shared_tables_lock
 *		Take ROW EXCLUSIVE on every shared table without waiting, in the
 *		current transaction.  Returns false, having reported it once (when
 *		report), if one of them is locked by another transaction.
 */
bool
courier_shared_tables_lock(bool report)
{
	Oid			nsp = courier_schema_oid();

	for (int i = 0; i < (int) NSHARED; i++)
	{
		Oid			relid = get_relname_relid(shared_tables[i], nsp);

		if (!OidIsValid(relid))
			continue;
		if (!ConditionalLockRelationOid(relid, RowExclusiveLock))
		{
			if (report && !reported[i])
				ereport(WARNING,
						(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
						 errmsg("pg_courier: table %s is locked by another transaction: delivery in database \"%s\" waits until it is released",
								courier_qualified(shared_tables[i]), get_database_name(MyDatabaseId)),
						 errhint("Find the session with pg_locks and end its transaction.  This is reported once.")));
			reported[i] |= report;
			return false;
		}
		if (report && reported[i])
		{
			ereport(LOG,
					(errmsg("pg_courier: table %s is no longer locked: delivery resumes",
							courier_qualified(shared_tables[i]))));
			reported[i] = false;
		}
	}
	return true;
}
