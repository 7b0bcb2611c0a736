/*-------------------------------------------------------------------------
 *
 * owner_exec.c
 *	  Run statements on another role's relation as that role, restricted,
 *	  and leave nothing of it behind: the way PostgreSQL's own VACUUM,
 *	  ANALYZE and REFRESH MATERIALIZED VIEW run a table owner's code.
 *
 * Trust rules.  Whatever a table's owner attached to it (triggers, rules,
 * constraints, index expressions, row-level security policies, functions
 * with SET clauses) is hostile to whoever touches the table: the delivery
 * worker (a superuser), and any role reading or writing it on pg_courier's
 * behalf.  Every statement pg_courier runs on such a table therefore runs
 * through courier_run_as_owner():
 *	- as the table's owner, under SECURITY_RESTRICTED_OPERATION (no SET ROLE
 *	  or SESSION AUTHORIZATION, no temporary objects, no LISTEN, no PREPARE,
 *	  no cursors WITH HOLD: PostgreSQL refuses what would outlive the
 *	  operation by design);
 *	- inside a GUC nest level that is rolled back afterwards, with
 *	  search_path forced to COURIER_SAFE_SEARCH_PATH for the statement's own
 *	  parse and plan: no setting the owner's code makes survives, not even
 *	  set_config(..., false) or ALTER FUNCTION ... SET;
 *	- in the delivery worker, followed by the release of every session-level
 *	  advisory lock of the backend: restricted operations may still take
 *	  them.  The worker itself never holds one (it only ever takes
 *	  transaction-level locks), so whatever is there was left by owner code.
 *	  Ordinary backends keep theirs: they may be the session's own, and what
 *	  owner code left there is held by that session only (doc/security.md).
 *
 * Errors.  An error raised inside propagates; the (sub)transaction abort
 * that catches it (courier_run_contained, or the worker's error recovery)
 * restores the identity and pops the GUC nest level.  Session-level state
 * is not transactional, so it is released here before the error goes on.
 *
 * One statement per call (courier_owner_execute_plan): a nest level spanning
 * several statements would let the first one's owner code set the search_path
 * the next one is parsed with.  A caller may wrap its own work on the owner's
 * rows in an outer call as well (the delivery worker's read does).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/guc.h"

#include "pg_courier.h"
#include "owner_exec.h"

/* true in the delivery worker: session-level advisory locks are owner code's */
static bool release_advisory_locks = false;

/* Arguments and result of one SPI_execute_plan run by execute_plan_call. */
typedef struct PlanCall
{
	SPIPlanPtr	plan;
	Datum	   *args;
	const char *nulls;
	bool		read_only;
	long		count;
	int			rc;
} PlanCall;

/*
 * courier_owner_exec_worker_mode
 *		Called once by the delivery worker: from now on, session-level
 *		advisory locks are released after owner code.
 */
void
courier_owner_exec_worker_mode(void)
{
	release_advisory_locks = true;
}

/*
 * release_session_locks
 *		Release the session-level advisory locks owner code took, where they
 *		cannot be ours (the worker).
 */
static void
release_session_locks(void)
{
	if (!release_advisory_locks)
		return;
	LockReleaseSession(USER_LOCKMETHOD);
}

/*
 * courier_run_as_owner
 *		Run fn(arg) as role "owner", restricted, inside a GUC nest level with a
 *		safe search_path; afterwards restore the caller's identity and every
 *		setting, and (in the worker) release the session advisory locks taken.
 */
void
courier_run_as_owner(Oid owner, void (*fn) (void *), void *arg)
{
	Oid			save_user;
	int			save_sec;
	int			save_nestlevel;

	GetUserIdAndSecContext(&save_user, &save_sec);
	SetUserIdAndSecContext(owner,
						   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	save_nestlevel = NewGUCNestLevel();
	PG_TRY();
	{
		(void) set_config_option("search_path", COURIER_SAFE_SEARCH_PATH, PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
		fn(arg);
	}
	PG_CATCH();
	{
		/* identity and settings: restored by the (sub)transaction abort */
		release_session_locks();
		PG_RE_THROW();
	}
	PG_END_TRY();
	AtEOXact_GUC(false, save_nestlevel);
	SetUserIdAndSecContext(save_user, save_sec);
	release_session_locks();
}

static void
execute_plan_call(void *arg)
{
	PlanCall   *c = arg;

	c->rc = SPI_execute_plan(c->plan, c->args, c->nulls, c->read_only, c->count);
}

/*
 * courier_owner_execute_plan
 *		SPI_execute_plan as "owner", through courier_run_as_owner.  Returns
 *		SPI_execute_plan's result; SPI_processed and SPI_tuptable are set as
 *		usual.
 */
int
courier_owner_execute_plan(Oid owner, SPIPlanPtr plan, Datum *args, const char *nulls,
						   bool read_only, long count)
{
	PlanCall	c = {plan, args, nulls, read_only, count, 0};

	courier_run_as_owner(owner, execute_plan_call, &c);
	return c.rc;
}
