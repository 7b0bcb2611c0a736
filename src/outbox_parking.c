/*-------------------------------------------------------------------------
 *
 * outbox_parking.c
 *	  Rows that must wait behind their key, remembered by id.
 *
 * A row cannot be sent while an earlier row of its key is in flight
 * (busy) or waiting for its retry (blocked).  The read cursor moves on;
 * the waiting row is parked here, in its key's queue, in id order.  When
 * the key frees up, its first parked ids are fetched again by primary key.
 * So a failure or a hot key costs a lookup per waiting row instead of a
 * re-read of the backlog.
 *
 * Memory is bounded: past COURIER_MAX_PARKED ids per outbox, courier_park()
 * refuses and the caller falls back to pinning the read cursor below the
 * row (it is then read again later).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "pg_courier.h"
#include "outbox_worker.h"

#define COURIER_MAX_PARKED	200000

typedef struct ParkedKey
{
	uint32		keyhash;		/* hash key */
	int			head;			/* ids[head..n) are parked, in id order */
	int			n;
	int			cap;
	int64	   *ids;
	bool		ready;			/* in ob->ready: its first id is to be fetched */
} ParkedKey;

typedef struct BlockedKey
{
	uint32		keyhash;		/* hash key */
	int64		head_id;		/* the failed row the key waits for; 0: unknown */
} BlockedKey;

/*
 * courier_parking_init
 *		Create an outbox's parking structures (in its memory context).
 */
void
courier_parking_init(OutboxState *ob)
{
	HASHCTL		ctl;

	ctl.keysize = sizeof(uint32);
	ctl.hcxt = ob->cxt;
	ctl.entrysize = sizeof(ParkedKey);
	ob->parked = hash_create("pg_courier parked keys", 256, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	ctl.entrysize = sizeof(BlockedKey);
	ob->blocked = hash_create("pg_courier blocked keys", 256, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	ob->ready_cap = 256;
	ob->ready = MemoryContextAlloc(ob->cxt, sizeof(uint32) * ob->ready_cap);
	ob->nready = 0;
	ob->nparked = 0;
}

/*
 * parked_has
 *		Is id in the key's queue?  (Binary search: the queue is in id order.)
 */
static bool
parked_has(const ParkedKey *p, int64 id)
{
	int			lo = p->head;
	int			hi = p->n - 1;

	while (lo <= hi)
	{
		int			mid = lo + (hi - lo) / 2;

		if (p->ids[mid] == id)
			return true;
		if (p->ids[mid] < id)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return false;
}

/*
 * insert_sorted
 *		Put id into the key's queue (room for one more at the end is made).
 *		Ids mostly arrive in increasing order; rows that go back to the
 *		front of their queue (a run that did not fit its request, rows
 *		behind a failure) arrive in increasing order too, each just after
 *		the one before: so the shorter side of the queue is moved, into the
 *		room popped ids left at the front when there is some.
 */
static void
insert_sorted(ParkedKey *p, int64 id)
{
	int			lo = p->head;
	int			hi = p->n;

	if (p->n == p->head || id > p->ids[p->n - 1])
	{
		p->ids[p->n++] = id;
		return;
	}
	while (lo < hi)				/* the first position holding a larger id */
	{
		int			mid = lo + (hi - lo) / 2;

		if (p->ids[mid] < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (p->head > 0 && lo - p->head <= p->n - lo)
	{
		memmove(p->ids + p->head - 1, p->ids + p->head, sizeof(int64) * (lo - p->head));
		p->head--;
		p->ids[lo - 1] = id;
	}
	else
	{
		memmove(p->ids + lo + 1, p->ids + lo, sizeof(int64) * (p->n - lo));
		p->ids[lo] = id;
		p->n++;
	}
}

/*
 * courier_park
 *		Queue id behind its key.  Returns false when the outbox's parking is
 *		full (the caller must then make sure the row is read again).
 */
bool
courier_park(OutboxState *ob, uint32 keyhash, int64 id)
{
	ParkedKey  *p;
	bool		found;

	if (ob->nparked >= COURIER_MAX_PARKED)
		return false;
	p = hash_search(ob->parked, &keyhash, HASH_ENTER, &found);
	if (!found)
	{
		p->head = p->n = 0;
		p->cap = 8;
		p->ids = MemoryContextAlloc(ob->cxt, sizeof(int64) * p->cap);
		p->ready = false;
	}
	else if (parked_has(p, id))
		return true;			/* read again (the cursor went back): queued already */
	if (p->head > 0 && p->head >= p->n / 2)
	{
		/* compact: the popped front is dead space */
		memmove(p->ids, p->ids + p->head, sizeof(int64) * (p->n - p->head));
		p->n -= p->head;
		p->head = 0;
	}
	if (p->n == p->cap)
	{
		p->cap *= 2;
		p->ids = repalloc(p->ids, sizeof(int64) * p->cap);
	}
	insert_sorted(p, id);
	ob->nparked++;
	return true;
}

/*
 * courier_parked_before
 *		Is an earlier row of the key parked?  (Then id must queue behind it.)
 */
bool
courier_parked_before(OutboxState *ob, uint32 keyhash, int64 id)
{
	ParkedKey  *p = hash_search(ob->parked, &keyhash, HASH_FIND, NULL);

	return p != NULL && p->n > p->head && p->ids[p->head] < id;
}

/*
 * courier_key_ready
 *		The key is free: if it has parked rows, fetch its first one soon.
 */
void
courier_key_ready(OutboxState *ob, uint32 keyhash)
{
	ParkedKey  *p = hash_search(ob->parked, &keyhash, HASH_FIND, NULL);

	if (p == NULL || p->n == p->head || p->ready)
		return;
	if (ob->nready == ob->ready_cap)
	{
		ob->ready_cap *= 2;
		ob->ready = repalloc(ob->ready, sizeof(uint32) * ob->ready_cap);
	}
	ob->ready[ob->nready++] = keyhash;
	p->ready = true;
}

/*
 * courier_take_ready
 *		Pop the first parked ids (up to per_key of each) of ready keys, in
 *		key order and id order within a key, into ids[] and keys[]: at most
 *		max in all.  Several ids of one key may go into one request, in
 *		order, so a hot key drains in batches rather than one row per round
 *		trip.  Returns how many.
 */
int
courier_take_ready(OutboxState *ob, int64 *ids, uint32 *keys, int max, int per_key)
{
	int			n = 0;
	int			i;

	for (i = 0; i < ob->nready && n < max; i++)
	{
		ParkedKey  *p = hash_search(ob->parked, &ob->ready[i], HASH_FIND, NULL);
		int			take;

		if (p == NULL)
			continue;
		p->ready = false;
		take = Min(Min(p->n - p->head, per_key), max - n);
		for (int j = 0; j < take; j++)
		{
			keys[n] = p->keyhash;
			ids[n++] = p->ids[p->head++];
		}
		ob->nparked -= take;
		if (p->n == p->head)
		{
			pfree(p->ids);
			hash_search(ob->parked, &p->keyhash, HASH_REMOVE, NULL);
		}
	}
	memmove(ob->ready, ob->ready + i, sizeof(uint32) * (ob->nready - i));
	ob->nready -= i;
	return n;
}

/*
 * courier_parking_clear
 *		Forget every parked row and blocked key: a read from the start meets
 *		the rows again, and the database says again which keys wait behind a
 *		failed row.
 */
void
courier_parking_clear(OutboxState *ob)
{
	HASH_SEQ_STATUS status;
	ParkedKey  *p;
	BlockedKey *b;

	hash_seq_init(&status, ob->parked);
	while ((p = hash_seq_search(&status)) != NULL)
	{
		pfree(p->ids);
		hash_search(ob->parked, &p->keyhash, HASH_REMOVE, NULL);
	}
	hash_seq_init(&status, ob->blocked);
	while ((b = hash_seq_search(&status)) != NULL)
		hash_search(ob->blocked, &b->keyhash, HASH_REMOVE, NULL);
	ob->nparked = 0;
	ob->nready = 0;
}

/*
 * courier_key_busy / courier_key_unbusy
 *		A row of the key went into a request / its request finished (or was
 *		undone).  Returns whether the key is still in flight.
 */
void
courier_key_busy(OutboxState *ob, uint32 keyhash)
{
	bool		found;
	BusyKey    *b = hash_search(ob->busy_keys, &keyhash, HASH_ENTER, &found);

	b->rows = found ? b->rows + 1 : 1;
}

bool
courier_key_unbusy(OutboxState *ob, uint32 keyhash)
{
	BusyKey    *b = hash_search(ob->busy_keys, &keyhash, HASH_FIND, NULL);

	if (b == NULL)
		return false;
	if (--b->rows > 0)
		return true;
	hash_search(ob->busy_keys, &keyhash, HASH_REMOVE, NULL);
	return false;
}

/*
 * courier_block_key
 *		The key waits for a failed row (head_id; 0 when it is not known yet,
 *		e.g. after a restart, when the database said an earlier row failed).
 */
void
courier_block_key(OutboxState *ob, uint32 keyhash, int64 head_id)
{
	bool		found;
	BlockedKey *b = hash_search(ob->blocked, &keyhash, HASH_ENTER, &found);

	if (!found || head_id != 0)
		b->head_id = head_id;
}

/*
 * courier_blocked_for
 *		Must row id wait because an earlier row of its key failed?
 */
bool
courier_blocked_for(OutboxState *ob, uint32 keyhash, int64 id)
{
	BlockedKey *b = hash_search(ob->blocked, &keyhash, HASH_FIND, NULL);

	return b != NULL && b->head_id != id;
}

/*
 * courier_unblock_key
 *		Row id of the key was delivered or dead-lettered: if it was the
 *		failed row the key waited for, the key is free again.
 */
void
courier_unblock_key(OutboxState *ob, uint32 keyhash, int64 id)
{
	BlockedKey *b = hash_search(ob->blocked, &keyhash, HASH_FIND, NULL);

	if (b != NULL && (b->head_id == id || b->head_id == 0))
		hash_search(ob->blocked, &keyhash, HASH_REMOVE, NULL);
}

/*
 * courier_key_blocked
 *		Does the key wait for a failed row?
 */
bool
courier_key_blocked(OutboxState *ob, uint32 keyhash)
{
	return hash_search(ob->blocked, &keyhash, HASH_FIND, NULL) != NULL;
}
