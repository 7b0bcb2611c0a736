/*-------------------------------------------------------------------------
 *
 * outbox_health.c
 *	  Whether an outbox works, said once.  Two parts of an outbox's work
 *	  have a health each (OutboxHealth): its delivery (preparing and running
 *	  its statements) and its maintenance (the retention purge).
 *
 * A failure marks the part failing, logs one WARNING naming the outbox and
 * the reason, publishes status and reason in the shared counters (shown by
 * courier.outbox_stats and courier.metrics()), and retries after a backoff
 * that starts at a minute and doubles up to ten.  The first success after
 * that logs one LOG line.  A change of the table (relcache invalidation) or
 * of its registration (noticed by the catalog refresh) retries at once: the
 * owner probably just fixed it.  Meanwhile the outbox's events wait in its
 * table; the other outboxes are not affected.
 *
 * Not every error means broken.  A serialization failure, a deadlock or a
 * lock timeout is retried after a second without a word, once; a failure
 * because the table was just dropped is not reported (the catalog refresh
 * forgets the outbox).
 *
 * Why not log every failure: a renamed column made the worker write
 * hundreds of WARNING lines per second, which hides everything else in the
 * log and costs the whole cluster.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/inval.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "pg_courier.h"
#include "outbox_worker.h"
#include "outbox_shape.h"

#define HEALTH_FIRST_BACKOFF_MS		(60 * 1000)
#define HEALTH_MAX_BACKOFF_MS		(10 * 60 * 1000)
#define HEALTH_TRANSIENT_RETRY_MS	1000

/* The worker's list of outboxes, for the invalidation callback. */
static List **watched = NULL;

/*
 * relation_changed
 *		Relcache invalidation callback: an outbox whose table changed gets
 *		its statements prepared again (so that a column dropped under a
 *		statement that has not run yet is found now, not when it runs), and
 *		a failing one is retried at once.  (Only sets fields: it may run at any point where
 *		invalidations are processed.)
 */
static void
relation_changed(Datum arg, Oid relid)
{
	ListCell   *lc;

	if (watched == NULL)
		return;
	foreach(lc, *watched)
	{
		OutboxState *ob = lfirst(lc);

		if (relid == InvalidOid || relid == ob->relid)
		{
			ob->plans_stale = true;
			ob->shape_checked = false;
			ob->delivery.retry_at = 0;
			ob->maintenance.retry_at = 0;
		}
	}
}

/*
 * courier_health_watch
 *		Retry failing outboxes when their tables change (called once by the
 *		worker, with its list of outboxes).
 */
void
courier_health_watch(List **outboxes)
{
	if (watched == NULL)
		CacheRegisterRelcacheCallback(relation_changed, (Datum) 0);
	watched = outboxes;
}

/*
 * courier_health_resting
 *		Is the part waiting for its next try?
 */
bool
courier_health_resting(const OutboxHealth *h, TimestampTz now)
{
	return h->retry_at != 0 && now < h->retry_at;
}

/*
 * publish
 *		The outbox's status as courier.outbox_stats shows it: broken when
 *		delivery fails, degraded when only maintenance does.
 */
static void
publish(OutboxState *ob)
{
	if (ob->delivery.failing)
		courier_counters_set_status(ob->counters, COURIER_STATUS_BROKEN, ob->delivery.reason,
									ob->delivery.since);
	else if (ob->maintenance.failing)
		courier_counters_set_status(ob->counters, COURIER_STATUS_DEGRADED, ob->maintenance.reason,
									ob->maintenance.since);
	else
		courier_counters_set_status(ob->counters, COURIER_STATUS_OK, NULL, 0);
}

/*
 * set_reason
 *		Keep a reason, cut to the buffer on a character boundary, with
 *		control characters made spaces: it may quote an owner's own error
 *		message, and goes into the server log as one line.
 */
static void
set_reason(OutboxHealth *h, const char *reason)
{
	int			len = pg_mbcliplen(reason, strlen(reason), sizeof(h->reason) - 1);

	memcpy(h->reason, reason, len);
	h->reason[len] = '\0';
	for (int i = 0; i < len; i++)
		if ((unsigned char) h->reason[i] < 0x20 || h->reason[i] == 0x7f)
			h->reason[i] = ' ';
}

/*
 * courier_health_problem
 *		The part does not work, for the given reason.  The first time, say so
 *		(one WARNING); after that only the backoff grows.
 */
void
courier_health_problem(OutboxState *ob, OutboxHealth *h, const char *reason)
{
	TimestampTz now = GetCurrentTimestamp();
	bool		delivery = (h == &ob->delivery);

	if (!h->failing)
	{
		h->failing = true;
		h->since = now;
		h->backoff_ms = HEALTH_FIRST_BACKOFF_MS;
		h->signature = 0;
		h->writes_failed = false;
		set_reason(h, reason);
		ereport(WARNING,
				(errmsg(delivery ? "pg_courier: outbox %s is broken: %s"
						: "pg_courier: maintenance of outbox %s fails: %s", ob->qname, h->reason),
				 delivery ? errdetail("Its events wait in the table. The worker tries again in %d seconds "
									  "(then less and less often), and at once when the table or its "
									  "registration changes.", h->backoff_ms / 1000)
				 : errdetail("Its delivered events are kept past their retention. The worker tries again "
							 "in %d seconds (then less and less often), and at once when the table or "
							 "its registration changes.", h->backoff_ms / 1000),
				 errhint("courier.outbox_stats shows the status and the reason until it works again.")));
	}
	else
	{
		/* (several failures of one try, e.g. of requests already out, count once) */
		if (h->retry_at == 0 || now >= h->retry_at)
			h->backoff_ms = Min(h->backoff_ms * 2, HEALTH_MAX_BACKOFF_MS);
		set_reason(h, reason);
	}
	h->failures++;
	h->retry_at = TimestampTzPlusMilliseconds(now, h->backoff_ms);
	publish(ob);
}

/*
 * courier_health_failed
 *		The part failed with this error (caught by the caller, inside the
 *		transaction); writing: while recording delivery results.  Transient
 *		errors and a table that is gone are not a broken outbox.
 */
void
courier_health_failed(OutboxState *ob, OutboxHealth *h, const ErrorData *error, bool writing)
{
	int			code = error->sqlerrcode;
	bool		transient = (ERRCODE_TO_CATEGORY(code) == ERRCODE_TRANSACTION_ROLLBACK ||
							 code == ERRCODE_LOCK_NOT_AVAILABLE || code == ERRCODE_QUERY_CANCELED);

	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(ob->relid)) ||
		(transient && h->failures == 0 && !h->failing))
	{
		if (transient)
			h->failures++;
		h->retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), HEALTH_TRANSIENT_RETRY_MS);
		ereport(DEBUG1, (errmsg("pg_courier: outbox %s: %s (trying again)", ob->qname, error->message)));
		return;
	}
	courier_health_problem(ob, h, h == &ob->maintenance ?
						   psprintf("retention purge failed: %s", error->message) : error->message);
	h->writes_failed |= writing;
}

/*
 * courier_health_ok
 *		The part just worked (writing: results were recorded).  If it was
 *		failing, say that it works again (one LOG line) -- unless it broke
 *		recording results and only a read worked: the next request's
 *		results will tell.
 */
void
courier_health_ok(OutboxState *ob, OutboxHealth *h, bool writing)
{
	if (h->failing && h->writes_failed && !writing)
		return;
	if (h->failing)
		ereport(LOG,
				(errmsg(h == &ob->delivery ? "pg_courier: outbox %s works again (broken since %s)"
						: "pg_courier: maintenance of outbox %s works again (failing since %s)",
						ob->qname, timestamptz_to_str(h->since))));
	h->failures = 0;
	h->retry_at = 0;
	if (h->failing)
	{
		h->failing = false;
		h->writes_failed = false;
		h->reason[0] = '\0';
		publish(ob);
	}
}

/*
 * registration_signature
 *		A hash of the outbox's row as the catalog refresh read it (settings,
 *		qualified name, owner): a change means someone acted on the outbox.
 */
static uint32
registration_signature(HeapTuple tup, TupleDesc desc)
{
	uint32		h = 0;

	for (int i = 1; i <= desc->natts; i++)
	{
		char	   *v = SPI_getvalue(tup, desc, i);

		h = hash_combine(h, v ? hash_bytes((const unsigned char *) v, strlen(v)) : 0x9e3779b9);
	}
	return h | 1;
}

/*
 * outbox_shape_problem
 *		What is wrong with the outbox's table (outbox_shape.c), or NULL.  The
 *		catalog check runs again only after the table changed (relcache
 *		invalidation resets shape_checked): the refresh runs often.
 */
static const char *
outbox_shape_problem(OutboxState *ob)
{
	if (!ob->shape_checked)
	{
		const char *problem = courier_outbox_shape_problem(ob->relid);

		strlcpy(ob->shape_reason, problem ? problem : "", sizeof(ob->shape_reason));
		ob->shape_checked = true;
	}
	return ob->shape_reason[0] ? ob->shape_reason : NULL;
}

/*
 * courier_health_refreshed
 *		Called by the catalog refresh for every registered outbox, with its
 *		row: checks the table's shape (a broken one is not dispatched at
 *		all), and retries a failing outbox at once when its registration
 *		changed since it broke.
 */
void
courier_health_refreshed(OutboxState *ob, HeapTuple tup, TupleDesc desc)
{
	const char *problem = outbox_shape_problem(ob);
	bool		had_problem = ob->shape_problem;
	uint32		signature;

	ob->shape_problem = (problem != NULL);
	if (problem && !(ob->delivery.failing && strncmp(ob->delivery.reason, problem, sizeof(ob->delivery.reason) - 1) == 0))
		courier_health_problem(ob, &ob->delivery, problem);
	if (had_problem && !problem)
		ob->delivery.retry_at = 0;
	if (!ob->delivery.failing && !ob->maintenance.failing)
		return;
	signature = registration_signature(tup, desc);
	if (ob->delivery.signature != 0 && ob->delivery.signature != signature)
	{
		ob->delivery.retry_at = 0;
		ob->maintenance.retry_at = 0;
	}
	ob->delivery.signature = signature;
}
