/*-------------------------------------------------------------------------
 *
 * outbox_delivery.c
 *	  Reading committed outbox rows, packing them into requests, and
 *	  recording the outcome: delete on acknowledgement, record the failure
 *	  and schedule a retry otherwise.
 *
 * Order per key.  Rows are read in id order.  A row is held back when
 *	- an earlier row of its key failed and still waits (the SQL excludes it),
 *	- a row of its key is in flight in a request already started (busy_keys),
 *	- a transaction the snapshot cannot see may own an earlier row of its
 *	  key (the registry's holds, see outbox_registry.c),
 * and once a key is held in a read, its later rows in that read are too.
 * Rows without a key are independent.
 *
 * Runs of a key.  Several rows of one key may share a request, in id order
 * (Kafka REST writes a request's records of one partition in order; a
 * CloudEvents batch is an ordered array): a row whose key is busy only in a
 * request this pass is still filling joins that request.  Two requests in
 * flight never carry the same key.  So that a few hot keys still fill
 * several requests at once, a pass fills up to DISPATCH_LANES requests side
 * by side and puts each key into the one its hash picks.
 *
 * Reading ahead.  Rows parked behind busy keys are read twice (fresh, then
 * by id), so once the parked rows would fill the whole in-flight budget
 * the fresh read pauses: hot keys then drain from their queues instead of
 * the read running ever further ahead.  Every READ_AHEAD_PAUSE_MS it still
 * reads one batch, because the parked rows may all wait behind a failed
 * key while other keys' rows lie past the cursor.
 *
 * First request early.  A read materializes its rows before any of them is
 * sent, and requests go onto the wire between rounds, so a batched
 * outbox's reads are small: one batch when it was caught up (a large
 * backlog committed at once starts moving after one batch's work), then
 * twice as many each round up to READ_BATCHES batches (the requests of one
 * round are on their way while the next round reads), and libcurl is
 * driven during long reads.
 *
 * Reading.  A cursor remembers the highest id looked at, so a busy outbox
 * is read incrementally.  Rows left behind the cursor (held, or failed and
 * waiting for their retry time) are picked up by a rescan from the start,
 * scheduled when something that could release them happens.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "pg_courier.h"
#include "outbox_worker.h"
#include "owner_exec.h"

/* Read an outbox from the start after this long without new rows, and at least this often. */
#define FULL_SCAN_INTERVAL_MS		5000
#define FULL_SCAN_MAX_INTERVAL_MS	60000

/* requests a dispatch pass fills side by side (keys are spread over them by hash) */
#define DISPATCH_LANES		4
/* batches one read of a batched outbox takes at most (the requests of a round leave after it) */
#define READ_BATCHES		8
/* rows one read may return */
#define MAX_READ_ROWS		100000
/* once parked rows fill the in-flight budget, read ahead (one batch) only this often */
#define READ_AHEAD_PAUSE_MS	100

/* A row that can never be sent, and why (outbox_format.c judges rows). */
typedef struct UnsendableRow
{
	int64		id;
	const char *why;
} UnsendableRow;

/*
 * dead_letter_unsendable
 *		Rows that cannot be sent as they are (a NULL payload, an invalid
 *		Kafka topic name, ...) go to the dead letters at once, each with the
 *		reason naming its column: no retry can help them.  Called after a
 *		read's rows were taken (it runs a statement of its own).
 */
static void
dead_letter_unsendable(OutboxState *ob, List *rows)
{
	int			n = list_length(rows);
	Datum	   *id = palloc(sizeof(Datum) * n);
	Datum	   *status = palloc(sizeof(Datum) * n);
	Datum	   *err = palloc(sizeof(Datum) * n);
	Datum		args[5];
	ListCell   *lc;
	int			i = 0;

	if (n == 0)
		return;
	foreach(lc, rows)
	{
		UnsendableRow *u = lfirst(lc);

		id[i] = Int64GetDatum(u->id);
		status[i] = Int32GetDatum(0);
		err[i++] = CStringGetTextDatum(u->why);
	}
	args[0] = PointerGetDatum(construct_array(id, n, INT8OID, 8, true, TYPALIGN_DOUBLE));
	args[1] = PointerGetDatum(construct_array(status, n, INT4OID, 4, true, TYPALIGN_INT));
	args[2] = PointerGetDatum(construct_array(err, n, TEXTOID, -1, false, TYPALIGN_INT));
	args[3] = ObjectIdGetDatum(ob->relid);
	args[4] = BoolGetDatum(ob->block_on_dead);
	if (courier_owner_execute_plan(ob->owner, ob->dead_plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "pg_courier: could not move rows of %s to courier.dead_letters", ob->qname);
	courier_counters_record(ob->counters, 0, 0, n, ((UnsendableRow *) linitial(rows))->why);
}

/*
 * courier_dispatch_possible
 *		Could a read of this outbox start anything now?  Checked before any
 *		transaction work, so that paused outboxes, exhausted budgets and open
 *		breakers cost nothing.
 */
bool
courier_dispatch_possible(OutboxState *ob)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz next = courier_breaker_next_change(ob->breaker);

	if (!ob->enabled || OB_INFLIGHT(ob) <= ob->inflight || (next != 0 && now < next) ||
		courier_breaker_held_until(ob->breaker) != 0 ||
		ob->shape_problem || courier_health_resting(&ob->delivery, now))
		return false;
	/* Kafka REST v3 without its cluster id: only a discovery could start, when due */
	if (ob->format == COURIER_FORMAT_KAFKA_REST_V3 && courier_kafka_v3_cluster(ob) == NULL &&
		(ob->discovering || now < ob->discover_after))
		return false;
	/* is there anything to read?  (the commit count is read before the snapshot) */
	ob->commits = ob->counters ? pg_atomic_read_u64(&ob->counters->commits) : 0;
	return ob->commits != ob->seen_commits || ob->counters == NULL || ob->more || ob->nready > 0 ||
		ob->rescan || (ob->retry_at != 0 && now >= ob->retry_at) ||
		TimestampDifferenceExceeds(ob->last_read, now, courier_poll_interval_ms);
}

/* One read-and-send pass over an outbox. */
typedef struct DispatchPass
{
	OutboxState *ob;
	const CourierHoldSet *holds;
	Oid			owner;			/* the table's owner now, for the holds */
	int			budget;			/* requests we may still start */
	bool		probe;			/* the breaker allows a single probe */
	bool		stopped;		/* budget exhausted */
	int			started;		/* rows put into requests */
	HTAB	   *held_keys;		/* keys held back in this pass */
	HTAB	   *run_keys;		/* key hash -> the request of this pass carrying its rows */
	bool		failed_rows;	/* the outbox holds failed rows (in this round's snapshot) */
	int64		first_held;		/* the cursor must stay below this */
	List	   *unsendable;		/* rows that can never be sent (UnsendableRow) */
	int64		last_unsendable;	/* id of the last row added to it */
} DispatchPass;

/*
 * hold_row
 *		The row must be read again later: keep the cursor below it, and keep
 *		later rows of its key in this pass behind it.
 */
static void
hold_row(DispatchPass *dp, int64 id, uint32 keyhash)
{
	if (dp->held_keys == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = ctl.entrysize = sizeof(uint32);
		ctl.hcxt = CurrentMemoryContext;
		dp->held_keys = hash_create("pg_courier held keys", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	hash_search(dp->held_keys, &keyhash, HASH_ENTER, NULL);
	dp->first_held = Min(dp->first_held, id);
}

/* run_keys entry */
typedef struct RunKey
{
	uint32		keyhash;		/* hash key */
	Delivery   *d;
} RunKey;

/*
 * note_run
 *		Row of key keyhash went into d: later rows of the key in this pass
 *		may follow it there.
 */
static void
note_run(DispatchPass *dp, uint32 keyhash, Delivery *d)
{
	RunKey	   *rk;

	if (dp->run_keys == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(uint32);
		ctl.entrysize = sizeof(RunKey);
		ctl.hcxt = CurrentMemoryContext;
		dp->run_keys = hash_create("pg_courier key runs", 256, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	rk = hash_search(dp->run_keys, &keyhash, HASH_ENTER, NULL);
	rk->d = d;
}

/*
 * run_delivery
 *		A row whose key is busy: the request of this pass that carries the
 *		key's earlier rows, if the row can still join it (not started, room
 *		left, same topic); NULL when the row must wait for its key.  A full
 *		request is started on the way (it would be at the end of the pass).
 */
static Delivery *
run_delivery(DispatchPass *dp, uint32 keyhash, const OutboxRow *r)
{
	RunKey	   *rk = dp->run_keys ? hash_search(dp->run_keys, &keyhash, HASH_FIND, NULL) : NULL;
	Delivery   *d;

	if (rk == NULL || rk->d->started || dp->probe)
		return NULL;
	d = rk->d;
	if (courier_delivery_has_room(d, r))
		return d;
	if (!COURIER_FORMAT_IS_KAFKA(dp->ob->format) || strcmp(d->topic, r->topic) == 0)
	{
		dp->ob->open = list_delete_ptr(dp->ob->open, d);
		courier_delivery_start(d);
	}
	return NULL;
}

/*
 * take_row
 *		Decide about one row read in id order: send it (alone, or after the
 *		earlier rows of its key in the same request), park it behind its
 *		key, or hold it for a later read.  Returns false when the in-flight
 *		budget is exhausted (the row was not taken).
 */
static bool
take_row(DispatchPass *dp, OutboxRow *r)
{
	OutboxState *ob = dp->ob;
	uint32		keyhash = r->keyhash;
	Delivery   *d = NULL;
	bool		waits;
	bool		busy;

	if (hash_search(ob->inflight_ids, &r->id, HASH_FIND, NULL))
		return true;
	if (r->key)
	{
		/* a transaction still in progress may own an earlier row of the key */
		if ((dp->held_keys && hash_search(dp->held_keys, &keyhash, HASH_FIND, NULL)) ||
			courier_hold_applies(dp->holds, ob->relid, dp->owner, r->id, keyhash))
		{
			hold_row(dp, r->id, keyhash);
			return true;
		}
		/* a failed row that is not behind another failure heads its key's queue */
		if (r->attempts > 0 && !r->blocked)
			courier_block_key(ob, keyhash, r->id);
		waits = r->blocked || courier_blocked_for(ob, keyhash, r->id) ||
			courier_parked_before(ob, keyhash, r->id);
		busy = hash_search(ob->busy_keys, &keyhash, HASH_FIND, NULL) != NULL;
		/* busy in a request of this pass: it may follow its key's rows there */
		if (!waits && busy)
		{
			courier_decode_rest(ob, r);
			if (r->unsendable == NULL)
				d = run_delivery(dp, keyhash, r);
		}
		if (d == NULL && (waits || busy))
		{
			if (r->blocked)
				courier_block_key(ob, keyhash, 0);
			if (!courier_park(ob, keyhash, r->id))
				hold_row(dp, r->id, keyhash);
			return true;
		}
	}
	courier_decode_rest(ob, r);
	if (r->unsendable)
	{
		/* (at the head of its key: it goes to the dead letters in its turn) */
		UnsendableRow *u = palloc(sizeof(UnsendableRow));

		u->id = r->id;
		u->why = r->unsendable;
		dp->unsendable = lappend(dp->unsendable, u);
		dp->last_unsendable = r->id;
		/* on_dead_letter = 'block': its later rows wait behind the dead letter */
		if (r->key && ob->block_on_dead)
			hold_row(dp, r->id, keyhash);
		return true;
	}
	if (d == NULL)
	{
		/* keys spread over the lanes by hash; rows without a key by id */
		int			lane = (int) ((r->key ? keyhash : (uint32) r->id) % DISPATCH_LANES);

		d = courier_open_delivery_for(ob, &ob->open, r, dp->probe ? 0 : lane, &dp->budget);
		if (d == NULL)
		{
			dp->stopped = true;
			return false;
		}
		if (dp->probe)
		{
			/* the probe carries a single event: a failure costs one attempt */
			d->probe = true;
			d->maxrows = 1;
		}
	}
	courier_delivery_add(d, r, keyhash);
	dp->started++;
	if (r->key)
		note_run(dp, keyhash, d);
	if (!OB_BATCHED(ob))
	{
		ob->open = list_delete_ptr(ob->open, d);
		courier_delivery_start(d);
	}
	return true;
}

/*
 * take_rows
 *		Run a read and take its rows in order.  Returns the number of rows
 *		read and, in *last, the highest id taken.
 */
static uint64
take_rows(DispatchPass *dp, SPIPlanPtr plan, Datum *args, int64 *last)
{
	uint64		n;

	SPITupleTable *rows;

	if (courier_owner_execute_plan(dp->ob->owner, plan, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "pg_courier: could not read outbox %s", dp->ob->qname);
	n = SPI_processed;
	rows = SPI_tuptable;		/* ours, whatever other statements run meanwhile */
	courier_check_row_shape(dp->ob, rows->tupdesc);
	for (uint64 i = 0; i < n; i++)
	{
		OutboxRow	r;

		courier_decode_row(rows->vals[i], rows->tupdesc, &r);
		if (!take_row(dp, &r))
			break;
		*last = r.id;
		/* let the requests already started go on meanwhile (a connect takes more than one step) */
		if (i % 512 == 511 && dp->ob->inflight > 0)
			(void) courier_http_poll(0);
	}
	return n;
}

/* A row of a read and its place in it (rows_by_key). */
typedef struct RowByKey
{
	uint64		row;			/* its place in the read (id order) */
	OutboxRow	r;
} RowByKey;

static int
by_key_then_id(const void *a, const void *b)
{
	const RowByKey *x = a;
	const RowByKey *y = b;

	if (x->r.keyhash != y->r.keyhash)
		return x->r.keyhash < y->r.keyhash ? -1 : 1;
	return x->row < y->row ? -1 : (x->row > y->row);
}

/*
 * rows_by_key
 *		The rows of a read, decoded and grouped by key, each key's in id
 *		order.  Parked rows of many keys come back interleaved by id; taken
 *		in that order, the first request would get a few rows of every key
 *		and fill up, and the rest would go back to their queues.  Taken key
 *		by key, a request gets whole runs and the next keys fill the next.
 */
static RowByKey *
rows_by_key(SPITupleTable *rows, uint64 n)
{
	RowByKey   *order = palloc(sizeof(RowByKey) * Max(n, 1));

	for (uint64 i = 0; i < n; i++)
	{
		courier_decode_row(rows->vals[i], rows->tupdesc, &order[i].r);
		order[i].row = i;
	}
	qsort(order, n, sizeof(RowByKey), by_key_then_id);
	return order;
}

/*
 * take_parked
 *		Fetch the first parked rows of every key that became free (up to a
 *		batch of each: they may share a request, in order).  A row
 *		that is gone (delivered meanwhile) or not ready (it failed and waits
 *		for its retry, which the retry read will find) is dropped from the
 *		queue; one that could not be taken for lack of budget goes back.
 */
static void
take_parked(DispatchPass *dp, int limit)
{
	OutboxState *ob = dp->ob;
	int64	   *ids = palloc(sizeof(int64) * limit);
	uint32	   *keys = palloc(sizeof(uint32) * limit);
	Datum	   *d = palloc(sizeof(Datum) * limit);
	Datum		args[2];
	int			n = courier_take_ready(ob, ids, keys, limit,
										   OB_BATCHED(ob) && !dp->probe ? OB_BATCH(ob) : 1);
	uint64		returned;
	SPITupleTable *rows;
	RowByKey   *order;

	if (n == 0)
		return;
	for (int i = 0; i < n; i++)
		d[i] = Int64GetDatum(ids[i]);
	args[0] = PointerGetDatum(construct_array(d, n, INT8OID, 8, true, TYPALIGN_DOUBLE));
	args[1] = CStringGetTextDatum(ob->default_topic);
	if (courier_owner_execute_plan(ob->owner, ob->ids_plans[dp->failed_rows], args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "pg_courier: could not read outbox %s", ob->qname);
	returned = SPI_processed;
	rows = SPI_tuptable;
	courier_check_row_shape(ob, rows->tupdesc);
	order = rows_by_key(rows, returned);
	for (uint64 j = 0; j < returned; j++)
	{
		OutboxRow	r = order[j].r;
		uint32		keyhash = r.keyhash;

		if (r.key == NULL)
		{
			/* its key was removed meanwhile: it waits for nothing now */
			if (!dp->stopped)
				(void) take_row(dp, &r);
			continue;
		}
		if (!dp->stopped && take_row(dp, &r) &&
			(hash_search(ob->inflight_ids, &r.id, HASH_FIND, NULL) || courier_parked_before(ob, keyhash, r.id + 1) ||
			 dp->last_unsendable == r.id))
			continue;			/* sent, queued again behind its key, or dead */
		/* out of budget, or held back: back to the front of its queue */
		if (!courier_park(ob, keyhash, r.id))
			hold_row(dp, r.id, keyhash);
	}
	/* keys whose row went out are busy now; the others may go on with their next row */
	for (int i = 0; i < n; i++)
		if (!hash_search(ob->busy_keys, &keys[i], HASH_FIND, NULL) && !courier_key_blocked(ob, keys[i]) &&
			!(dp->held_keys && hash_search(dp->held_keys, &keys[i], HASH_FIND, NULL)))
			courier_key_ready(ob, keys[i]);
}

/*
 * next_retry_at
 *		When the earliest failed row that is not in flight becomes due.
 */
static TimestampTz
next_retry_at(OutboxState *ob)
{
	bool		isnull;
	Datum		t;

	if (courier_owner_execute_plan(ob->owner, ob->next_retry_plan, NULL, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		return 0;
	t = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? 0 : DatumGetTimestampTz(t);
}

/*
 * parked_fill_budget
 *		Would the rows parked behind busy keys fill the in-flight budget?
 *		Then reading further ahead only parks more (see "Reading ahead").
 */
static bool
parked_fill_budget(const OutboxState *ob)
{
	/* (in batches of batch_size even for one event per request: parked rows are cheap, reads are not) */
	return ob->nparked >= (int64) OB_BATCH(ob) * OB_INFLIGHT(ob);
}

/*
 * discover_cluster
 *		Kafka REST v3 without a cluster_id option: ask the proxy (GET
 *		{base}/v3/clusters, a request without rows under the breaker and the
 *		endpoint policy like the others); rows wait until it answers.
 */
static bool
discover_cluster(OutboxState *ob)
{
	Delivery   *d;
	int			admitted;

	if (ob->discovering || GetCurrentTimestamp() < ob->discover_after ||
		(admitted = courier_breaker_admit(ob->breaker)) == 0)
		return false;
	d = courier_delivery_new(ob, 1, NULL);
	d->discovery = true;
	d->probe = (admitted == 1);
	ob->discovering = true;
	courier_delivery_start(d);
	return false;
}

/*
 * courier_dispatch
 *		Read ready rows of one outbox and start requests for them, within the
 *		outbox's in-flight budget: first rows that were parked behind keys
 *		that are free now, then failed rows whose retry is due, then fresh
 *		rows from the cursor on.  Runs inside the round's transaction, with
 *		the snapshot the holds were taken with.  Returns true when more rows
 *		may be waiting.
 */
bool
courier_dispatch(OutboxState *ob, const CourierHoldSet *holds)
{
	DispatchPass dp = {0};
	Datum		args[3];
	TimestampTz now = GetCurrentTimestamp();
	ListCell   *lc;
	int			admitted;
	int			per_request;	/* rows per request */
	int			limit;			/* rows the parked and retry reads may take */
	int			fresh_limit;	/* rows the fresh read may take */
	bool		ahead;			/* parked rows fill the budget already */
	bool		small;			/* the fresh read takes less than it could */
	int64		last;
	int64		cursor_before = ob->cursor;
	uint64		n = 0;
	uint64		nnull;

	dp.ob = ob;
	dp.holds = holds;
	dp.first_held = PG_INT64_MAX;
	/* the owner holds a lock on the table: try again later rather than wait */
	if (!ConditionalLockRelationOid(ob->relid, AccessShareLock))
		return false;
	/* locked: its owner cannot change under us (ob->owner may be stale) */
	dp.owner = courier_hold_owner(holds, ob->relid, ob->owner);
	/* statements are made here; a broken outbox is healthy again only if they work */
	if (ob->plans_stale)
	{
		courier_free_plans(ob);
		ob->plans_stale = false;
	}
	if (ob->delivery.failing || ob->fetch_plans[1] == NULL)
		courier_probe_statements(ob);
	dp.budget = OB_INFLIGHT(ob) - ob->inflight;
	if (!ob->enabled || dp.budget <= 0)
		return false;
	if (ob->format == COURIER_FORMAT_KAFKA_REST_V3 && courier_kafka_v3_cluster(ob) == NULL)
		return discover_cluster(ob);

	/* the origin asked us to wait (Retry-After) */
	if (courier_breaker_held_until(ob->breaker) != 0)
		return false;
	/* an open breaker sends nothing (rows keep their attempts); half-open sends one probe */
	admitted = courier_breaker_admit(ob->breaker);
	if (admitted == 0)
		return false;
	if (admitted == 1)
	{
		dp.budget = 1;
		dp.probe = true;
	}

	/*
	 * A read from the start: on request (rows with explicit ids arrived, an
	 * error), when the outbox has been quiet for a while, and at least once
	 * a minute.  It meets every waiting row again, so parking starts afresh,
	 * and it looks up when the next failed row is due.
	 */
	if ((ob->rescan && now >= ob->rescan_at) ||
		TimestampDifferenceExceeds(ob->last_full_scan, now, FULL_SCAN_MAX_INTERVAL_MS) ||
		(TimestampDifferenceExceeds(ob->last_full_scan, now, FULL_SCAN_INTERVAL_MS) &&
		 TimestampDifferenceExceeds(ob->last_fresh_rows, now, FULL_SCAN_INTERVAL_MS)))
	{
		ob->cursor = cursor_before = 0;
		ob->rescan = false;
		ob->last_full_scan = now;
		courier_parking_clear(ob);
		ob->retry_at = next_retry_at(ob);
		/* rows without a (positive) id are never read: out of the way with them */
		nnull = courier_dead_letter_null_ids(ob);
		if (nnull > 0)
			courier_counters_record(ob->counters, 0, 0, nnull, "id is NULL or not positive");
	}
	last = ob->cursor;
	dp.failed_rows = courier_has_failed_rows(ob);

	/*
	 * Reads of a batched outbox take up to READ_BATCHES batches.  The fresh
	 * read takes one once caught up (it leaves before the rest is read) or
	 * while the rows parked behind busy keys fill the budget (see "Reading
	 * ahead"), and twice as many each round after that.
	 */
	per_request = OB_BATCHED(ob) && !dp.probe ? OB_BATCH(ob) : 1;
	limit = per_request * (per_request > 1 ? Min(dp.budget, READ_BATCHES) : dp.budget);
	limit = Min(limit, MAX_READ_ROWS);
	ahead = parked_fill_budget(ob);
	if (ob->caught_up || ahead)
		ob->read_batches = 1;
	fresh_limit = per_request > 1 ? Min(per_request * Max(ob->read_batches, 1), limit) : limit;
	small = fresh_limit < limit;
	args[1] = Int32GetDatum(limit);
	args[2] = CStringGetTextDatum(ob->default_topic);

	if (ob->nready > 0)
		take_parked(&dp, limit);
	if (!dp.stopped && ob->retry_at != 0 && now >= ob->retry_at)
	{
		int64		ignored = 0;

		args[0] = Int64GetDatum(0);
		if (take_rows(&dp, ob->retry_plan, args, &ignored) == (uint64) limit || dp.stopped)
			ob->retry_at = now;		/* more are due: come back */
		else
			ob->retry_at = next_retry_at(ob);
	}
	if (!dp.stopped && (!ahead || TimestampDifferenceExceeds(ob->last_read, now, READ_AHEAD_PAUSE_MS)))
	{
		args[0] = Int64GetDatum(ob->cursor);
		args[1] = Int32GetDatum(fresh_limit);
		n = take_rows(&dp, ob->fetch_plans[dp.failed_rows], args, &last);
		if (n > 0)
			ob->last_fresh_rows = now;
		ob->caught_up = (n < (uint64) fresh_limit);
		ob->read_batches = Min(2 * Max(ob->read_batches, 1), READ_BATCHES);
		ob->seen_commits = ob->commits;
		ob->last_read = now;
	}

	foreach(lc, ob->open)
		courier_delivery_start(lfirst(lc));
	list_free(ob->open);
	ob->open = NIL;
	if (dp.probe && dp.started == 0)
		courier_breaker_release_probe(ob->breaker);
	dead_letter_unsendable(ob, dp.unsendable);

	/*
	 * Advance the cursor over what this pass took, but never past a held
	 * row (it must be read again before later rows of its key) nor past an
	 * id that a transaction still in progress may own.
	 */
	ob->cursor = Min(last, dp.first_held - 1);
	ob->cursor = Min(ob->cursor, courier_hold_horizon(holds, ob->relid, dp.owner) - 1);

	/*
	 * More waiting: only when this pass got somewhere (rows held behind open
	 * transactions come back when those commit: their commits count).
	 */
	ob->more = ((dp.stopped || n == (uint64) fresh_limit) && (dp.started > 0 || ob->cursor > cursor_before)) ||
		ob->nready > 0 || (small && !ahead && n == (uint64) fresh_limit);
	return ob->more;
}

/*
 * courier_dispatch_abort
 *		A dispatch failed half-way: undo the requests it had not started yet
 *		and read the outbox again from the start (parked rows it had taken
 *		out of their queues are found again that way).
 */
void
courier_dispatch_abort(OutboxState *ob)
{
	ListCell   *lc;

	foreach(lc, ob->open)
	{
		Delivery   *d = lfirst(lc);

		for (int i = 0; i < d->nrows; i++)
		{
			hash_search(ob->inflight_ids, &d->ids[i], HASH_REMOVE, NULL);
			if (d->haskey[i])
				(void) courier_key_unbusy(ob, d->keyhashes[i]);
		}
		if (d->probe)
			courier_breaker_release_probe(ob->breaker);
		MemoryContextDelete(d->cxt);
	}
	list_free(ob->open);
	ob->open = NIL;
	ob->rescan = true;
	ob->rescan_at = 0;
}
