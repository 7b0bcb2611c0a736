/*-------------------------------------------------------------------------
 *
 * outbox_request.c
 *	  One HTTP request and the rows it carries: made empty, filled row by
 *	  row in the outbox's wire format (a key's rows in id order), closed and
 *	  handed to libcurl.  Which rows go into which request is decided by
 *	  the dispatch (outbox_delivery.c); what happens when it finishes, by
 *	  outbox_complete.c and outbox_split.c.
 *
 * Memory.  Each request lives in its own memory context, deleted when its
 * outcome is recorded: bodies and per-row arrays never outlive it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/memutils.h"

#include "pg_courier.h"
#include "outbox_worker.h"

/* room kept in Delivery.extra for the signature headers */
#define SIGNING_HEADERS		3

/*
 * courier_delivery_new
 *		An empty request for up to maxrows rows, in its own memory context.
 */
Delivery *
courier_delivery_new(OutboxState *ob, int maxrows, const char *topic)
{
	MemoryContext cxt = AllocSetContextCreate(courier_worker_context, "pg_courier delivery",
											  ALLOCSET_DEFAULT_SIZES);
	Delivery   *d = MemoryContextAllocZero(cxt, sizeof(Delivery));

	d->ob = ob;
	d->cxt = cxt;
	d->maxrows = maxrows;
	d->ids = MemoryContextAlloc(cxt, sizeof(int64) * maxrows);
	d->attempts = MemoryContextAlloc(cxt, sizeof(int) * maxrows);
	d->result = MemoryContextAllocZero(cxt, maxrows);
	d->keyhashes = MemoryContextAlloc(cxt, sizeof(uint32) * maxrows);
	d->haskey = MemoryContextAlloc(cxt, sizeof(bool) * maxrows);
	d->span_start = MemoryContextAlloc(cxt, sizeof(int) * maxrows);
	d->span_end = MemoryContextAlloc(cxt, sizeof(int) * maxrows);
	d->event_ids = MemoryContextAlloc(cxt, sizeof(char *) * maxrows);
	d->topic = topic ? MemoryContextStrdup(cxt, topic) : NULL;
	d->extra = MemoryContextAllocZero(cxt, sizeof(char *) * 96);
	for (int i = 0; i < ob->nstatic_headers; i++)
		d->extra[d->nextra++] = ob->static_headers[i];
	d->body.data = NULL;
	return d;
}

/*
 * courier_delivery_add
 *		Put one row into a request and mark it (and its key) in flight.
 */
void
courier_delivery_add(Delivery *d, const OutboxRow *r, uint32 keyhash)
{
	OutboxState *ob = d->ob;
	MemoryContext old = MemoryContextSwitchTo(d->cxt);

	if (d->body.data == NULL)
	{
		initStringInfo(&d->body);
		if (ob->format == COURIER_FORMAT_KAFKA_REST_V2)
			appendStringInfoString(&d->body, "{\"records\":[");
		else if (ob->format == COURIER_FORMAT_KAFKA_REST_V3)
			appendStringInfoString(&d->body, "{\"entries\":[");
		else if (ob->ce_batch)
			appendStringInfoChar(&d->body, '[');
	}
	else
		appendStringInfoChar(&d->body, ',');

	d->span_start[d->nrows] = d->body.len;
	if (ob->format == COURIER_FORMAT_KAFKA_REST_V2)
		courier_format_kafka_record(&d->body, ob, r);
	else if (ob->format == COURIER_FORMAT_KAFKA_REST_V3)
		courier_format_kafka_v3_entry(&d->body, ob, r, d->nrows);
	else
		courier_format_cloudevent(&d->body, ob, r);
	d->span_end[d->nrows] = d->body.len;
	d->event_ids[d->nrows] = pstrdup(r->event_id);

	if (!OB_BATCHED(ob))
	{
		/* one event per request: the event id and the row's own headers travel as HTTP headers */
		d->extra[d->nextra++] = psprintf("Idempotency-Key: \"%s\"", r->event_id);
		if (r->headers)
		{
			char	   *save;
			char	   *line;

			for (line = strtok_r(pstrdup(r->headers), "\n", &save); line && d->nextra < 96 - SIGNING_HEADERS;
				 line = strtok_r(NULL, "\n", &save))
				d->extra[d->nextra++] = line;
		}
	}
	if (d->nrows == 0)
		d->webhook_id = pstrdup(r->event_id);
	MemoryContextSwitchTo(old);

	d->ids[d->nrows] = r->id;
	d->attempts[d->nrows] = r->attempts;
	d->keyhashes[d->nrows] = keyhash;
	d->haskey[d->nrows] = (r->key != NULL);
	d->nrows++;

	hash_search(ob->inflight_ids, &r->id, HASH_ENTER, NULL);
	if (r->key)
		courier_key_busy(ob, keyhash);
}

/*
 * courier_delivery_start
 *		Close the body and hand the request to libcurl.
 */
void
courier_delivery_start(Delivery *d)
{
	OutboxState *ob = d->ob;
	CourierHttpOptions o = {0};
	MemoryContext old = MemoryContextSwitchTo(d->cxt);

	if (d->discovery)
	{
		d->url = courier_kafka_url(ob->endpoint, "/v3/clusters");
		o.get = true;
		o.accept = "application/json";
	}
	else if (ob->format == COURIER_FORMAT_KAFKA_REST_V2)
	{
		appendStringInfoString(&d->body, "]}");
		d->url = courier_kafka_url(ob->endpoint, psprintf("/topics/%s", d->topic));
		o.content_type = ob->kafka_binary ? "application/vnd.kafka.binary.v2+json" : "application/vnd.kafka.json.v2+json";
		o.accept = "application/vnd.kafka.v2+json";
	}
	else if (ob->format == COURIER_FORMAT_KAFKA_REST_V3)
	{
		appendStringInfoString(&d->body, "]}");
		d->url = courier_kafka_v3_url(ob, d->topic);
		o.content_type = "application/json";
		o.accept = "application/json";
	}
	else
	{
		if (ob->ce_batch)
			appendStringInfoChar(&d->body, ']');
		d->url = ob->endpoint;
		o.content_type = ob->ce_batch ? "application/cloudevents-batch+json" : "application/cloudevents+json";
		/* a CloudEvents answer is only ever quoted in an error: keep no more than that needs */
		o.max_response = COURIER_HTTP_EXCERPT_RESPONSE;
	}
	/*
	 * Standard Webhooks: the message id is the event's, or for a batch one
	 * made of its first event's id and its size (the same batch retried
	 * keeps it).
	 */
	if (ob->nsigning_keys > 0)
	{
		if (d->nrows > 1)
			d->webhook_id = psprintf("batch_%s_%d", d->webhook_id, d->nrows);
		d->nextra += courier_signing_headers(ob, d->webhook_id, d->body.data, d->body.len,
											 d->extra + d->nextra);
	}
	MemoryContextSwitchTo(old);
	/* (the endpoint was checked when registered: libcurl parses it as it did then) */
	if (d->url == NULL)
		d->url = ob->endpoint;

	o.url = d->url;
	o.body = d->body.data;
	o.body_len = d->body.len;
	o.extra_headers = d->extra;
	o.nextra = d->nextra;
	o.timeout_ms = OB_TIMEOUT(ob);
	o.tls_verify = ob->tls_verify;
	o.ca_file = courier_ca_file;
	d->req = courier_http_post(&o, d);
	d->started = true;
	ob->inflight++;
	/* put it on the wire now: the endpoint works on it while we prepare the next */
	(void) courier_http_poll(0);
}

/*
 * too_large_with
 *		Would the row make the request's body larger than the outbox's
 *		max_request_bytes?  Estimated from above: the row's texts (a key
 *		twice: subject and partitionkey; escapes may double them) and the
 *		fixed attributes.
 */
static bool
too_large_with(const Delivery *d, const OutboxRow *r)
{
	size_t		row = strlen(r->payload) + 2 * (strlen(r->topic) + strlen(d->ob->source)) + 256;

	if (r->key)
		row += 4 * strlen(r->key);
	return d->body.data != NULL && (size_t) d->body.len + row > (size_t) OB_MAX_REQUEST(d->ob);
}

/*
 * courier_delivery_has_room
 *		Can row r go into the open request d?  Kafka requests carry one
 *		topic; a request stops at batch_size rows and max_request_bytes.
 */
bool
courier_delivery_has_room(const Delivery *d, const OutboxRow *r)
{
	if (d->started)
		return false;
	if (COURIER_FORMAT_IS_KAFKA(d->ob->format) && strcmp(d->topic, r->topic) != 0)
		return false;
	return d->nrows < d->maxrows && !too_large_with(d, r);
}

/*
 * courier_open_delivery_for
 *		The request a row goes into: the open one of its lane (same topic
 *		for Kafka) if it has room, or a new one if the in-flight budget
 *		allows; a full one is started on the way.  Returns NULL when the
 *		budget is exhausted.
 */
Delivery *
courier_open_delivery_for(OutboxState *ob, List **open, const OutboxRow *r, int lane, int *budget)
{
	ListCell   *lc;
	Delivery   *d;
	bool		kafka = COURIER_FORMAT_IS_KAFKA(ob->format);

	foreach(lc, *open)
	{
		d = lfirst(lc);
		if (d->lane != lane || (kafka && strcmp(d->topic, r->topic) != 0))
			continue;
		if (courier_delivery_has_room(d, r))
			return d;
		/* full (events or bytes): send it now and open another below */
		courier_delivery_start(d);
		*open = foreach_delete_current(*open, lc);
		break;
	}
	if (*budget <= 0)
		return NULL;
	(*budget)--;
	d = courier_delivery_new(ob, OB_BATCHED(ob) ? OB_BATCH(ob) : 1, kafka ? r->topic : NULL);
	d->lane = lane;
	*open = lappend(*open, d);
	return d;
}
