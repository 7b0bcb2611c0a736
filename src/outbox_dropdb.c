/*-------------------------------------------------------------------------
 *
 * outbox_dropdb.c
 *	  DROP DATABASE of a database a delivery worker serves; and pg_courier's
 *	  ProcessUtility hook, which also hands COPY FROM STDIN of the tables
 *	  that name relations to restore_copy.c.
 *
 * DROP DATABASE refuses while other sessions are connected (it waits five
 * seconds for them), and a delivery worker stays connected to its database
 * for as long as the server runs.  (So do ALTER DATABASE ... RENAME TO and
 * SET TABLESPACE, and CREATE DATABASE ... TEMPLATE of the served database.)
 * So a ProcessUtility hook that sees DROP DATABASE (with or without FORCE;
 * or one of the others) first asks the database's worker to leave:
 * it marks the database as "leaving" in shared memory until a deadline and
 * sends the worker SIGTERM; the launcher starts no worker for a leaving
 * database, and a worker that starts meanwhile does not attach to it.  If
 * DROP DATABASE then fails (a user session is still connected, the caller
 * may not drop it, ...), the mark is removed and the launcher starts the
 * worker again; if it succeeds, the database is gone and the launcher,
 * which checks that a database exists before it starts its worker, leaves it
 * alone until a database of that name is created again.
 *
 * Lock rule: the "leaving" mark and the worker table are read and written
 * under courier_shared->lock in exclusive mode, so a worker that attaches
 * either sees the mark or is seen (and signalled) by the hook.
 *
 * Trust: anyone may run DROP DATABASE; PostgreSQL checks ownership.  Before
 * that check, an unprivileged caller could at most make the worker of a
 * database restart (the mark lasts COURIER_LEAVING_MS and is removed when
 * the command fails), which is no more than a failed DROP of one's own
 * database does.  So the worker is asked to leave only when the caller owns
 * the database (or is a superuser), the check DROP DATABASE makes itself.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/timestamp.h"

#include "pg_courier.h"
#include "outbox_registry.h"
#include "outbox_shmem.h"
#include "restore_copy.h"

/* how long a worker stays away from a database that is being dropped */
#define COURIER_LEAVING_MS	(30 * 1000)

static ProcessUtility_hook_type prev_process_utility = NULL;

/*
 * ask_worker_to_leave
 *		Mark dboid as leaving and signal the worker that serves it (the
 *		caller removes the mark if the drop fails).
 */
static void
ask_worker_to_leave(Oid dboid)
{
	pid_t		pid = 0;

	LWLockAcquire(courier_shared->lock, LW_EXCLUSIVE);
	courier_shared->leaving_dboid = dboid;
	courier_shared->leaving_until =
		TimestampTzPlusMilliseconds(GetCurrentTimestamp(), COURIER_LEAVING_MS);
	for (int i = 0; i < courier_shared->nworkers; i++)
		if (courier_shared->workers[i].pid != 0 && courier_shared->workers[i].dboid == dboid)
			pid = courier_shared->workers[i].pid;
	LWLockRelease(courier_shared->lock);

	/* the worker exits on SIGTERM like on pg_terminate_backend(): nothing is lost */
	if (pid != 0 && kill(pid, SIGTERM) != 0)
		ereport(WARNING,
				(errmsg("pg_courier: could not signal the delivery worker (PID %d): %m", (int) pid)));
}

/*
 * forget_leaving
 *		Remove the mark of dboid (the drop failed: the worker may come back).
 */
static void
forget_leaving(Oid dboid)
{
	LWLockAcquire(courier_shared->lock, LW_EXCLUSIVE);
	if (courier_shared->leaving_dboid == dboid)
		courier_shared->leaving_dboid = InvalidOid;
	LWLockRelease(courier_shared->lock);
}

/*
 * courier_database_leaving
 *		Whether dboid is being dropped (the launcher starts no worker for it;
 *		a worker does not attach to it).  Caller holds courier_shared->lock.
 */
bool
courier_database_leaving(Oid dboid)
{
	return OidIsValid(dboid) && courier_shared->leaving_dboid == dboid &&
		GetCurrentTimestamp() < courier_shared->leaving_until;
}

/*
 * option_string
 *		The value of the DefElem named name in options, or NULL.
 */
static const char *
option_string(List *options, const char *name)
{
	ListCell   *lc;

	foreach(lc, options)
	{
		DefElem    *opt = lfirst_node(DefElem, lc);

		if (strcmp(opt->defname, name) == 0 && opt->arg != NULL)
			return defGetString(opt);
	}
	return NULL;
}

/*
 * dropdb_target
 *		The database a command needs alone (no other session connected):
 *		DROP DATABASE, ALTER DATABASE ... RENAME TO and SET TABLESPACE, and
 *		CREATE DATABASE ... TEMPLATE; when the caller owns it (the command
 *		checks its own rights later) and a worker could serve it.  *back:
 *		the database is still there afterwards (its worker comes back even
 *		when the command succeeds).  InvalidOid for anything else.
 */
static Oid
dropdb_target(Node *parsetree, bool *back)
{
	const char *dbname = NULL;
	Oid			dboid;

	*back = false;
	if (courier_shared == NULL)
		return InvalidOid;
	if (IsA(parsetree, DropdbStmt))
		dbname = ((DropdbStmt *) parsetree)->dbname;
	else if (IsA(parsetree, RenameStmt) && ((RenameStmt *) parsetree)->renameType == OBJECT_DATABASE)
		dbname = ((RenameStmt *) parsetree)->subname;
	else if (IsA(parsetree, AlterDatabaseStmt) &&
			 option_string(((AlterDatabaseStmt *) parsetree)->options, "tablespace") != NULL)
	{
		dbname = ((AlterDatabaseStmt *) parsetree)->dbname;
		*back = true;
	}
	else if (IsA(parsetree, CreatedbStmt))
	{
		dbname = option_string(((CreatedbStmt *) parsetree)->options, "template");
		*back = true;
	}
	if (dbname == NULL)
		return InvalidOid;
	dboid = get_database_oid(dbname, true);
	if (!OidIsValid(dboid) || dboid == MyDatabaseId ||
		!courier_database_ownercheck(dboid, GetUserId()))
		return InvalidOid;
	return dboid;
}

/*
 * courier_process_utility
 *		DROP DATABASE (and the other commands of dropdb_target): the worker
 *		leaves first; if the command fails it comes back.  COPY FROM STDIN
 *		of the tables that name relations goes to
 *		restore_copy.c.  Everything else passes through.
 */
static void
courier_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
						ProcessUtilityContext context, ParamListInfo params,
						QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	bool		comes_back;
	volatile Oid dboid = dropdb_target(pstmt->utilityStmt, &comes_back);
	volatile bool back = comes_back;

	/* (the restore of the tables that name relations: restore_copy.c) */
	if (courier_restore_copy(prev_process_utility, pstmt, queryString, readOnlyTree, context, params,
							 queryEnv, dest, qc))
		return;
	if (OidIsValid(dboid))
		ask_worker_to_leave(dboid);
	PG_TRY();
	{
		if (prev_process_utility)
			prev_process_utility(pstmt, queryString, readOnlyTree, context, params,
								 queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
									queryEnv, dest, qc);
	}
	PG_CATCH();
	{
		/* the mark must not outlive a failed DROP (the worker would stay away) */
		if (OidIsValid(dboid))
			forget_leaving(dboid);
		PG_RE_THROW();
	}
	PG_END_TRY();

	/*
	 * Dropped or renamed: the mark stays until its deadline, so that the
	 * launcher does not start a worker before the command commits; then it
	 * sees that the database (of that name) is gone.  Copied or moved: the
	 * worker comes back.
	 */
	if (OidIsValid(dboid) && back)
		forget_leaving(dboid);
}

/*
 * courier_dropdb_init
 *		Install the hook (at preload, in every backend).
 */
void
courier_dropdb_init(void)
{
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = courier_process_utility;
}
