/*-------------------------------------------------------------------------
 *
 * outbox_split.c
 *	  Splitting a batch the endpoint refused as a whole.
 *
 * A receiver refuses a whole CloudEvents batch (400) when one of its events
 * is invalid to it, and any endpoint refuses a request that is too large
 * (413): neither says the other events are bad.  Such a batch is cut in two
 * halves, sent one after the other; a half refused again is cut again, until
 * the refused events stand alone and go to the dead letters with the
 * answer (400, or 413 for an event too large on its own).  The others are
 * delivered once.
 *
 * Order per key: the parts of a batch form a chain (part 1, then part 2,
 * ...); a part is sent only when the one before it finished.  A key whose
 * row in an earlier part was not delivered (to be retried, or dead with
 * on_dead_letter = 'block') does not go on in later parts: those rows are
 * let go (no longer in flight) and read again later, behind the failed row,
 * as any row of a failed key is.  A row dead with on_dead_letter = 'skip'
 * lets its key's later rows go on.
 *
 * The rows of a split batch stay in flight from the first request to the
 * end of the chain.  Everything lives in the deliveries' own memory
 * contexts; a worker error resets them all, and the rows are read again.
 *
 * Any batched format whose body is prefix, rows separated by commas, and a
 * suffix can be split (Delivery.span_start/span_end mark each row's text).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "pg_courier.h"
#include "outbox_worker.h"

/*
 * courier_split_wanted
 *		Should this finished request be split rather than its rows failed?
 *		A batch of several rows answered 413 (too large), or a CloudEvents
 *		batch answered 400 (one of its events is refused).
 */
bool
courier_split_wanted(const Delivery *d)
{
	long		status = d->req->status;

	if (d->nrows < 2 || d->span_start == NULL)
		return false;
	if (status == 413)
		return true;
	return status == 400 && d->ob->format == COURIER_FORMAT_CLOUDEVENTS && d->ob->ce_batch;
}

/*
 * part_of
 *		A new, unstarted request for rows [from, to) of d (those with keep
 *		set, when keep is given), with d's body prefix.  Returns NULL when
 *		no row is kept.
 */
static Delivery *
part_of(Delivery *d, int from, int to, const bool *keep)
{
	Delivery   *p = courier_delivery_new(d->ob, to - from, d->topic);
	MemoryContext old = MemoryContextSwitchTo(p->cxt);

	for (int i = from; i < to; i++)
	{
		int			n = p->nrows;

		if (keep && !keep[i])
			continue;
		if (n == 0)
		{
			initStringInfo(&p->body);
			appendBinaryStringInfo(&p->body, d->body.data, d->span_start[0]);
			p->webhook_id = pstrdup(d->event_ids[i]);
		}
		else
			appendStringInfoChar(&p->body, ',');
		p->span_start[n] = p->body.len;
		appendBinaryStringInfo(&p->body, d->body.data + d->span_start[i], d->span_end[i] - d->span_start[i]);
		p->span_end[n] = p->body.len;
		p->event_ids[n] = pstrdup(d->event_ids[i]);
		p->ids[n] = d->ids[i];
		p->attempts[n] = d->attempts[i];
		p->keyhashes[n] = d->keyhashes[i];
		p->haskey[n] = d->haskey[i];
		p->nrows++;
	}
	MemoryContextSwitchTo(old);
	if (p->nrows == 0)
	{
		MemoryContextDelete(p->cxt);
		return NULL;
	}
	return p;
}

/*
 * courier_split_delivery
 *		Cut the refused batch d in two: the first half is sent now, the
 *		second waits for it (and d's own next part after that).  d is left
 *		with no rows: its rows are carried by the halves.
 */
void
courier_split_delivery(Delivery *d)
{
	int			half = d->nrows / 2;
	Delivery   *first = part_of(d, 0, half, NULL);
	Delivery   *second = part_of(d, half, d->nrows, NULL);

	second->then = d->then;
	first->then = second;
	/* keys that did not get through the parts before d stay out of the halves' successors */
	first->failed_keys = MemoryContextAlloc(first->cxt, sizeof(uint32) * (d->nfailed_keys + 1));
	memcpy(first->failed_keys, d->failed_keys, sizeof(uint32) * d->nfailed_keys);
	first->nfailed_keys = d->nfailed_keys;
	d->then = NULL;
	d->nrows = 0;
	courier_delivery_start(first);
}

/*
 * key_failed
 *		Is keyhash among the keys that must not go on?
 */
static bool
key_failed(const uint32 *keys, int n, uint32 keyhash)
{
	for (int i = 0; i < n; i++)
		if (keys[i] == keyhash)
			return true;
	return false;
}

/*
 * let_go
 *		Row i of an unsent part is no longer in flight; it is read again
 *		later (behind the failed row of its key).
 */
static void
let_go(Delivery *p, int i)
{
	OutboxState *ob = p->ob;

	hash_search(ob->inflight_ids, &p->ids[i], HASH_REMOVE, NULL);
	if (p->haskey[i] && !courier_key_unbusy(ob, p->keyhashes[i]) && !courier_key_blocked(ob, p->keyhashes[i]))
		courier_key_ready(ob, p->keyhashes[i]);
	ob->rescan = true;
	ob->rescan_at = 0;
}

/*
 * courier_split_continue
 *		d (a part of a split batch) finished and its outcome is recorded:
 *		send the next part, without the rows of keys that did not get
 *		through d or an earlier part.  A next part left with no rows passes
 *		the turn to the one after it.
 */
void
courier_split_continue(Delivery *d)
{
	Delivery   *next = d->then;
	uint32	   *keys;
	int			nkeys = 0;

	if (next == NULL)
		return;
	d->then = NULL;
	keys = palloc(sizeof(uint32) * (d->nfailed_keys + d->nrows + 1));
	for (int i = 0; i < d->nfailed_keys; i++)
		keys[nkeys++] = d->failed_keys[i];
	for (int i = 0; i < d->nrows; i++)
	{
		char		r = d->result[i];
		bool		through = (r == 'o' || r == 'a' || (r == 'd' && !d->ob->block_on_dead));

		if (d->haskey[i] && !through && !key_failed(keys, nkeys, d->keyhashes[i]))
			keys[nkeys++] = d->keyhashes[i];
	}

	while (next != NULL)
	{
		Delivery   *after = next->then;
		bool	   *keep = palloc(sizeof(bool) * next->nrows);
		int			kept = 0;
		Delivery   *part = next;

		for (int i = 0; i < next->nrows; i++)
		{
			keep[i] = !(next->haskey[i] && key_failed(keys, nkeys, next->keyhashes[i]));
			if (!keep[i])
				let_go(next, i);
			kept += keep[i];
		}
		if (kept < next->nrows)
		{
			part = kept > 0 ? part_of(next, 0, next->nrows, keep) : NULL;
			if (part != NULL)
				part->then = after;
			MemoryContextDelete(next->cxt);
		}
		if (part != NULL)
		{
			part->failed_keys = MemoryContextAlloc(part->cxt, sizeof(uint32) * (nkeys + 1));
			memcpy(part->failed_keys, keys, sizeof(uint32) * nkeys);
			part->nfailed_keys = nkeys;
			courier_delivery_start(part);
			return;
		}
		/* nothing left of this part: on to the one after it */
		next = after;
	}
}
