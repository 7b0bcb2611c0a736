/*-------------------------------------------------------------------------
 *
 * outbox_worker.c
 *	  The delivery worker of one database: waits for commits into outboxes,
 *	  reads committed rows, sends them, records the outcome, repeats.
 *
 * Loop.  Each turn (1) records finished requests, (2) if there is reason to
 * (a commit woke us, requests finished, a retry or rescan is due, or the
 * poll interval passed) reads every outbox that has in-flight budget left
 * and starts requests, and (3) waits: on libcurl's sockets while requests
 * are in flight, otherwise on the latch that committing producers set.
 *
 * Errors.  One outbox's problem (a dropped table, a bad row) is contained in
 * a subtransaction and recorded in its stats.  Anything else lands in the
 * sigsetjmp handler below, which reports it, forgets the in-memory delivery
 * state (rows still pending are simply read again: at least once) and
 * pauses a second, so the worker never spins in a crash loop.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/pmsignal.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "pg_courier.h"
#include "outbox_worker.h"
#include "owner_exec.h"

PGDLLEXPORT void courier_worker_main(Datum arg);

MemoryContext courier_worker_context = NULL;

static List *outboxes = NIL;
static TimestampTz last_round = 0;
static TimestampTz last_refresh = 0;
static TimestampTz last_maintenance = 0;
static bool more_waiting = false;	/* the last round left rows behind */
static Oid	schema_refused = InvalidOid;	/* extension schema we said we do not serve */

#define REFRESH_INTERVAL_MS		200
#define MIN_ROUND_INTERVAL_MS	1
#define MAINTENANCE_INTERVAL_MS 1000

/*
 * detach_worker
 *		on_shmem_exit: give up the worker table entry.
 */
static void
detach_worker(int code, Datum arg)
{
	courier_worker_detach();
}

typedef struct DispatchCall
{
	OutboxState *ob;
	const CourierHoldSet *holds;
	bool		more;
} DispatchCall;

static void
dispatch_as_owner(void *arg)
{
	DispatchCall *c = arg;

	c->more = courier_dispatch(c->ob, c->holds);
}

/*
 * dispatch_call
 *		The whole read runs as the outbox's owner, restricted (its statements
 *		each in a nest level of their own, see owner_exec.c): nothing the
 *		owner attached to the table runs with our rights or leaves settings.
 */
static void
dispatch_call(void *arg)
{
	DispatchCall *c = arg;

	courier_run_as_owner(c->ob->owner, dispatch_as_owner, c);
}

/*
 * dispatch_one
 *		Read and send one outbox, contained: a failure marks the outbox
 *		broken (reported once, retried with a backoff: outbox_health.c) and
 *		does not stop the others.  Returns "more waiting".
 */
static bool
dispatch_one(OutboxState *ob, const CourierHoldSet *holds)
{
	DispatchCall c = {ob, holds, false};
	ErrorData  *error;

	if (!ob->wanted || ob->shape_problem || courier_health_resting(&ob->delivery, GetCurrentTimestamp()))
		return false;
	if (courier_run_contained_quiet(dispatch_call, &c, &error))
		courier_health_ok(ob, &ob->delivery, false);
	else
	{
		courier_health_failed(ob, &ob->delivery, error, false);
		courier_counters_record(ob->counters, 0, 0, 0, NULL);
		courier_dispatch_abort(ob);
		/* statements may refer to a dropped or altered table: prepare them again */
		courier_free_plans(ob);
		return false;
	}
	return c.more;
}

/*
 * forget_all_outboxes
 *		The extension is gone (or we recover from an error): wait for the
 *		requests in flight and drop every in-memory state.  Rows that were in
 *		flight stay pending in their tables and are sent again later.
 */
static void
forget_all_outboxes(void)
{
	CourierHttpRequest *req;
	ListCell   *lc;
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), courier_http_timeout_ms + 1000);

	while (courier_http_poll(50) > 0 && GetCurrentTimestamp() < deadline)
		CHECK_FOR_INTERRUPTS();
	while ((req = courier_http_next_done()) != NULL)
		courier_http_release(req);
	/* requests still running (a long per-outbox timeout) are dropped before their bodies are freed */
	courier_http_abandon_all();
	foreach(lc, outboxes)
		courier_free_plans(lfirst(lc));
	/* deliveries live in child contexts of the worker context */
	list_free(outboxes);
	outboxes = NIL;
	MemoryContextReset(courier_worker_context);
	last_refresh = 0;
}

/*
 * extension_usable
 *		Is pg_courier installed here, in a schema we may trust?  A schema (or
 *		extension) owned by a non-superuser could have its objects replaced
 *		by that role, and the worker runs our SQL there as superuser: the
 *		database is then not served.  Said once in the log (and once when it
 *		is fixed), not at every refresh.  Called in a transaction.
 */
static bool
extension_usable(void)
{
	Oid			nsp;

	if (!OidIsValid(get_extension_oid(COURIER_EXTENSION, true)))
		return false;
	nsp = courier_schema_oid();
	if (courier_schema_trusted())
	{
		if (OidIsValid(schema_refused))
			ereport(LOG,
					(errmsg("pg_courier: the schema of extension \"%s\" is owned by a superuser again: serving database \"%s\"",
							COURIER_EXTENSION, get_database_name(MyDatabaseId))));
		schema_refused = InvalidOid;
		return true;
	}
	if (schema_refused != nsp)
		ereport(WARNING,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("pg_courier: not serving database \"%s\": schema %s of extension \"%s\" or the extension itself is not owned by a superuser",
						get_database_name(MyDatabaseId), courier_schema_name(), COURIER_EXTENSION),
				 errhint("Its owner could replace what the delivery worker runs.  Make a superuser own it (ALTER SCHEMA ... OWNER TO), or drop and create the extension as a superuser.")));
	schema_refused = nsp;
	return false;
}

/*
 * delivery_round
 *		One read of every outbox, under a snapshot taken atomically with the
 *		producer registry.  Returns true when some outbox has more waiting.
 */
static bool
delivery_round(void)
{
	CourierHoldSet holds;
	ListCell   *lc;
	bool		more = false;
	bool		rescan = courier_worker_take_rescan();
	bool		any = false;
	int			n_before;
	TimestampTz now = GetCurrentTimestamp();

	/* nothing could be sent and nothing new to read: no transaction at all */
	foreach(lc, outboxes)
	{
		OutboxState *ob = lfirst(lc);

		ob->wanted = courier_dispatch_possible(ob);
		any |= ob->wanted;
	}
	n_before = list_length(outboxes);
	if (!any && !rescan && last_refresh != 0 &&
		!TimestampDifferenceExceeds(last_refresh, now, REFRESH_INTERVAL_MS))
		return false;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	/* every read of this round must use the snapshot taken with the holds */
	XactIsoLevel = XACT_REPEATABLE_READ;
	SPI_connect();

	if (!extension_usable())
	{
		SPI_finish();
		CommitTransactionCommand();
		if (outboxes != NIL)
			forget_all_outboxes();
		courier_worker_set_state(OidIsValid(schema_refused) ?
								 "refusing: untrusted schema" :
								 "waiting for CREATE EXTENSION");
		return false;
	}

	/* another role locked a table all roles share: skip the round, never wait */
	if (!courier_shared_tables_lock(true))
	{
		SPI_finish();
		CommitTransactionCommand();
		courier_worker_set_state("waiting: a shared table is locked");
		return false;
	}
	PushActiveSnapshot(courier_registry_snapshot(&holds));
	if (rescan || last_refresh == 0 || TimestampDifferenceExceeds(last_refresh, now, REFRESH_INTERVAL_MS))
	{
		courier_refresh_outboxes(&outboxes);
		last_refresh = now;
		/* outboxes seen for the first time are read in this round already */
		for_each_from(lc, outboxes, n_before)
			((OutboxState *) lfirst(lc))->wanted = ((OutboxState *) lfirst(lc))->enabled;
	}
	if (rescan)
	{
		foreach(lc, outboxes)
		{
			((OutboxState *) lfirst(lc))->rescan = true;
			((OutboxState *) lfirst(lc))->rescan_at = 0;
			((OutboxState *) lfirst(lc))->wanted = ((OutboxState *) lfirst(lc))->enabled;
		}
	}
	foreach(lc, outboxes)
		more |= dispatch_one(lfirst(lc), &holds);

	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	courier_worker_set_state(outboxes == NIL ? "idle: no outboxes" : "delivering");
	return more;
}

/*
 * collect_finished
 *		Record every finished request.  Returns how many there were.
 */
static int
collect_finished(void)
{
	CourierHttpRequest *req;
	List	   *finished = NIL;
	int			n;

	while ((req = courier_http_next_done()) != NULL)
		finished = lappend(finished, req->owner);
	n = list_length(finished);
	courier_complete(finished);
	list_free(finished);
	return n;
}

/*
 * can_send
 *		Could the outbox send now?  Timers of outboxes that cannot (paused,
 *		breaker open, no budget) must not keep the worker awake.
 */
static bool
can_send(OutboxState *ob, TimestampTz now)
{
	TimestampTz reopen = courier_breaker_next_change(ob->breaker);

	return ob->enabled && ob->inflight < OB_INFLIGHT(ob) &&
		(reopen == 0 || now >= reopen) && !ob->shape_problem && !courier_health_resting(&ob->delivery, now);
}

/*
 * in_flight
 *		Requests in flight, over all outboxes.
 */
static int
in_flight(void)
{
	ListCell   *lc;
	int			n = 0;

	foreach(lc, outboxes)
		n += ((OutboxState *) lfirst(lc))->inflight;
	return n;
}

/*
 * timer_due
 *		Is a rescan, a retry or the fallback poll due?
 */
static bool
timer_due(TimestampTz now)
{
	ListCell   *lc;

	if (TimestampDifferenceExceeds(last_round, now, courier_poll_interval_ms))
		return true;
	foreach(lc, outboxes)
	{
		OutboxState *ob = lfirst(lc);
		TimestampTz breaker = courier_breaker_next_change(ob->breaker);

		if (!can_send(ob, now) && !(breaker != 0 && now >= breaker))
			continue;

		if ((ob->rescan && now >= ob->rescan_at) || (ob->retry_at != 0 && now >= ob->retry_at) ||
			(breaker != 0 && now >= breaker))
			return true;
	}
	return false;
}

/*
 * next_wait_ms
 *		How long to sleep when nothing is in flight.
 */
static long
next_wait_ms(TimestampTz now)
{
	long		wait = courier_poll_interval_ms;
	ListCell   *lc;

	foreach(lc, outboxes)
	{
		OutboxState *ob = lfirst(lc);

		if (!can_send(ob, now))
			continue;
		if (ob->rescan)
			wait = Min(wait, TimestampDifferenceMilliseconds(now, ob->rescan_at));
		if (ob->retry_at != 0)
			wait = Min(wait, TimestampDifferenceMilliseconds(now, ob->retry_at) + 1);
		if (courier_breaker_next_change(ob->breaker) != 0)
			wait = Min(wait, TimestampDifferenceMilliseconds(now, courier_breaker_next_change(ob->breaker)) + 1);
	}
	return Max(wait, 1);
}

static void
call_void(void *fn)
{
	((void (*) (void)) fn) ();
}

/*
 * purge_orphans
 *		Retained delivered events of outboxes that are gone or keep none.
 */
static void
purge_orphans(void *arg)
{
	SPI_connect();
	*(bool *) arg = courier_purge_orphaned_delivered();
	SPI_finish();
}

/* Arguments and result of purge_one, through courier_run_contained_quiet. */
typedef struct PurgeCall
{
	OutboxState *ob;
	bool		more;
} PurgeCall;

/*
 * purge_one
 *		One outbox's retained delivered events past its retention.
 */
static void
purge_one(void *arg)
{
	PurgeCall  *c = arg;

	SPI_connect();
	c->more = courier_purge_delivered_of(c->ob);
	SPI_finish();
}

/*
 * purge_delivered
 *		Remove retained delivered events past their outbox's retention (or
 *		whose outbox is gone or keeps none any more), in small batches, every
 *		10 s.  Each outbox's purge is contained: a retention its owner stored
 *		that cannot be computed with fails that outbox's purge only, and is
 *		reported like a broken outbox (outbox_health.c).
 */
static void
purge_delivered(TimestampTz now)
{
	static TimestampTz last_purge = 0;
	bool		more = false;
	ListCell   *lc;

	if (!TimestampDifferenceExceeds(last_purge, now, 10 * 1000))
		return;
	last_purge = now;
	(void) courier_run_contained(purge_orphans, &more, "purging delivered events of dropped outboxes failed");
	foreach(lc, outboxes)
	{
		OutboxState *ob = lfirst(lc);
		PurgeCall	c = {ob, false};
		ErrorData  *error;

		if (!ob->retain)
		{
			courier_health_ok(ob, &ob->maintenance, false);	/* (no retention: nothing to fail) */
			continue;
		}
		if (courier_health_resting(&ob->maintenance, now))
			continue;
		if (courier_run_contained_quiet(purge_one, &c, &error))
			courier_health_ok(ob, &ob->maintenance, false);
		else
			courier_health_failed(ob, &ob->maintenance, error, false);
		more |= c.more;
	}
	if (more)
		last_purge = 0;			/* more may be due */
}

/*
 * maintenance
 *		Housekeeping of the other capabilities (expired idempotency keys,
 *		saga timeouts), in its own transaction, about once a second.
 */
static void
maintenance(TimestampTz now)
{
	if (!TimestampDifferenceExceeds(last_maintenance, now, MAINTENANCE_INTERVAL_MS))
		return;
	last_maintenance = now;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (extension_usable() && courier_shared_tables_lock(true))
	{
		PushActiveSnapshot(GetTransactionSnapshot());
		courier_run_contained(call_void, (void *) courier_idempotency_maintenance, "idempotency key sweep failed");
		courier_run_contained(call_void, (void *) courier_saga_maintenance, "saga timeout enforcement failed");
		purge_delivered(now);
		PopActiveSnapshot();
	}
	CommitTransactionCommand();
}

/*
 * apply_ack_mode
 *		With courier.synchronous_ack off, acknowledgements commit
 *		asynchronously: a crash may forget the last ones, and those events
 *		(already delivered) are sent again.  On, only requests in flight at
 *		the crash can be repeated.
 */
static void
apply_ack_mode(void)
{
	SetConfigOption("synchronous_commit", courier_synchronous_ack ? "on" : "off", PGC_SUSET, PGC_S_OVERRIDE);
}

/*
 * courier_worker_main
 *		Entry point of a database's delivery worker.
 */
void
courier_worker_main(Datum arg)
{
	char		dbname[NAMEDATALEN];
	sigjmp_buf	local_sigjmp_buf;

	strlcpy(dbname, MyBgworkerEntry->bgw_extra, NAMEDATALEN);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(dbname, NULL, 0);
	pgstat_report_appname("pg_courier worker");

	if (courier_worker_attach(dbname) == NULL)
	{
		ereport(LOG, (errmsg("pg_courier: database \"%s\" already has a delivery worker or is being dropped",
							 dbname)));
		proc_exit(0);
	}
	before_shmem_exit(detach_worker, (Datum) 0);

	apply_ack_mode();

	/*
	 * Nothing a user can create in a schema on the default path may resolve
	 * our SQL.  Owner code cannot change this: it runs in GUC nest levels
	 * that are rolled back (owner_exec.c), which also releases the session
	 * advisory locks it leaves: the worker holds none of its own.
	 */
	SetConfigOption("search_path", COURIER_SAFE_SEARCH_PATH, PGC_SUSET, PGC_S_OVERRIDE);
	courier_owner_exec_worker_mode();
	/*
	 * Our statements are simple index scans: plan them once, not per
	 * execution, and as index scans whatever the table's size was then.  A
	 * generic plan made while an outbox was nearly empty would otherwise
	 * read rows by id (parked rows, acknowledgements, failures) with a
	 * sequential scan, and go on doing so once a backlog has grown: every
	 * acknowledgement would read the whole backlog.  (A cost only: what has
	 * no index is still read.)
	 */
	SetConfigOption("plan_cache_mode", "force_generic_plan", PGC_USERSET, PGC_S_OVERRIDE);
	SetConfigOption("enable_seqscan", "off", PGC_USERSET, PGC_S_OVERRIDE);
	courier_worker_context = AllocSetContextCreate(TopMemoryContext, "pg_courier worker",
												   ALLOCSET_DEFAULT_SIZES);
	courier_http_init();
	courier_health_watch(&outboxes);
	ereport(LOG, (errmsg("pg_courier: delivery worker started for database \"%s\"", dbname)));

	if (sigsetjmp(local_sigjmp_buf, 1) != 0)
	{
		/* error recovery, in the manner of PostgreSQL's own background processes */
		HOLD_INTERRUPTS();
		EmitErrorReport();
		AbortOutOfAnyTransaction();
		MemoryContextSwitchTo(TopMemoryContext);
		FlushErrorState();
		RESUME_INTERRUPTS();
		forget_all_outboxes();
		courier_worker_set_state("recovering from an error");
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 1000, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	PG_exception_stack = &local_sigjmp_buf;

	for (;;)
	{
		bool		woken;
		int			finished;
		bool		more = false;
		TimestampTz now;

		/*
		 * Reset the latch first, then take the producers' wake flag (before
		 * this loop's snapshot): a producer that finds the flag clear sets
		 * the latch after our reset; one that found it set committed before
		 * we took it, and its commit is counted.
		 */
		woken = MyLatch->is_set;
		ResetLatch(MyLatch);
		woken |= courier_worker_take_wake();
		CHECK_FOR_INTERRUPTS();
		/* while requests are in flight we wait on libcurl's sockets, not on the latch */
		if (!PostmasterIsAlive())
			proc_exit(1);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			apply_ack_mode();
			woken = true;
		}

		finished = collect_finished();
		courier_record_acked(outboxes);
		now = GetCurrentTimestamp();

		/*
		 * Commits wake us; under a stream of commits, let a millisecond's
		 * worth gather so that one round serves many of them.
		 */
		if (woken && finished == 0 && !more_waiting &&
			!TimestampDifferenceExceeds(last_round, now, MIN_ROUND_INTERVAL_MS))
		{
			(void) WaitLatch(MyLatch, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, MIN_ROUND_INTERVAL_MS, PG_WAIT_EXTENSION);
			now = GetCurrentTimestamp();
		}
		if (woken || finished > 0 || more_waiting || timer_due(now))
		{
			more = delivery_round();
			last_round = now;
		}
		more_waiting = more;
		maintenance(now);

		/* (counted by us: a request libcurl just finished is still ours to record) */
		if (in_flight() > 0)
			courier_http_poll(more ? 0 : 10);
		else if (!more)
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 next_wait_ms(GetCurrentTimestamp()), PG_WAIT_EXTENSION);
	}
}
