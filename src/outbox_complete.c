/*-------------------------------------------------------------------------
 *
 * outbox_complete.c
 *	  What happens when a request finishes: acknowledged rows are deleted,
 *	  the others get their failure recorded and a retry time.
 *
 * At least once.  A row is deleted only after the endpoint acknowledged it
 * (any 2xx; for Kafka REST, a null error_code in its offsets entry).  The
 * deletes commit asynchronously (synchronous_commit = off in the worker): a
 * crash can forget an acknowledgement and the row is sent again, with the
 * same event id, but a row is never removed without one.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"

#include "pg_courier.h"
#include "outbox_worker.h"

/* Outcome of one request, row by row. */
typedef struct Outcome
{
	int			nok;
	int			nfail;
	Datum	   *ok_ids;
	Datum	   *fail_ids;
	Datum	   *fail_status;
	Datum	   *fail_error;
	Datum	   *fail_retry_after;
	const char *first_error;
} Outcome;

/*
 * describe_failure
 *		Text recorded on failed rows: status and the start of the answer.
 *		Never includes request headers (credentials live there).
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
		int			n = Min(req->response.len, 200);

		appendStringInfoString(&s, ": ");
		for (int i = 0; i < n; i++)
		{
			char		c = req->response.data[i];

			/* printable ASCII only: the answer's encoding is unknown */
			appendStringInfoChar(&s, (c >= 0x20 && c < 0x7f) ? c : ' ');
		}
	}
	return s.data;
}

static void
outcome_fail(Outcome *o, int64 id, long status, const char *error, long retry_after_ms)
{
	o->fail_ids[o->nfail] = Int64GetDatum(id);
	o->fail_status[o->nfail] = Int32GetDatum((int32) status);
	o->fail_error[o->nfail] = CStringGetTextDatum(error);
	o->fail_retry_after[o->nfail] = Int64GetDatum(retry_after_ms);
	o->nfail++;
	if (o->first_error == NULL)
		o->first_error = error;
}

/*
 * classify
 *		Turn a finished request into per-row outcomes.
 */
static void
classify(const Delivery *d, Outcome *o)
{
	const CourierHttpRequest *req = d->req;
	bool		ok = (req->status >= 200 && req->status < 300);
	long		retry_after = (req->status == 429 || req->status == 503) ? req->retry_after_ms : -1;

	o->ok_ids = palloc(sizeof(Datum) * d->nrows);
	o->fail_ids = palloc(sizeof(Datum) * d->nrows);
	o->fail_status = palloc(sizeof(Datum) * d->nrows);
	o->fail_error = palloc(sizeof(Datum) * d->nrows);
	o->fail_retry_after = palloc(sizeof(Datum) * d->nrows);

	if (ok && d->ob->format == COURIER_FORMAT_KAFKA_REST_V2)
	{
		int		   *codes = palloc(sizeof(int) * d->nrows);
		char		err[200];

		if (!courier_parse_kafka_offsets(req->response.data, req->response.len, d->nrows, codes,
										 err, sizeof(err)))
		{
			for (int i = 0; i < d->nrows; i++)
				outcome_fail(o, d->ids[i], req->status, err, -1);
			return;
		}
		for (int i = 0; i < d->nrows; i++)
		{
			if (codes[i] == 0)
				o->ok_ids[o->nok++] = Int64GetDatum(d->ids[i]);
			else
				outcome_fail(o, d->ids[i], req->status,
							 psprintf("Kafka error_code %d%s%s", codes[i], err[0] ? ": " : "", err), -1);
		}
		return;
	}
	if (ok)
	{
		for (int i = 0; i < d->nrows; i++)
			o->ok_ids[o->nok++] = Int64GetDatum(d->ids[i]);
		return;
	}
	{
		char	   *error = describe_failure(req);

		for (int i = 0; i < d->nrows; i++)
			outcome_fail(o, d->ids[i], req->status, error, retry_after);
	}
}

/*
 * record_outcome
 *		Apply one request's outcome to its outbox, in a subtransaction so
 *		that a problem with one outbox (dropped meanwhile, ...) does not
 *		undo the others.
 */
static void
record_outcome(Delivery *d, Outcome *o)
{
	OutboxState *ob = d->ob;
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		if (o->nok > 0)
		{
			Datum		arg = PointerGetDatum(construct_array(o->ok_ids, o->nok, INT8OID, 8, true, TYPALIGN_DOUBLE));

			if (SPI_execute_plan(ob->delete_plan, &arg, NULL, false, 0) != SPI_OK_DELETE)
				elog(ERROR, "could not delete delivered rows: %s", SPI_result_code_string(SPI_result));
		}
		if (o->nfail > 0)
		{
			Datum		args[4];
			bool		isnull;

			args[0] = PointerGetDatum(construct_array(o->fail_ids, o->nfail, INT8OID, 8, true, TYPALIGN_DOUBLE));
			args[1] = PointerGetDatum(construct_array(o->fail_status, o->nfail, INT4OID, 4, true, TYPALIGN_INT));
			args[2] = PointerGetDatum(construct_array(o->fail_error, o->nfail, TEXTOID, -1, false, TYPALIGN_INT));
			args[3] = PointerGetDatum(construct_array(o->fail_retry_after, o->nfail, INT8OID, 8, true, TYPALIGN_DOUBLE));
			if (SPI_execute_plan(ob->fail_plan, args, NULL, false, 0) == SPI_OK_SELECT && SPI_processed == 1)
			{
				Datum		next = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

				if (!isnull && (ob->retry_at == 0 || DatumGetTimestampTz(next) < ob->retry_at))
					ob->retry_at = DatumGetTimestampTz(next);
			}
		}
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		ereport(WARNING,
				(errmsg("pg_courier: could not record delivery results for outbox %s: %s",
						ob->qname, edata->message),
				 errdetail("The rows stay pending and will be sent again.")));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
}

/*
 * release_delivery
 *		Forget a finished request: its rows and keys are no longer in flight.
 */
static void
release_delivery(Delivery *d)
{
	OutboxState *ob = d->ob;

	for (int i = 0; i < d->nrows; i++)
	{
		hash_search(ob->inflight_ids, &d->ids[i], HASH_REMOVE, NULL);
		if (d->haskey[i])
		{
			int		   *count = hash_search(ob->busy_keys, &d->keyhashes[i], HASH_FIND, NULL);

			if (count && --count[1] <= 0)
				hash_search(ob->busy_keys, &d->keyhashes[i], HASH_REMOVE, NULL);
		}
	}
	ob->inflight--;
	/* rows that waited behind an earlier failure of their key can move now */
	if (d->retried && d->nfailed < d->nrows)
	{
		ob->rescan = true;
		ob->rescan_at = 0;
	}
	courier_http_release(d->req);
	MemoryContextDelete(d->cxt);
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

	foreach(lc, finished)
	{
		Delivery   *d = lfirst(lc);
		Outcome		o = {0};

		classify(d, &o);
		if (d->ob->delete_plan != NULL)
			record_outcome(d, &o);
		d->nfailed = o.nfail;
		courier_counters_record(d->ob->counters, o.nok, o.nfail, o.first_error);
		if (o.nfail > 0 && d->ob->counters == NULL)
			elog(LOG, "pg_courier: delivery to %s failed: %s", d->ob->endpoint_shown, o.first_error);
	}

	MemoryContextSwitchTo(old);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();

	foreach(lc, finished)
	{
		release_delivery(lfirst(lc));
	}
}
