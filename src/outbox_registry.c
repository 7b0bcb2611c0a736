/*-------------------------------------------------------------------------
 *
 * outbox_registry.c
 *	  Shared memory of the outbox: the producer registry that keeps per-key
 *	  order when transactions commit out of id order, the worker table used
 *	  to wake a database's worker at commit, and per-outbox counters.
 *
 * Why a registry.  Outbox ids come from a sequence when the row is inserted,
 * but rows become visible when their transaction commits.  If transaction A
 * inserts key K with id 10 and transaction B inserts K with id 11 and
 * commits first, a reader sees 11 without 10.  Delivering 11 then would let
 * it overtake 10.  So every inserting transaction records, in its own slot
 * and *before* it draws its id, the hash of each key it writes and (once
 * known) its lowest id per outbox.  The worker reads the slots together
 * with its snapshot, atomically with respect to commits (see below), and
 * holds back rows of those keys at or above that id while the writing
 * transaction is still invisible to the snapshot.  Rows of other keys flow.
 *
 * Bounds.  A slot remembers COURIER_SLOT_OUTBOXES outboxes with up to
 * COURIER_SLOT_KEYS keys each (past those keys: all keys of that outbox).  A
 * transaction that writes further outboxes records their owners instead:
 * the worker then holds every keyed row of every outbox of those owners
 * (the table's owner, not the writing role: a SECURITY DEFINER function or
 * SET ROLE may write any table, but a write always records the owner of the
 * table it lands in, before its id is drawn, and ALTER TABLE OWNER waits for
 * the writing transaction).  So a role that keeps such a transaction open
 * holds back only outboxes owned by the roles whose tables it wrote; other
 * owners' keys flow.  Only past COURIER_SLOT_OWNERS distinct owners does
 * a transaction hold every outbox of the database.
 *
 * Atomicity.  A committing producer clears its slot after its commit is
 * visible in the proc array, under courier's LWLock in shared mode; the
 * worker takes its snapshot and reads the slots under the same lock in
 * exclusive mode.  So a transaction missing from the slots the worker read
 * is either visible in the worker's snapshot or draws its ids after it.
 *
 * Cost for producers: one spinlock round per row, one shared LWLock and one
 * SetLatch per committing transaction.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/htup_details.h"
#include "access/twophase.h"
#include "catalog/pg_class.h"
#include "commands/sequence.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "pg_courier.h"
#include "outbox_registry.h"
#include "outbox_shmem.h"
#include "outbox_breaker.h"

CourierShared *courier_shared = NULL;

/* backend-local: this transaction wrote to an outbox (wake the worker at commit) */
static bool xact_wrote_outbox = false;
static bool xact_gave_ids = false;	/* rows brought their own ids (replay, restore) */

/*
 * The outermost open (sub)transaction that still holds outbox writes, or
 * InvalidSubTransactionId when every write was rolled back to a savepoint.
 * Open subtransactions form a stack of increasing ids, so one id suffices:
 * a write in the top-most level leaves it as it is (or sets it), committing
 * that level hands it to the parent, aborting it forgets it.  PREPARE
 * TRANSACTION is refused only while it is valid.
 */
static SubTransactionId xact_write_subid = InvalidSubTransactionId;
static void note_write(void);

/* the outboxes this transaction wrote, so that the worker reads only those */
#define XACT_OUTBOXES 8
static Oid	xact_outboxes[XACT_OUTBOXES];
static int	n_xact_outboxes = 0;
static bool xact_outboxes_overflow = false;

/* backend-local cache: outbox -> its shared counters */
typedef struct CountersRef
{
	Oid			relid;
	CourierOutboxCounters *counters;
} CountersRef;
static HTAB *counters_refs = NULL;

static void note_outbox(Oid relid);
static bool xact_registered = false;
static int	cached_worker_index = -1;

static int
total_slots(void)
{
	/* every PGPROC: backends, background workers, auxiliary and prepared */
	return MaxBackends + NUM_AUXILIARY_PROCS + max_prepared_xacts;
}

/*
 * courier_registry_shmem_size
 *		Shared memory for the registry, the worker table and the counters.
 */
Size
courier_registry_shmem_size(void)
{
	Size		size = offsetof(CourierShared, slots);

	size = add_size(size, mul_size(total_slots(), sizeof(ProducerSlot)));
	size = add_size(size, mul_size(courier_max_databases, sizeof(CourierWorkerInfo)));
	size = add_size(size, courier_breaker_shmem_size());
	return size;
}

/*
 * courier_registry_shmem_init
 *		Create or attach the shared state (caller holds AddinShmemInitLock).
 */
void
courier_registry_shmem_init(void)
{
	bool		found;

	courier_breaker_shmem_init();
	courier_shared = ShmemInitStruct("pg_courier registry",
							 courier_registry_shmem_size() - courier_breaker_shmem_size(), &found);
	if (found)
		return;

	memset(courier_shared, 0, courier_registry_shmem_size() - courier_breaker_shmem_size());
	courier_shared->lock = &(GetNamedLWLockTranche("pg_courier"))->lock;
	courier_shared->nslots = total_slots();
	courier_shared->nworkers = courier_max_databases;
	courier_shared->workers = (CourierWorkerInfo *) &courier_shared->slots[courier_shared->nslots];
	SpinLockInit(&courier_shared->counters_mutex);
	for (int i = 0; i < courier_shared->nslots; i++)
		SpinLockInit(&courier_shared->slots[i].mutex);
	for (int i = 0; i < COURIER_MAX_OUTBOXES; i++)
	{
		SpinLockInit(&courier_shared->counters[i].mutex);
		pg_atomic_init_u64(&courier_shared->counters[i].commits, 0);
	}
	for (int i = 0; i < courier_shared->nworkers; i++)
	{
		pg_atomic_init_u64(&courier_shared->workers[i].rounds, 0);
		pg_atomic_init_u32(&courier_shared->workers[i].rescan, 0);
		pg_atomic_init_u32(&courier_shared->workers[i].wake_pending, 0);
	}
}

/*
 * courier_key_hash
 *		The hash both producers and the worker use for keys.
 */
uint32
courier_key_hash(const char *key, int len)
{
	return hash_bytes((const unsigned char *) key, len);
}

/*
 * slot_add_owner
 *		Remember that the transaction writes an outbox of owner that found no
 *		room of its own (slot mutex held): every outbox of owner is held.
 */
static void
slot_add_owner(ProducerSlot *slot, Oid owner)
{
	if (slot->all_outboxes)
		return;
	for (int i = 0; i < slot->nowners; i++)
		if (slot->owners[i] == owner)
			return;
	if (slot->nowners == COURIER_SLOT_OWNERS)
		slot->all_outboxes = true;
	else
		slot->owners[slot->nowners++] = owner;
}

/*
 * slot_outbox
 *		Find or add this transaction's entry for relid (slot mutex held).
 *		Returns NULL when there is no room: then owner's outboxes are held.
 */
static ProducerOutbox *
slot_outbox(ProducerSlot *slot, Oid relid, Oid owner)
{
	ProducerOutbox *e;

	for (int i = 0; i < slot->noutboxes; i++)
		if (slot->outboxes[i].relid == relid)
			return &slot->outboxes[i];
	if (slot->noutboxes == COURIER_SLOT_OUTBOXES)
	{
		slot_add_owner(slot, owner);
		return NULL;
	}
	e = &slot->outboxes[slot->noutboxes++];
	e->relid = relid;
	e->lowid = 0;
	e->all_keys = false;
	e->nkeys = 0;
	return e;
}

/*
 * slot_add_key
 *		Remember that the transaction writes keyhash (slot mutex held).
 */
static void
slot_add_key(ProducerOutbox *e, uint32 keyhash)
{
	if (e->all_keys)
		return;
	for (int i = 0; i < e->nkeys; i++)
		if (e->keys[i] == keyhash)
			return;
	if (e->nkeys == COURIER_SLOT_KEYS)
		e->all_keys = true;
	else
		e->keys[e->nkeys++] = keyhash;
}

/*
 * courier_registry_insert
 *		Called by the outbox trigger for every row: registers the key, then
 *		draws the row's id from seqid (unless the row brings its own id), and
 *		records the transaction's lowest id.  relowner is the table's owner
 *		(for the fallback past COURIER_SLOT_OUTBOXES).  Returns the id.
 */
int64
courier_registry_insert(Oid relid, Oid relowner, Oid seqid, const char *key, int keylen, int64 given_id)
{
	ProducerSlot *slot = NULL;
	ProducerOutbox *e = NULL;
	bool		first = false;
	int64		id;

	note_write();
	note_outbox(relid);

	/* Rows without a key carry no order: nothing to register. */
	if (courier_shared != NULL && key != NULL)
	{
		TransactionId xid = GetTopTransactionId();
		uint32		keyhash = courier_key_hash(key, keylen);

		slot = &courier_shared->slots[COURIER_MY_PROCNO];
		SpinLockAcquire(&slot->mutex);
		if (slot->xid != xid)
		{
			slot->dboid = MyDatabaseId;
			slot->xid = xid;
			slot->all_outboxes = false;
			slot->noutboxes = 0;
			slot->nowners = 0;
		}
		e = slot_outbox(slot, relid, relowner);
		if (e != NULL)
		{
			first = (e->lowid == 0);
			slot_add_key(e, keyhash);
		}
		SpinLockRelease(&slot->mutex);
	}

	if (given_id > 0)
		xact_gave_ids = true;
	/* like an identity column: INSERT on the table is the privilege that counts */
	id = (given_id > 0) ? given_id : nextval_internal(seqid, false);

	if (e != NULL && first)
	{
		SpinLockAcquire(&slot->mutex);
		if (e->lowid == 0 || id < e->lowid)
			e->lowid = id;
		SpinLockRelease(&slot->mutex);
	}
	return id;
}

/*
 * note_outbox
 *		Remember that this transaction wrote relid.
 */
static void
note_outbox(Oid relid)
{
	for (int i = 0; i < n_xact_outboxes; i++)
		if (xact_outboxes[i] == relid)
			return;
	if (n_xact_outboxes == XACT_OUTBOXES)
		xact_outboxes_overflow = true;
	else
		xact_outboxes[n_xact_outboxes++] = relid;
}

/*
 * count_commits
 *		Tell the worker which outboxes got a commit (it reads only those).
 *		Called after the commit is visible: the worker reads the counters
 *		before its snapshot, so a counter it saw change is covered by it.
 */
static void
count_commits(void)
{
	if (courier_shared == NULL)
		return;					/* not preloaded: no worker to tell */
	for (int i = 0; i < n_xact_outboxes; i++)
	{
		CountersRef *ref;
		bool		found;

		if (counters_refs == NULL)
		{
			HASHCTL		ctl;

			ctl.keysize = sizeof(Oid);
			ctl.entrysize = sizeof(CountersRef);
			counters_refs = hash_create("pg_courier counters refs", 16, &ctl, HASH_ELEM | HASH_BLOBS);
		}
		ref = hash_search(counters_refs, &xact_outboxes[i], HASH_ENTER, &found);
		if (!found || ref->counters == NULL || ref->counters->relid != xact_outboxes[i] ||
			ref->counters->dboid != MyDatabaseId)
			ref->counters = courier_counters_lookup(xact_outboxes[i]);
		if (ref->counters)
			pg_atomic_fetch_add_u64(&ref->counters->commits, 1);
	}
}

/*
 * wake_worker
 *		Set the latch of this database's delivery worker, if it runs.
 */
static void
wake_worker(void)
{
	CourierWorkerInfo *w;

	if (courier_shared == NULL)
		return;
	if (cached_worker_index < 0 || cached_worker_index >= courier_shared->nworkers ||
		courier_shared->workers[cached_worker_index].dboid != MyDatabaseId)
	{
		cached_worker_index = -1;
		for (int i = 0; i < courier_shared->nworkers; i++)
			if (courier_shared->workers[i].dboid == MyDatabaseId && courier_shared->workers[i].pid != 0)
				cached_worker_index = i;
		if (cached_worker_index < 0)
			return;
	}
	w = &courier_shared->workers[cached_worker_index];
	/* rows may have landed behind the worker's read cursor */
	if (xact_gave_ids || xact_outboxes_overflow)
		pg_atomic_exchange_u32(&w->rescan, 1);	/* (a barrier: before the wake flag) */

	/*
	 * One wake-up per worker loop is enough: the worker clears the flag
	 * before it takes its snapshot, so a commit that finds it set is seen by
	 * that snapshot.  This saves most producers a kill() under load.
	 */
	if (w->pid != 0 && pg_atomic_read_u32(&w->wake_pending) == 0 &&
		pg_atomic_exchange_u32(&w->wake_pending, 1) == 0)
		SetLatch(&ProcGlobal->allProcs[w->procno].procLatch);
}

/*
 * clear_slot
 *		Forget this backend's registrations.  At commit this happens under the
 *		registry lock so that it is atomic with respect to worker snapshots.
 */
static void
clear_slot(bool committed)
{
	ProducerSlot *slot;

	if (courier_shared == NULL)
		return;
	slot = &courier_shared->slots[COURIER_MY_PROCNO];
	if (slot->xid == InvalidTransactionId)
		return;
	if (committed)
		LWLockAcquire(courier_shared->lock, LW_SHARED);
	SpinLockAcquire(&slot->mutex);
	slot->xid = InvalidTransactionId;
	slot->noutboxes = 0;
	slot->nowners = 0;
	slot->all_outboxes = false;
	SpinLockRelease(&slot->mutex);
	if (committed)
		LWLockRelease(courier_shared->lock);
}

/*
 * registry_xact_callback
 *		Clear the slot at transaction end and wake the worker after commits.
 */
static void
registry_xact_callback(XactEvent event, void *arg)
{
	if (!xact_wrote_outbox)
		return;

	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			/* a prepared transaction would stay invisible with its slot cleared */
			if (xact_write_subid != InvalidSubTransactionId)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that has written to a pg_courier outbox"),
						 errhint("Commit it instead, or roll its outbox writes back to a savepoint first.")));
			break;
		case XACT_EVENT_PREPARE:
			/* every outbox write was rolled back: nothing to hold, nobody to wake */
			clear_slot(false);
			xact_wrote_outbox = xact_gave_ids = xact_outboxes_overflow = false;
			n_xact_outboxes = 0;
			xact_write_subid = InvalidSubTransactionId;
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			clear_slot(true);
			count_commits();
			wake_worker();
			xact_wrote_outbox = xact_gave_ids = xact_outboxes_overflow = false;
			n_xact_outboxes = 0;
			xact_write_subid = InvalidSubTransactionId;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			clear_slot(false);
			xact_wrote_outbox = xact_gave_ids = xact_outboxes_overflow = false;
			n_xact_outboxes = 0;
			xact_write_subid = InvalidSubTransactionId;
			break;
		default:
			break;
	}
}

/*
 * note_write
 *		This (sub)transaction writes to an outbox or changes what the worker
 *		must re-read (see xact_write_subid).
 */
static void
note_write(void)
{
	xact_wrote_outbox = true;
	if (xact_write_subid == InvalidSubTransactionId)
		xact_write_subid = GetCurrentSubTransactionId();
}

/*
 * registry_subxact_callback
 *		Keep xact_write_subid on the level that holds the writes: a committed
 *		savepoint hands them to its parent, a rolled-back one loses them.
 *		(The slot's keys and the wake-up stay: holding back or waking for
 *		nothing is harmless.)
 */
static void
registry_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						  SubTransactionId parentSubid, void *arg)
{
	if (xact_write_subid != mySubid)
		return;
	if (event == SUBXACT_EVENT_COMMIT_SUB)
		xact_write_subid = parentSubid;
	else if (event == SUBXACT_EVENT_ABORT_SUB)
		xact_write_subid = InvalidSubTransactionId;
}

/*
 * courier_wake_at_commit
 *		courier._wake_at_commit(): the caller changed what the worker must
 *		know (an outbox enabled, its settings, replayed rows); at commit the
 *		worker re-reads the catalog and its outboxes from the start.
 */
PG_FUNCTION_INFO_V1(courier_wake_at_commit);
Datum
courier_wake_at_commit(PG_FUNCTION_ARGS)
{
	note_write();
	xact_gave_ids = true;
	PG_RETURN_VOID();
}

/*
 * courier_registry_init
 *		Install the transaction callback (any backend that loads the module).
 */
void
courier_registry_init(void)
{
	if (!xact_registered)
	{
		RegisterXactCallback(registry_xact_callback, NULL);
		RegisterSubXactCallback(registry_subxact_callback, NULL);
		xact_registered = true;
	}
}

/*
 * add_owner_hold
 *		Append a hold of every keyed row of every outbox of owner (of every
 *		outbox at all when owner is InvalidOid); the caller made room.
 */
static void
add_owner_hold(CourierHoldSet *holds, Oid owner)
{
	CourierHold *h = &holds->holds[holds->nholds++];

	h->relid = InvalidOid;
	h->owner = owner;
	h->lowid = 0;
	h->all_keys = true;
	h->nkeys = 0;
}

/*
 * add_holds_from_slot
 *		Append the holds of one in-progress producer transaction.
 */
static void
add_holds_from_slot(const ProducerSlot *s, CourierHoldSet *holds, int *cap)
{
	int			need = s->all_outboxes ? 1 : s->noutboxes + s->nowners;

	if (holds->nholds + need > *cap)
	{
		*cap = Max(*cap * 2, holds->nholds + need);
		holds->holds = repalloc(holds->holds, *cap * sizeof(CourierHold));
	}
	if (s->all_outboxes)
	{
		add_owner_hold(holds, InvalidOid);
		return;
	}
	for (int i = 0; i < s->nowners; i++)
		add_owner_hold(holds, s->owners[i]);
	for (int i = 0; i < s->noutboxes; i++)
	{
		CourierHold *h = &holds->holds[holds->nholds++];

		h->relid = s->outboxes[i].relid;
		h->owner = InvalidOid;
		h->lowid = s->outboxes[i].lowid;
		h->all_keys = s->outboxes[i].all_keys;
		h->nkeys = s->outboxes[i].nkeys;
		memcpy(h->keys, s->outboxes[i].keys, sizeof(uint32) * h->nkeys);
	}
}

/*
 * courier_registry_snapshot
 *		Take the transaction snapshot and, atomically with it, the holds of
 *		every producer transaction of this database that the snapshot does
 *		not see.  Must be the first snapshot of a REPEATABLE READ transaction
 *		so that every query of the transaction uses it.
 */
Snapshot
courier_registry_snapshot(CourierHoldSet *holds)
{
	Snapshot	snap;
	int			cap = 16;

	holds->nholds = 0;
	holds->holds = palloc(cap * sizeof(CourierHold));

	LWLockAcquire(courier_shared->lock, LW_EXCLUSIVE);
	snap = GetTransactionSnapshot();
	for (int i = 0; i < courier_shared->nslots; i++)
	{
		ProducerSlot *s = &courier_shared->slots[i];
		ProducerSlot copy;

		if (s->xid == InvalidTransactionId)
			continue;
		SpinLockAcquire(&s->mutex);
		memcpy(&copy, s, sizeof(ProducerSlot));
		SpinLockRelease(&s->mutex);
		if (copy.xid == InvalidTransactionId || copy.dboid != MyDatabaseId)
			continue;
		if (XidInMVCCSnapshot(copy.xid, snap))
			add_holds_from_slot(&copy, holds, &cap);
	}
	LWLockRelease(courier_shared->lock);
	return snap;
}

/*
 * hold_covers
 *		Does hold h concern outbox relid, owned by owner?
 */
static inline bool
hold_covers(const CourierHold *h, Oid relid, Oid owner)
{
	if (h->relid != InvalidOid)
		return h->relid == relid;
	return h->owner == InvalidOid || h->owner == owner;
}

/*
 * courier_hold_owner
 *		The owner of outbox relid to match holds against: read from the
 *		catalog when some hold is by owner (a holder recorded the table's
 *		owner of its time; ALTER TABLE OWNER waits for it, but the worker's
 *		list may predate the change).  The caller has locked relid.
 */
Oid
courier_hold_owner(const CourierHoldSet *holds, Oid relid, Oid cached_owner)
{
	HeapTuple	tup;
	Oid			owner = cached_owner;

	for (int i = 0; i < holds->nholds; i++)
	{
		if (holds->holds[i].relid != InvalidOid || holds->holds[i].owner == InvalidOid)
			continue;
		tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
		if (HeapTupleIsValid(tup))
		{
			owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
			ReleaseSysCache(tup);
		}
		break;
	}
	return owner;
}

/*
 * courier_hold_horizon
 *		The lowest id an invisible producer transaction may own in relid,
 *		owned by owner (PG_INT64_MAX when there is none).  The worker's read cursor must
 *		stay below it: such a row becomes visible only when its transaction
 *		commits, and must then still be read before later rows of its key.
 */
int64
courier_hold_horizon(const CourierHoldSet *holds, Oid relid, Oid owner)
{
	int64		horizon = PG_INT64_MAX;

	for (int i = 0; i < holds->nholds; i++)
	{
		const CourierHold *h = &holds->holds[i];

		if (hold_covers(h, relid, owner))
			horizon = Min(horizon, h->lowid);
	}
	return horizon;
}

/*
 * courier_hold_applies
 *		Must the row (relid, id, keyhash) wait for an invisible transaction?
 */
bool
courier_hold_applies(const CourierHoldSet *holds, Oid relid, Oid owner,
					 int64 id, uint32 keyhash)
{
	for (int i = 0; i < holds->nholds; i++)
	{
		const CourierHold *h = &holds->holds[i];

		if (!hold_covers(h, relid, owner))
			continue;
		if (id < h->lowid)
			continue;
		if (h->all_keys)
			return true;
		for (int k = 0; k < h->nkeys; k++)
			if (h->keys[k] == keyhash)
				return true;
	}
	return false;
}

