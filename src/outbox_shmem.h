/*-------------------------------------------------------------------------
 *
 * outbox_shmem.h
 *	  Layout of the registry's shared memory (private to outbox_registry.c
 *	  and outbox_workers.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_SHMEM_H
#define OUTBOX_SHMEM_H

#include "storage/lwlock.h"
#include "storage/spin.h"

#include "outbox_registry.h"

typedef struct ProducerOutbox
{
	Oid			relid;
	int64		lowid;			/* 0 until the first id is drawn: holds every id */
	bool		all_keys;
	int			nkeys;
	uint32		keys[COURIER_SLOT_KEYS];
} ProducerOutbox;

typedef struct ProducerSlot
{
	slock_t		mutex;
	Oid			dboid;
	TransactionId xid;			/* InvalidTransactionId: slot unused */
	bool		all_outboxes;	/* wrote more outboxes' owners than fit below */
	int			noutboxes;
	ProducerOutbox outboxes[COURIER_SLOT_OUTBOXES];
	int			nowners;		/* owners of the outboxes past outboxes[] */
	Oid			owners[COURIER_SLOT_OWNERS];
} ProducerSlot;

typedef struct CourierShared
{
	LWLock	   *lock;			/* registry vs. worker snapshots; worker table */
	int			nslots;
	int			nworkers;
	CourierWorkerInfo *workers;
	Oid			leaving_dboid;	/* being dropped: no worker (outbox_dropdb.c) */
	TimestampTz leaving_until;
	slock_t		counters_mutex;
	CourierOutboxCounters counters[COURIER_MAX_OUTBOXES];
	ProducerSlot slots[FLEXIBLE_ARRAY_MEMBER];
} CourierShared;

extern CourierShared *courier_shared;

#endif							/* OUTBOX_SHMEM_H */
