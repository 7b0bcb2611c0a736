/*-------------------------------------------------------------------------
 *
 * outbox_complete.c
 *	  What happens when a request finishes: acknowledged rows are deleted,
 *	  the others get their failure recorded and a retry time.
 *
 * At least once.  A row is deleted only after the endpoint acknowledged it
 * (any 2xx; for Kafka REST, no error code for it in the answer).  The
 * deletes commit synchronously unless courier.synchronous_ack is off; then a
 * crash can forget the last acknowledgements and those rows are sent again,
 * with the same event id.  Either way a row is never removed without one.
 *
 * Never twice once acknowledged.  When the acknowledgement cannot be
 * recorded (the owner holds a lock on the table, a trigger of the owner's
 * fails the DELETE), the acknowledged ids stay in memory (OutboxState.acked)
 * and in the in-flight set, so they are not read and sent again; recording
 * them is tried again every second.  Only a worker restart forgets them (the
 * rows are then sent again, as after a crash).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "pg_courier.h"
#include "outbox_worker.h"
#include "owner_exec.h"

/* Outcome of one request, row by row: delivered, to retry, or dead. */
typedef struct RowList
{
	int			n;
	Datum	   *ids;
	Datum	   *status;
	Datum	   *error;
	Datum	   *retry_after;
} RowList;

typedef struct Outcome
{
	int			nok;
	Datum	   *ok_ids;
	RowList		retry;
	RowList		dead;
	const char *first_error;
	bool		refused;		/* the endpoint refused our credentials: a breaker failure */
	int			failed_requests;	/* failures without rows (v3 cluster discovery) */
	HTAB	   *stopped_keys;	/* keys of the current request whose run stopped at a failure */
} Outcome;

/*
 * The most of an endpoint's answer kept in last_error and dead letters: an
 * excerpt for the operator, not a channel for reading what the endpoint
 * holds.  With the prefix and the mark of a cut, the whole text stays within
 * COURIER_ERRLEN (the shared counters' copy).
 */
#define RESPONSE_EXCERPT_BYTES	200

/*
 * describe_failure
 *		Text recorded on failed rows: status and the start of the answer,
 *		marked when cut.  Never includes request headers (credentials live
 *		there).
 */
static char *
describe_failure(const CourierHttpRequest *req)
{
	StringInfoData s;

	if (req->status == 0)
		return psprintf("%s", req->error[0] ? req->error : "request failed");
	initStringInfo(&s);
	appendStringInfo(&s, "HTTP %ld", req->status);
	if (req->response.len > 0)
	{
		int			n = Min(req->response.len, RESPONSE_EXCERPT_BYTES);

		appendStringInfoString(&s, ": ");
		for (int i = 0; i < n; i++)
		{
			char		c = req->response.data[i];

			/* printable ASCII only: the answer's encoding is unknown */
			appendStringInfoChar(&s, (c >= 0x20 && c < 0x7f) ? c : ' ');
		}
		if (req->response.len > n)
			appendStringInfo(&s, " ...(cut at %d bytes)", n);
	}
	return s.data;
}

/*
 * clip_to_characters
 *		text without a trailing incomplete character (a fixed-size buffer
 *		may have cut one in two), so that it is valid in the database
 *		encoding.
 */
static char *
clip_to_characters(const char *text)
{
	int			len = strlen(text);

	return pnstrdup(text, pg_mbcliplen(text, len, len));
}

static void
rowlist_init(RowList *l, int n)
{
	l->n = 0;
	l->ids = palloc(sizeof(Datum) * n);
	l->status = palloc(sizeof(Datum) * n);
	l->error = palloc(sizeof(Datum) * n);
	l->retry_after = palloc(sizeof(Datum) * n);
}

/*
 * retriable_status
 *		Worth trying again later: no answer, a redirect we do not follow (the
 *		endpoint may be fixed), 408, 425, 429 and 5xx.  Other 4xx are answers:
 *		sending the same event again cannot succeed.
 */
static bool
retriable_status(long status)
{
	return status == 0 || (status >= 300 && status < 400) || status == 408 || status == 425 ||
		status == 429 || status >= 500;
}

/*
 * behind_failure
 *		Row i of d is not written: must it wait for an earlier row of its
 *		key in d that was not written either?  Then it is 'u'nsent: it goes
 *		back behind that row, without an attempt counted, and is sent again
 *		after it, in order.  (A row the endpoint said it wrote is never sent
 *		again, whatever happened to the rows before it.)
 */
static bool
behind_failure(Outcome *o, const Delivery *d, int i)
{
	if (!d->haskey[i] || o->stopped_keys == NULL ||
		hash_search(o->stopped_keys, &d->keyhashes[i], HASH_FIND, NULL) == NULL)
		return false;
	d->result[i] = 'u';
	return true;
}

/*
 * stop_run
 *		Row i of d failed and its key may not go on past it (it will be
 *		retried, or it is a dead letter that blocks its key): the key's later
 *		rows in d that were not written wait behind it.
 */
static void
stop_run(Outcome *o, const Delivery *d, int i)
{
	if (!d->haskey[i] || (d->result[i] == 'd' && !d->ob->block_on_dead))
		return;
	if (o->stopped_keys == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = ctl.entrysize = sizeof(uint32);
		ctl.hcxt = CurrentMemoryContext;
		o->stopped_keys = hash_create("pg_courier stopped keys", 64, &ctl,
									  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	hash_search(o->stopped_keys, &d->keyhashes[i], HASH_ENTER, NULL);
}

/*
 * outcome_fail
 *		Row i failed: retry it, or move it to the dead letters when the
 *		failure is permanent or its attempts are used up.
 */
static void
outcome_fail(Outcome *o, const Delivery *d, int i, long status, const char *error,
			 long retry_after_ms, bool permanent)
{
	int			max = d->ob->max_attempts >= 0 ? d->ob->max_attempts : courier_max_attempts;
	bool		exhausted = (max > 0 && d->attempts[i] + 1 >= max);
	RowList    *l = (permanent || exhausted) ? &o->dead : &o->retry;

	if (behind_failure(o, d, i))
		return;
	((Delivery *) d)->result[i] = (permanent || exhausted) ? 'd' : 'r';
	stop_run(o, d, i);

	l->ids[l->n] = Int64GetDatum(d->ids[i]);
	l->status[l->n] = Int32GetDatum((int32) status);
	l->error[l->n] = CStringGetTextDatum(error);
	l->retry_after[l->n] = Int64GetDatum(retry_after_ms);
	l->n++;
	if (o->first_error == NULL)
		o->first_error = error;
}

/*
 * outcome_init
 *		Room for the outcomes of n rows.
 */
static void
outcome_init(Outcome *o, int n)
{
	memset(o, 0, sizeof(Outcome));
	o->ok_ids = palloc(sizeof(Datum) * n);
	rowlist_init(&o->retry, n);
	rowlist_init(&o->dead, n);
}

/*
 * outcome_refused
 *		Row i was refused because of our credentials (HTTP 401 / 403, Kafka
 *		40101 / 40301): the endpoint's problem, not the event's.  Retried
 *		with the backoff however many attempts it had (a rotated credential
 *		must not send a stream to the dead letters), and the request counts
 *		as a failure for the breaker.
 */
static void
outcome_refused(Outcome *o, const Delivery *d, int i, long status, const char *what)
{
	RowList    *l = &o->retry;
	char	   *error = psprintf("the endpoint refused our credentials (%s)", what);

	if (behind_failure(o, d, i))
		return;
	((Delivery *) d)->result[i] = 'r';
	stop_run(o, d, i);
	l->ids[l->n] = Int64GetDatum(d->ids[i]);
	l->status[l->n] = Int32GetDatum((int32) status);
	l->error[l->n] = CStringGetTextDatum(error);
	l->retry_after[l->n] = Int64GetDatum(-1);
	l->n++;
	o->refused = true;
	if (o->first_error == NULL)
		o->first_error = error;
}

/*
 * outcome_written
 *		Row i was acknowledged.
 */
static void
outcome_written(Outcome *o, const Delivery *d, int i)
{
	o->ok_ids[o->nok++] = Int64GetDatum(d->ids[i]);
	d->result[i] = 'o';
}

/*
 * classify_kafka
 *		Per-record outcomes of a Kafka REST answer (2xx): v2's offsets
 *		(kafka_rest.c says how Confluent's and Redpanda's answers differ) or
 *		v3's 207 successes and failures.  Codes are classified by
 *		courier_kafka_class: 50002 (and 1) dead letter, 40101 / 40301
 *		refused, 50003 (and 2) and the unknown retried.
 */
static void
classify_kafka(const Delivery *d, Outcome *o)
{
	const CourierHttpRequest *req = d->req;
	int		   *codes = palloc(sizeof(int) * d->nrows);
	char		err[200];
	bool		parsed;

	parsed = d->ob->format == COURIER_FORMAT_KAFKA_REST_V3
		? courier_parse_kafka_v3_batch(req->response.data, req->response.len, d->nrows, codes, err, sizeof(err))
		: courier_parse_kafka_offsets(req->response.data, req->response.len, d->nrows, codes, err, sizeof(err));
	for (int i = 0; i < d->nrows; i++)
	{
		char	   *error;

		if (!parsed)
		{
			outcome_fail(o, d, i, req->status, err, -1, false);
			continue;
		}
		if (codes[i] == -1)
		{
			outcome_fail(o, d, i, req->status, "the Kafka REST response does not mention this record", -1, false);
			continue;
		}
		if (courier_kafka_class(codes[i]) == COURIER_KAFKA_WRITTEN)
		{
			outcome_written(o, d, i);
			continue;
		}
		error = psprintf("Kafka error_code %d%s%s", codes[i], err[0] ? ": " : "", clip_to_characters(err));
		switch (courier_kafka_class(codes[i]))
		{
			case COURIER_KAFKA_WRITTEN:
				break;			/* (above) */
			case COURIER_KAFKA_REFUSED:
				outcome_refused(o, d, i, req->status, error);
				break;
			case COURIER_KAFKA_PERMANENT:
				outcome_fail(o, d, i, req->status,
							 psprintf("%s (not retriable: the record was not written)", error), -1, true);
				break;
			case COURIER_KAFKA_RETRY:
				outcome_fail(o, d, i, req->status, error, -1, false);
				break;
		}
	}
}

/* How long a failed cluster discovery waits before the next. */
#define DISCOVERY_RETRY_MS	2000

/*
 * classify_discovery
 *		The answer to GET /v3/clusters: remember the cluster id.  The
 *		request carries no rows: a failure counts as one failed attempt
 *		(last_error says what happened), counts for the breaker by its
 *		status, and the next discovery waits DISCOVERY_RETRY_MS.
 */
static void
classify_discovery(const Delivery *d, Outcome *o)
{
	const CourierHttpRequest *req = d->req;
	OutboxState *ob = d->ob;
	char		id[80];

	ob->discovering = false;
	if (req->status >= 200 && req->status < 300 &&
		courier_parse_kafka_v3_clusters(req->response.data, req->response.len, id, sizeof(id)))
		ob->cluster_found = MemoryContextStrdup(ob->cxt, id);
	else
	{
		o->first_error = psprintf("could not discover the Kafka cluster id (GET /v3/clusters): %s",
								  req->status >= 200 && req->status < 300
								  ? "no usable cluster_id in the answer" : describe_failure(req));
		o->failed_requests++;
		ob->discover_after = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), DISCOVERY_RETRY_MS);
	}
	if (req->status == 401 || req->status == 403)
		o->refused = true;
}

/*
 * endpoint_failure
 *		Does the answer count against the endpoint's breaker?  Not answering
 *		properly does (transport errors, 408, 425, 429, 5xx), except a 429 or
 *		503 with Retry-After: that is the server pacing us, and it holds the
 *		whole origin until then instead.
 */
static bool
endpoint_failure(OutboxState *ob, const CourierHttpRequest *req)
{
	if ((req->status == 429 || req->status == 503) && req->retry_after_ms >= 0)
	{
		courier_breaker_hold_origin(ob->origin, TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
																			req->retry_after_ms));
		return false;
	}
	return req->status == 0 || req->status == 408 || req->status == 425 ||
		req->status == 429 || req->status >= 500;
}

/*
 * classify
 *		Add a finished request's per-row outcomes to o.
 */
static void
classify(const Delivery *d, Outcome *o)
{
	const CourierHttpRequest *req = d->req;
	bool		ok = (req->status >= 200 && req->status < 300);
	long		retry_after = (req->status == 429 || req->status == 503) ? req->retry_after_ms : -1;

	if (d->discovery)
	{
		classify_discovery(d, o);
		return;
	}
	if (ok && COURIER_FORMAT_IS_KAFKA(d->ob->format))
	{
		classify_kafka(d, o);
		return;
	}
	if (ok)
	{
		for (int i = 0; i < d->nrows; i++)
			outcome_written(o, d, i);
		return;
	}
	{
		char	   *error = describe_failure(req);

		/* every format: our credentials were refused, not the events */
		if (req->status == 401 || req->status == 403)
		{
			for (int i = 0; i < d->nrows; i++)
				outcome_refused(o, d, i, req->status, error);
			return;
		}
		/*
		 * v3: a 404 about the cluster is not about the events: retried; a
		 * discovered id is stale and asked for again
		 */
		if (req->status == 404 && d->ob->format == COURIER_FORMAT_KAFKA_REST_V3 &&
			strstr(error, "luster") != NULL)
		{
			if (d->ob->cluster_found != NULL)
				pfree(d->ob->cluster_found);
			d->ob->cluster_found = NULL;
			for (int i = 0; i < d->nrows; i++)
				outcome_fail(o, d, i, req->status, error, -1, false);
			return;
		}
		/* (413, a request too large: part W splits the batch here) */
		for (int i = 0; i < d->nrows; i++)
			outcome_fail(o, d, i, req->status, error, retry_after, !retriable_status(req->status));
	}
}

/*
 * rows_array
 *		SQL arrays of a row list, as the statements' parameters.
 */
static void
rows_arrays(const RowList *l, Datum *args)
{
	args[0] = PointerGetDatum(construct_array(l->ids, l->n, INT8OID, 8, true, TYPALIGN_DOUBLE));
	args[1] = PointerGetDatum(construct_array(l->status, l->n, INT4OID, 4, true, TYPALIGN_INT));
	args[2] = PointerGetDatum(construct_array(l->error, l->n, TEXTOID, -1, false, TYPALIGN_INT));
	args[3] = PointerGetDatum(construct_array(l->retry_after, l->n, INT8OID, 8, true, TYPALIGN_DOUBLE));
}

/* courier_make_plans, as a courier_run_as_owner callback */
static void
make_plans_call(void *arg)
{
	courier_make_plans((OutboxState *) arg);
}

/* Arguments of record_outcome, through courier_run_contained. */
typedef struct RecordCall
{
	OutboxState *ob;
	Outcome    *o;
} RecordCall;

/*
 * record_outcome
 *		Apply an outbox's outcomes: delete acknowledged rows, schedule
 *		retries, move dead rows.  Run contained, so that a problem with one
 *		outbox (dropped meanwhile, ...) does not undo the others.  Each
 *		statement runs as the outbox's owner, restricted, in a GUC nest level
 *		of its own (owner_exec.c): the owner's triggers fire there.
 */
static void
record_outcome(void *arg)
{
	OutboxState *ob = ((RecordCall *) arg)->ob;
	Outcome    *o = ((RecordCall *) arg)->o;

	/* the owner holds a lock on the table: do not wait for it (the rows are sent again) */
	if (!ConditionalLockRelationOid(ob->relid, RowExclusiveLock))
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("outbox %s is locked by another transaction", ob->qname)));
	/* so is a table all roles share (shared_tables.c): reported by the round */
	if (!courier_shared_tables_lock(false))
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("a pg_courier table is locked by another transaction")));
	/* (statements dropped after an error or a rename while requests were out) */
	if (ob->delete_plan == NULL)
		courier_run_as_owner(ob->owner, make_plans_call, ob);

	if (o->nok > 0)
	{
		Datum		ids = PointerGetDatum(construct_array(o->ok_ids, o->nok, INT8OID, 8, true, TYPALIGN_DOUBLE));

		int			rc = courier_owner_execute_plan(ob->owner, ob->delete_plan, &ids, NULL, false, 0);

		if (rc != SPI_OK_DELETE && rc != SPI_OK_INSERT)
			elog(ERROR, "could not delete delivered rows: %s", SPI_result_code_string(SPI_result));
	}
	if (o->retry.n > 0)
	{
		Datum		args[6];
		bool		isnull;

		rows_arrays(&o->retry, args);
		args[4] = Float8GetDatum(ob->retry_base_ms > 0 ? ob->retry_base_ms : courier_retry_base_ms);
		args[5] = Float8GetDatum(ob->retry_max_ms > 0 ? ob->retry_max_ms : courier_retry_max_ms);
		if (courier_owner_execute_plan(ob->owner, ob->fail_plan, args, NULL, false, 0) == SPI_OK_SELECT &&
			SPI_processed == 1)
		{
			Datum		next = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

			if (!isnull && (ob->retry_at == 0 || DatumGetTimestampTz(next) < ob->retry_at))
				ob->retry_at = DatumGetTimestampTz(next);
		}
	}
	if (o->dead.n > 0)
	{
		Datum		args[5];

		rows_arrays(&o->dead, args);
		args[3] = ObjectIdGetDatum(ob->relid);
		args[4] = BoolGetDatum(ob->block_on_dead);
		if (courier_owner_execute_plan(ob->owner, ob->dead_plan, args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not move rows to courier.dead_letters: %s", SPI_result_code_string(SPI_result));
	}
}

/*
 * release_delivery
 *		Forget a finished request: its rows and keys are no longer in flight.
 *		A key whose row failed now waits for that row's retry, its unsent
 *		later rows parked behind it; a key whose waited-for row went through
 *		(or to the dead letters) is free, and its parked rows may follow.
 */
static void
release_delivery(Delivery *d)
{
	OutboxState *ob = d->ob;

	for (int i = 0; i < d->nrows; i++)
	{
		uint32		kh = d->keyhashes[i];

		/* ('a': acknowledged, deletion not recorded: stays in flight, see above) */
		if (d->result[i] != 'a')
			hash_search(ob->inflight_ids, &d->ids[i], HASH_REMOVE, NULL);
		if (!d->haskey[i])
			continue;
		if (d->result[i] == 'r')
			courier_block_key(ob, kh, d->ids[i]);
		else if (d->result[i] == 'u')
		{
			/* back in its key's queue, behind the failed row (or read again) */
			if (!courier_park(ob, kh, d->ids[i]))
			{
				ob->rescan = true;
				ob->rescan_at = 0;
			}
		}
		else if (d->result[i] != 0)
			courier_unblock_key(ob, kh, d->ids[i]);
		if (!courier_key_unbusy(ob, kh) && !courier_key_blocked(ob, kh))
			courier_key_ready(ob, kh);
	}
	ob->inflight--;
	courier_http_release(d->req);
	MemoryContextDelete(d->cxt);
}

/*
 * add_acked
 *		Remember an acknowledged row whose deletion could not be recorded.
 */
static void
add_acked(OutboxState *ob, int64 id)
{
	if (ob->nacked == ob->acked_cap)
	{
		ob->acked_cap = Max(64, ob->acked_cap * 2);
		ob->acked = ob->acked == NULL
			? MemoryContextAlloc(ob->cxt, sizeof(int64) * ob->acked_cap)
			: repalloc(ob->acked, sizeof(int64) * ob->acked_cap);
	}
	ob->acked[ob->nacked++] = id;
}

/*
 * take_acked
 *		Put the remembered acknowledged rows first in o (room for them must
 *		have been made by outcome_init).
 */
static void
take_acked(OutboxState *ob, Outcome *o)
{
	for (int i = 0; i < ob->nacked; i++)
		o->ok_ids[o->nok++] = Int64GetDatum(ob->acked[i]);
}

/*
 * forget_acked
 *		Their deletion is recorded: they are no longer in flight.
 */
static void
forget_acked(OutboxState *ob)
{
	for (int i = 0; i < ob->nacked; i++)
		hash_search(ob->inflight_ids, &ob->acked[i], HASH_REMOVE, NULL);
	ob->nacked = 0;
}

/*
 * record_contained
 *		record_outcome for one outbox, contained: on success its remembered
 *		acknowledgements are forgotten; a failure is reported by the
 *		outbox's health (once, then retried with a backoff).
 */
static bool
record_contained(OutboxState *ob, Outcome *o)
{
	RecordCall	call = {ob, o};
	ErrorData  *error;
	int			remembered = ob->nacked;

	ob->acked_tried = GetCurrentTimestamp();
	if (courier_run_contained_quiet(record_outcome, &call, &error))
	{
		forget_acked(ob);
		courier_health_ok(ob, &ob->delivery, true);
		return true;
	}
	Assert(ob->nacked == remembered);
	(void) remembered;
	courier_health_failed(ob, &ob->delivery, error, true);
	return false;
}

/*
 * courier_record_acked
 *		Try again to record the acknowledgements that could not be recorded
 *		(the outbox was locked, ...): at most once a second, and as the
 *		outbox's health allows (a broken outbox waits for its next try).
 */
void
courier_record_acked(List *outboxes)
{
	ListCell   *lc;
	TimestampTz now = GetCurrentTimestamp();
	bool		started = false;

	foreach(lc, outboxes)
	{
		OutboxState *ob = lfirst(lc);
		Outcome		o;

		if (ob->nacked == 0 || !TimestampDifferenceExceeds(ob->acked_tried, now, 1000) ||
			courier_health_resting(&ob->delivery, now))
			continue;
		if (!started)
		{
			SetCurrentStatementStartTimestamp();
			StartTransactionCommand();
			SPI_connect();
			PushActiveSnapshot(GetTransactionSnapshot());
			started = true;
		}
		outcome_init(&o, ob->nacked);
		take_acked(ob, &o);
		(void) record_contained(ob, &o);
	}
	if (started)
	{
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
}

static int
by_outbox(const ListCell *a, const ListCell *b)
{
	uintptr_t	x = (uintptr_t) ((Delivery *) lfirst(a))->ob;
	uintptr_t	y = (uintptr_t) ((Delivery *) lfirst(b))->ob;

	return (x > y) - (x < y);
}

/*
 * courier_complete
 *		Record the outcome of finished requests (one transaction for all).
 */
void
courier_complete(List *finished)
{
	ListCell   *lc;
	MemoryContext work;
	MemoryContext old;

	if (finished == NIL)
		return;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	work = AllocSetContextCreate(TopTransactionContext, "pg_courier complete", ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(work);

	/* one statement of each kind per outbox, for all its finished requests */
	list_sort(finished, by_outbox);
	for (int i = 0; i < list_length(finished);)
	{
		OutboxState *ob = ((Delivery *) list_nth(finished, i))->ob;
		int			end = i;
		int			rows = 0;
		Outcome		o;

		int			first = i;

		while (end < list_length(finished) && ((Delivery *) list_nth(finished, end))->ob == ob)
			rows += ((Delivery *) list_nth(finished, end++))->nrows;
		outcome_init(&o, rows + ob->nacked);
		take_acked(ob, &o);
		for (; i < end; i++)
		{
			Delivery   *d = list_nth(finished, i);
			int			nok = o.nok,
						nretry = o.retry.n,
						ndead = o.dead.n;
			bool		failed;

			o.first_error = NULL;
			o.refused = false;
			o.failed_requests = 0;
			o.stopped_keys = NULL;	/* (runs are per request) */
			if (courier_split_wanted(d))
				courier_split_delivery(d);	/* (its rows go on in two halves) */
			else
				classify(d, &o);
			courier_counters_record(ob->counters, o.nok - nok, o.retry.n - nretry + o.failed_requests,
									o.dead.n - ndead, o.first_error);
			failed = endpoint_failure(ob, d->req);	/* (first: a Retry-After holds the origin) */
			courier_breaker_record(ob->breaker, !o.refused && !failed, d->probe);
		}
		if (!record_contained(ob, &o))
		{
			/*
			 * Nothing was written.  Acknowledged rows are remembered ('a':
			 * never sent again, their deletion retried); the other outcomes
			 * are forgotten (keys are neither blocked nor unblocked by them)
			 * and those rows read again.
			 */
			for (int j = first; j < end; j++)
			{
				Delivery   *d = list_nth(finished, j);

				for (int k = 0; k < d->nrows; k++)
				{
					d->result[k] = d->result[k] == 'o' ? 'a' : 0;
					if (d->result[k] == 'a')
						add_acked(ob, d->ids[k]);
				}
			}
			ob->rescan = true;
			ob->rescan_at = 0;
		}
		/* the next parts of split batches, now that these outcomes are known */
		for (int j = first; j < end; j++)
			courier_split_continue(list_nth(finished, j));
	}

	MemoryContextSwitchTo(old);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();

	foreach(lc, finished)
		release_delivery(lfirst(lc));
}
