/*-------------------------------------------------------------------------
 *
 * outbox_registry.h
 *	  Shared state of the outbox: which transactions are writing which keys,
 *	  the delivery workers, and per-outbox counters.
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_REGISTRY_H
#define OUTBOX_REGISTRY_H

#include "port/atomics.h"
#include "storage/spin.h"
#include "utils/snapshot.h"
#include "utils/timestamp.h"

/* Keys remembered per (transaction, outbox) before falling back to "all keys". */
#define COURIER_SLOT_KEYS		16
/*
 * Outboxes remembered per transaction; past them, the owners of the further
 * outboxes it writes ("every outbox of that owner"), and past those, "all
 * outboxes".
 */
#define COURIER_SLOT_OUTBOXES	4
#define COURIER_SLOT_OWNERS		4
#define COURIER_MAX_OUTBOXES	1024
#define COURIER_ERRLEN			256

/*
 * The longest key an event may have.  A failed row's key goes into the
 * outbox's index of failed rows (key, id), whose entries cannot exceed about
 * a third of a page: a longer key could be sent but its failure not recorded.
 * The insert and update triggers refuse longer keys; the worker dead-letters
 * any that an owner got past them.
 */
#define COURIER_MAX_KEY_BYTES	2000

/*
 * A hold: rows of outbox relid with id >= lowid whose key hashes to one of
 * keys[] (or any key, if all_keys) must not be delivered yet, because a
 * transaction still in progress may own an earlier row of the same key.
 * relid InvalidOid: every outbox owned by owner (every outbox at all when
 * owner is InvalidOid too).
 */
typedef struct CourierHold
{
	Oid			relid;
	Oid			owner;
	int64		lowid;
	bool		all_keys;
	int			nkeys;
	uint32		keys[COURIER_SLOT_KEYS];
} CourierHold;

typedef struct CourierHoldSet
{
	int			nholds;
	CourierHold *holds;
} CourierHoldSet;

/* Per-outbox counters kept by the worker; read by courier.outbox_stats. */
typedef struct CourierOutboxCounters
{
	Oid			dboid;
	Oid			relid;
	pg_atomic_uint64 commits;	/* transactions that wrote the outbox (wake-up hint) */
	slock_t		mutex;
	uint64		delivered;
	uint64		failed_attempts;
	uint64		retries;
	uint64		dead_lettered;
	uint64		requests;
	TimestampTz rate_window_start;	/* delivered_per_second over >= 1 s windows */
	uint64		rate_window_count;
	double		delivered_per_second;
	TimestampTz last_success_at;
	TimestampTz last_failure_at;
	char		last_error[COURIER_ERRLEN];
	/* health, published by the worker (outbox_health.c); zero is ok */
	int			status;			/* CourierOutboxStatus */
	TimestampTz status_since;
	char		status_reason[COURIER_ERRLEN];
} CourierOutboxCounters;

/* What courier.outbox_stats.status says. */
typedef enum CourierOutboxStatus
{
	COURIER_STATUS_OK = 0,
	COURIER_STATUS_BROKEN,		/* delivery fails: events wait */
	COURIER_STATUS_DEGRADED		/* delivery works, maintenance (retention purge) fails */
} CourierOutboxStatus;

/* One entry per database worker. */
typedef struct CourierWorkerInfo
{
	Oid			dboid;
	char		dbname[NAMEDATALEN];
	pid_t		pid;
	int			procno;
	TimestampTz started_at;
	pg_atomic_uint64 rounds;
	pg_atomic_uint32 rescan;	/* rows with explicit ids arrived: read from the start */
	pg_atomic_uint32 wake_pending;	/* a producer set the latch since the last loop */
	char		state[32];
} CourierWorkerInfo;

/* producer side */
extern int64 courier_registry_insert(Oid relid, Oid relowner, Oid seqid, const char *key, int keylen, int64 given_id);

/* worker side */
extern Snapshot courier_registry_snapshot(CourierHoldSet *holds);
extern Oid	courier_hold_owner(const CourierHoldSet *holds, Oid relid, Oid cached_owner);
extern int64 courier_hold_horizon(const CourierHoldSet *holds, Oid relid, Oid owner);
extern bool courier_hold_applies(const CourierHoldSet *holds, Oid relid, Oid owner,
								 int64 id, uint32 keyhash);
extern uint32 courier_key_hash(const char *key, int len);
extern CourierWorkerInfo *courier_worker_attach(const char *dbname);
extern void courier_worker_detach(void);
extern void courier_worker_set_state(const char *state);
extern bool courier_worker_take_rescan(void);
extern bool courier_worker_take_wake(void);
extern int	courier_max_outboxes_per_database;
extern CourierOutboxCounters *courier_counters_for(Oid relid);
extern CourierOutboxCounters *courier_counters_lookup(Oid relid);
extern void courier_counters_release(CourierOutboxCounters *c, Oid relid);
extern void courier_counters_record(CourierOutboxCounters *c, uint64 delivered, uint64 retries,
									uint64 dead, const char *error);
extern void courier_counters_set_status(CourierOutboxCounters *c, CourierOutboxStatus status,
										const char *reason, TimestampTz since);

#endif							/* OUTBOX_REGISTRY_H */
