/*-------------------------------------------------------------------------
 *
 * pg_courier.h
 *	  Declarations shared by the pg_courier modules.
 *
 * Each capability lives in its own file (outbox_*.c, http.c, idempotency.c,
 * saga.c, shard.c, cache.c).  pg_courier.c owns _PG_init: it defines the
 * outbox GUCs and calls each module's init function, and dispatches the
 * shared-memory request/startup hooks to the modules that need them.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG_COURIER_H
#define PG_COURIER_H

#include "postgres.h"

#include "compat.h"

#include "storage/lwlock.h"

#define COURIER_EXTENSION	"pg_courier"
#define COURIER_SCHEMA		"courier"


/* ---- GUCs (pg_courier.c) ---- */
extern char *courier_databases;
extern int	courier_poll_interval_ms;
extern int	courier_max_inflight;
extern int	courier_http_timeout_ms;
extern int	courier_batch_size;
extern int	courier_max_payload_bytes;
extern int	courier_max_request_bytes;
extern int	courier_max_databases;
extern char *courier_ca_file;
extern int	courier_retry_base_ms;
extern int	courier_retry_max_ms;
extern int	courier_max_attempts;
extern bool courier_synchronous_ack;

/* True when loaded through shared_preload_libraries (shared memory exists). */
extern bool courier_preloaded;

/* ---- module init functions, called from _PG_init ---- */
extern void courier_registry_init(void);	/* outbox_registry.c */
extern void courier_launcher_register(void);	/* outbox_launcher.c */
extern void courier_dropdb_init(void);	/* outbox_dropdb.c */
extern bool courier_database_leaving(Oid dboid);
extern void courier_idempotency_init(void);	/* idempotency.c */
extern void courier_saga_init(void);	/* saga.c */
extern void courier_shard_init(void);	/* shard.c */
extern void courier_cache_init(void);	/* cache.c */

/* ---- shared memory, per module ---- */
extern Size courier_registry_shmem_size(void);
extern void courier_registry_shmem_init(void);
extern Size courier_cache_shmem_size(void);
extern void courier_cache_shmem_init(void);
extern void courier_cache_shmem_request(void);

/* ---- periodic maintenance run by each database's worker (in a transaction) ---- */
extern void courier_idempotency_maintenance(void);
extern void courier_saga_maintenance(void);

/* A URL fit for logs and views (outbox_producer.c). */
extern char *courier_redact_text(const char *url);

/* Run fn(arg) in a subtransaction; false (after a WARNING) if it failed. */
extern bool courier_run_contained(void (*fn) (void *), void *arg, const char *what);
/* The same without the WARNING: the error is returned in *error. */
extern bool courier_run_contained_quiet(void (*fn) (void *), void *arg, ErrorData **error);

/* Errors out with a hint when shared memory is not there (not preloaded). */
extern void courier_require_preload(const char *what);

#endif							/* PG_COURIER_H */
