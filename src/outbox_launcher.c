/*-------------------------------------------------------------------------
 *
 * outbox_launcher.c
 *	  The launcher: one static background worker that starts, watches and
 *	  restarts one delivery worker per database in courier.databases.
 *
 * Why a launcher rather than static per-database workers: the database list
 * can change with a reload (pg_cron's single-database setting is a known
 * regret of its users), and a worker that dies (pg_terminate_backend, an
 * error) is restarted with a backoff instead of a tight crash loop.
 *
 * The launcher is connected to no database (like PostgreSQL's logical
 * replication launcher), so that it can read pg_database: it starts no
 * worker for a database that does not exist (dropped, or not created yet;
 * said once in the log) or that is being dropped (outbox_dropdb.c), and
 * checks again every few seconds.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "pg_courier.h"
#include "outbox_shmem.h"

PGDLLEXPORT void courier_launcher_main(Datum arg);

typedef struct ManagedWorker
{
	char		dbname[NAMEDATALEN];
	BackgroundWorkerHandle *handle;
	TimestampTz started_at;
	TimestampTz next_start_at;
	int			quick_failures; /* consecutive exits soon after start */
	bool		wanted;
	bool		missing_logged; /* said that the database does not exist */
} ManagedWorker;

static ManagedWorker *managed = NULL;
static int	nmanaged = 0;

/*
 * courier_launcher_register
 *		Register the launcher (from _PG_init, at preload).
 */
void
courier_launcher_register(void)
{
	BackgroundWorker w;

	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = 5;
	strlcpy(w.bgw_library_name, COURIER_EXTENSION, BGW_MAXLEN);
	strlcpy(w.bgw_function_name, "courier_launcher_main", BGW_MAXLEN);
	strlcpy(w.bgw_name, "pg_courier launcher", BGW_MAXLEN);
	strlcpy(w.bgw_type, "pg_courier launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&w);
}

/*
 * start_worker
 *		Register a dynamic delivery worker for one database.
 */
static void
start_worker(ManagedWorker *m)
{
	BackgroundWorker w;

	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = BGW_NEVER_RESTART;	/* we restart it, with backoff */
	strlcpy(w.bgw_library_name, COURIER_EXTENSION, BGW_MAXLEN);
	strlcpy(w.bgw_function_name, "courier_worker_main", BGW_MAXLEN);
	snprintf(w.bgw_name, BGW_MAXLEN, "pg_courier worker %s", m->dbname);
	strlcpy(w.bgw_type, "pg_courier worker", BGW_MAXLEN);
	strlcpy(w.bgw_extra, m->dbname, BGW_EXTRALEN);
	w.bgw_notify_pid = MyProcPid;

	m->started_at = GetCurrentTimestamp();
	if (!RegisterDynamicBackgroundWorker(&w, &m->handle))
	{
		m->handle = NULL;
		m->next_start_at = TimestampTzPlusMilliseconds(m->started_at, 10 * 1000);
		ereport(WARNING,
				(errmsg("pg_courier: could not start the delivery worker for database \"%s\"", m->dbname),
				 errhint("Raise max_worker_processes; it must cover one worker per database in courier.databases.")));
	}
}

/*
 * reconcile_databases
 *		Bring the managed list in line with courier.databases: stop workers of
 *		databases no longer listed, add new ones.
 */
static void
reconcile_databases(void)
{
	char	   *raw = pstrdup(courier_databases ? courier_databases : "");
	List	   *names = NIL;
	ListCell   *lc;

	if (!SplitIdentifierString(raw, ',', &names))
	{
		ereport(WARNING,
				(errmsg("pg_courier: invalid courier.databases \"%s\": keeping the current workers",
						courier_databases)));
		return;
	}
	for (int i = 0; i < nmanaged; i++)
		managed[i].wanted = false;
	foreach(lc, names)
	{
		const char *name = lfirst(lc);
		int			i;

		for (i = 0; i < nmanaged; i++)
			if (strcmp(managed[i].dbname, name) == 0)
				break;
		if (i == nmanaged)
		{
			if (nmanaged == courier_max_databases)
			{
				ereport(WARNING,
						(errmsg("pg_courier: more databases than courier.max_databases (%d); \"%s\" is not served",
								courier_max_databases, name)));
				continue;
			}
			memset(&managed[i], 0, sizeof(ManagedWorker));
			strlcpy(managed[i].dbname, name, NAMEDATALEN);
			nmanaged++;
		}
		managed[i].wanted = true;
	}
	for (int i = 0; i < nmanaged; i++)
	{
		if (managed[i].wanted)
			continue;
		if (managed[i].handle)
			TerminateBackgroundWorker(managed[i].handle);
		managed[i] = managed[--nmanaged];
		i--;
	}
}

/*
 * database_oid
 *		The OID of the database named dbname, InvalidOid if there is none.
 *		A heap scan of pg_database, like autovacuum's launcher: connected to
 *		no database we may read shared catalogs, but not build the relcache
 *		entry of an index (that reads pg_class).
 */
static Oid
database_oid(const char *dbname)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	Oid			dboid = InvalidOid;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (strcmp(NameStr(db->datname), dbname) == 0 && !database_is_invalid_form(db))
		{
			dboid = db->oid;
			break;
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return dboid;
}

/*
 * database_startable
 *		Whether m's database exists and is not being dropped.  A missing
 *		database is said once in the log (again after it came back).
 */
static bool
database_startable(ManagedWorker *m)
{
	Oid			dboid;
	bool		leaving;

	dboid = database_oid(m->dbname);
	if (!OidIsValid(dboid))
	{
		if (!m->missing_logged)
			ereport(LOG,
					(errmsg("pg_courier: database \"%s\" in courier.databases does not exist; "
							"its worker starts once it is created", m->dbname)));
		m->missing_logged = true;
		return false;
	}
	m->missing_logged = false;
	LWLockAcquire(courier_shared->lock, LW_SHARED);
	leaving = courier_database_leaving(dboid);
	LWLockRelease(courier_shared->lock);
	return !leaving;
}

/*
 * supervise
 *		Start workers that are not running, with exponential backoff for
 *		workers that keep exiting soon after they started.  Returns the
 *		milliseconds until the next scheduled start.
 */
static long
supervise(void)
{
	TimestampTz now = GetCurrentTimestamp();
	long		sleep_ms = 10 * 1000;

	for (int i = 0; i < nmanaged; i++)
	{
		ManagedWorker *m = &managed[i];
		pid_t		pid;

		if (m->handle && GetBackgroundWorkerPid(m->handle, &pid) != BGWH_STOPPED)
			continue;
		if (m->handle)
		{
			/* it stopped: schedule the restart */
			bool		quick = !TimestampDifferenceExceeds(m->started_at, now, 10 * 1000);

			m->quick_failures = quick ? Min(m->quick_failures + 1, 6) : 0;
			m->next_start_at = TimestampTzPlusMilliseconds(now, 1000L << m->quick_failures);
			pfree(m->handle);
			m->handle = NULL;
		}
		if (now >= m->next_start_at && !database_startable(m))
		{
			/* look again soon; a database that comes back gets its worker without backoff */
			m->quick_failures = 0;
			m->next_start_at = TimestampTzPlusMilliseconds(now, 1000);
		}
		if (now >= m->next_start_at)
			start_worker(m);
		else
			sleep_ms = Min(sleep_ms, TimestampDifferenceMilliseconds(now, m->next_start_at) + 1);
	}
	return sleep_ms;
}

/*
 * courier_launcher_main
 *		Entry point of the launcher background worker.
 */
void
courier_launcher_main(Datum arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);	/* shared catalogs only */

	managed = MemoryContextAllocZero(TopMemoryContext, sizeof(ManagedWorker) * courier_max_databases);
	reconcile_databases();

	for (;;)
	{
		long		sleep_ms;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			reconcile_databases();
		}
		sleep_ms = supervise();
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 sleep_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
