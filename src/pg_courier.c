/*-------------------------------------------------------------------------
 *
 * pg_courier.c
 *	  Module entry point: outbox GUCs, module initialisation and the
 *	  shared-memory hooks.
 *
 * pg_courier works in two modes.  Loaded through shared_preload_libraries
 * it owns shared memory (producer registry, worker table, cache) and starts
 * the launcher that runs one delivery worker per database listed in
 * courier.databases.  Loaded on demand (a plain CREATE EXTENSION without
 * preload) the SQL functions still work, but nothing is delivered and the
 * functions that need shared memory say so with a hint.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "pg_courier.h"
#include "key_space.h"
#include "endpoint_policy.h"
#include "outbox_breaker.h"
#include "outbox_registry.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

char	   *courier_databases = NULL;
int			courier_poll_interval_ms = 1000;
int			courier_max_inflight = 32;
int			courier_http_timeout_ms = 10000;
int			courier_batch_size = 1000;
int			courier_max_payload_bytes = 1024 * 1024;
int			courier_max_request_bytes = 8 * 1024 * 1024;
int			courier_max_databases = 16;
int			courier_retry_base_ms = 1000;
int			courier_retry_max_ms = 300000;
int			courier_max_attempts = 10;
bool		courier_synchronous_ack = true;
char	   *courier_ca_file = NULL;

bool		courier_preloaded = false;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/*
 * courier_shmem_request
 *		Ask the postmaster for the shared memory and locks of every module.
 */
static void
courier_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();

	RequestAddinShmemSpace(courier_registry_shmem_size());
	RequestNamedLWLockTranche("pg_courier", 1);
	courier_cache_shmem_request();
}

/*
 * courier_shmem_startup
 *		Attach to (or, in the postmaster, create) each module's shared state.
 */
static void
courier_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	courier_registry_shmem_init();
	courier_cache_shmem_init();
	LWLockRelease(AddinShmemInitLock);
}

/*
 * define_outbox_gucs
 *		The outbox worker's settings.  All of them can be changed with a reload
 *		(the worker re-reads them on SIGHUP) except the size of shared state.
 */
static void
define_outbox_gucs(void)
{
	/* restart-only settings can only be defined while preloading */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable("courier.max_databases",
								"Maximum number of databases served by delivery workers.",
								"Each one uses a background worker slot (max_worker_processes).",
								&courier_max_databases,
								16, 1, 1024,
								PGC_POSTMASTER, 0,
								NULL, NULL, NULL);
	DefineCustomStringVariable("courier.databases",
							   "Comma-separated list of databases whose outboxes are delivered.",
							   "One delivery worker runs per database; changes apply on reload.",
							   &courier_databases,
							   "postgres",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("courier.poll_interval",
							"Fallback interval at which the worker looks for events without a wake-up.",
							"Commits into an outbox wake the worker at once; this is the safety net.",
							&courier_poll_interval_ms,
							1000, 10, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.max_inflight",
							"Maximum number of concurrent HTTP requests per outbox.",
							"Rows in flight per outbox are at most max_inflight * batch_size.",
							&courier_max_inflight,
							32, 1, 1024,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.http_timeout_ms",
							"Timeout of one HTTP request, connection included.",
							NULL,
							&courier_http_timeout_ms,
							10000, 100, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.batch_size",
							"Maximum number of events per batched request and per read of an outbox.",
							NULL,
							&courier_batch_size,
							1000, 1, 100000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.max_payload_bytes",
							"Largest accepted event payload (bytes of its JSON text).",
							"courier.send refuses larger payloads; so does the outbox trigger for plain INSERTs.",
							&courier_max_payload_bytes,
							1024 * 1024, 64, MaxAllocSize / 4,
							PGC_SUSET, GUC_UNIT_BYTE,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.max_request_bytes",
							"Largest body of a batched request (bytes); an outbox option may lower it.",
							"A batch is sent once the next event would make it larger; an event alone may exceed it.",
							&courier_max_request_bytes,
							8 * 1024 * 1024, 1024, MaxAllocSize / 2,
							PGC_SIGHUP, GUC_UNIT_BYTE,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.retry_base_ms",
							"Base of the exponential backoff between delivery attempts.",
							"Attempt n waits a random time up to min(retry_max_ms, retry_base_ms * 2^n).",
							&courier_retry_base_ms,
							1000, 1, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.retry_max_ms",
							"Upper bound of the backoff between delivery attempts.",
							NULL,
							&courier_retry_max_ms,
							300000, 1, 24 * 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.max_attempts",
							"Delivery attempts before an event goes to courier.dead_letters.",
							"0 retries forever.",
							&courier_max_attempts,
							10, 0, INT_MAX,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomBoolVariable("courier.synchronous_ack",
							 "Commit the worker's record of acknowledged deliveries synchronously.",
							 "Off is faster, but after a crash the events acknowledged in the last "
							 "moments before it (up to wal_writer_delay) are sent again.",
							 &courier_synchronous_ack,
							 true,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
	courier_breaker_define_gucs();
	DefineCustomIntVariable("courier.max_outboxes_per_database",
							"Maximum number of outboxes one database may register.",
							"create_outbox refuses more.  It is also the database's share of the cluster's "
							"1024 shared counter slots: outboxes beyond it are delivered without counters.",
							&courier_max_outboxes_per_database,
							256, 1, COURIER_MAX_OUTBOXES,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	/* the endpoint (SSRF) policy: endpoint_policy.c says how the two combine */
	DefineCustomBoolVariable("courier.allow_private_endpoints",
							 "Allow endpoints on loopback, private, link-local and other non-public addresses.",
							 "Off: only public addresses (and CIDRs listed in courier.allowed_hosts) are "
							 "connected to.  Cloud metadata addresses need an explicit courier.allowed_hosts entry.",
							 &courier_allow_private_endpoints,
							 false,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
	DefineCustomStringVariable("courier.allowed_hosts",
							   "Host names (exact or *.suffix) and CIDRs that endpoints may connect to.",
							   "Empty: any public host.  A CIDR entry also allows the non-public addresses it covers.",
							   &courier_allowed_hosts,
							   "",
							   PGC_SIGHUP, GUC_LIST_INPUT | GUC_SUPERUSER_ONLY,
							   courier_check_allowed_hosts, courier_assign_allowed_hosts, NULL);
	DefineCustomStringVariable("courier.ca_file",
							   "File of CA certificates that endpoints' TLS certificates are verified against.",
							   "Empty: libcurl's default bundle.  Verification is always on unless an outbox turns it off.",
							   &courier_ca_file,
							   "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
}

/*
 * courier_require_preload
 *		Raise a clear error where a function needs shared memory that only
 *		exists when pg_courier is in shared_preload_libraries.
 */
void
courier_require_preload(const char *what)
{
	if (!courier_preloaded)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s requires pg_courier to be loaded via shared_preload_libraries", what),
				 errhint("Add pg_courier to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/*
 * courier_run_contained_quiet
 *		Run fn(arg) in a subtransaction of the current transaction.  If it
 *		fails, roll the subtransaction back and return false with the error
 *		in *error (allocated in the caller's memory context), without
 *		logging it: the caller decides whether and how often it is worth a
 *		line in the log (see outbox_health.c).
 */
bool
courier_run_contained_quiet(void (*fn) (void *), void *arg, ErrorData **error)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool ok = true;

	*error = NULL;
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		*error = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return ok;
}

/*
 * courier_run_contained
 *		Run fn(arg) in a subtransaction of the current transaction.  If it
 *		fails, roll the subtransaction back, log a WARNING naming what failed,
 *		and return false: one outbox's (or one housekeeping task's) problem
 *		must not undo the others' work in the same transaction.
 */
bool
courier_run_contained(void (*fn) (void *), void *arg, const char *what)
{
	ErrorData  *edata;

	if (courier_run_contained_quiet(fn, arg, &edata))
		return true;
	ereport(WARNING, (errmsg("pg_courier: %s: %s", what, edata->message)));
	FreeErrorData(edata);
	return false;
}

/*
 * _PG_init
 *		Module load: GUCs always; shared memory and workers only at preload.
 */
void
_PG_init(void)
{
	courier_preloaded = process_shared_preload_libraries_in_progress;

	define_outbox_gucs();
	courier_registry_init();
	courier_key_space_init();
	courier_idempotency_init();
	courier_saga_init();
	courier_shard_init();
	courier_cache_init();
	MarkGUCPrefixReserved("courier");

	if (!courier_preloaded)
		return;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = courier_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = courier_shmem_startup;

	courier_launcher_register();
	courier_dropdb_init();
}
