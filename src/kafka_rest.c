/*-------------------------------------------------------------------------
 *
 * kafka_rest.c
 *	  Kafka REST Proxy: what v2 and v3 share (topic names, URLs, the meaning
 *	  of error codes) and v2's produce records and answer.
 *
 * Two real proxies speak v2, and answer a produce request differently:
 *	- Confluent's REST Proxy answers one offsets entry per record, in order,
 *	  with a per-record error_code (50003 retriable, 50002 not retriable,
 *	  40101 / 40301 authentication / authorization; very old proxies used 2
 *	  and 1);
 *	- Redpanda's HTTP Proxy answers one entry per *partition* written.
 * So a 200 whose entries carry no error code means every record was
 * written, whatever the number of entries: sending them again would write
 * them twice.
 *
 * Answers are parsed with PostgreSQL's JSON parser, which reports malformed
 * input as a return code instead of throwing: a bad answer is a failed
 * delivery, never an error in the worker.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "common/base64.h"
#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "utils/json.h"

#include "compat.h"
#include "pg_courier.h"
#include "outbox_worker.h"

/*
 * courier_valid_kafka_topic
 *		Kafka's topic name rule: 1 to 249 of [a-zA-Z0-9._-], and neither "."
 *		nor ".." (Kafka refuses them; in a URL they are path steps).
 */
bool
courier_valid_kafka_topic(const char *topic)
{
	size_t		n = strlen(topic);

	if (n == 0 || n > 249 || strcmp(topic, ".") == 0 || strcmp(topic, "..") == 0)
		return false;
	return strspn(topic, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

/*
 * courier_kafka_url
 *		The endpoint with suffix appended to its path ("/topics/orders"),
 *		before any query string, without doubling a trailing slash.  The
 *		suffix is made of topic names and cluster ids, whose characters need
 *		no percent-encoding.  NULL when the endpoint does not parse (it was
 *		checked when registered; libcurl's answer is final).
 */
char *
courier_kafka_url(const char *endpoint, const char *suffix)
{
	CURLU	   *u = curl_url();
	char	   *path = NULL;
	char	   *url = NULL;
	char	   *result = NULL;

	if (u != NULL && curl_url_set(u, CURLUPART_URL, endpoint, 0) == CURLUE_OK &&
		curl_url_get(u, CURLUPART_PATH, &path, 0) == CURLUE_OK)
	{
		size_t		n = strlen(path);
		char	   *joined;

		while (n > 0 && path[n - 1] == '/')
			n--;
		joined = psprintf("%.*s%s", (int) n, path, suffix);
		if (curl_url_set(u, CURLUPART_PATH, joined, 0) == CURLUE_OK &&
			curl_url_get(u, CURLUPART_URL, &url, 0) == CURLUE_OK)
			result = pstrdup(url);
	}
	curl_free(path);
	curl_free(url);
	curl_url_cleanup(u);
	return result;
}

/*
 * courier_kafka_class
 *		What a Kafka REST error code (per record in v2's offsets, per entry
 *		in v3's failures) asks of us.  The five-digit codes begin with the
 *		HTTP status they belong to (40401: 404, topic not found), which
 *		decides when the code has no meaning of its own: 4xx permanent
 *		(except 408, 425, 429), 5xx retriable.
 */
CourierKafkaClass
courier_kafka_class(int code)
{
	int			status;

	switch (code)
	{
		case 0:
			return COURIER_KAFKA_WRITTEN;
		case 1:					/* old proxies' non-retriable */
		case 50002:				/* non-retriable Kafka error (RecordTooLarge, ...) */
			return COURIER_KAFKA_PERMANENT;
		case 2:					/* old proxies' retriable */
		case 50003:				/* RetriableException */
			return COURIER_KAFKA_RETRY;
		case 401:
		case 403:
		case 40101:				/* authentication */
		case 40301:				/* authorization */
			return COURIER_KAFKA_REFUSED;
	}
	status = code >= 10000 ? code / 100 : code;
	if (status >= 400 && status < 500 && status != 408 && status != 425 && status != 429)
		return COURIER_KAFKA_PERMANENT;
	return COURIER_KAFKA_RETRY;
}

/*
 * courier_append_base64
 *		Append the base64 text of len bytes, as a JSON string.
 */
void
courier_append_base64(StringInfo buf, const char *data, int len)
{
	int			cap = pg_b64_enc_len(len) + 1;
	int			n;

	appendStringInfoChar(buf, '"');
	enlargeStringInfo(buf, cap);
	n = courier_b64_encode(data, len, buf->data + buf->len, cap);
	if (n < 0)
		elog(ERROR, "pg_courier: could not encode %d bytes as base64", len);
	buf->len += n;
	buf->data[buf->len] = '\0';
	appendStringInfoChar(buf, '"');
}

/*
 * courier_format_kafka_record
 *		Append one record of a Kafka REST v2 produce request.  The value is
 *		the CloudEvent (Kafka protocol binding, structured mode) so that the
 *		event id travels with it, unless the outbox asks for raw payloads.
 *		With embedded_format 'json' key and value are JSON values (the proxy
 *		writes the key as JSON: "order-42" with its quotes); with 'binary'
 *		they are base64 of their bytes, so the key reaches Kafka as itself.
 */
void
courier_format_kafka_record(StringInfo buf, const OutboxState *ob, const OutboxRow *r)
{
	StringInfoData value;

	appendStringInfoString(buf, "{\"key\":");
	if (r->key == NULL)
		appendStringInfoString(buf, "null");
	else if (ob->kafka_binary)
		courier_append_base64(buf, r->key, strlen(r->key));
	else
		escape_json(buf, r->key);
	appendStringInfoString(buf, ",\"value\":");
	if (!ob->kafka_binary)
	{
		if (ob->kafka_envelope)
			courier_format_cloudevent(buf, ob, r);
		else
			appendStringInfoString(buf, r->payload);
	}
	else
	{
		initStringInfo(&value);
		if (ob->kafka_envelope)
			courier_format_cloudevent(&value, ob, r);
		else
			appendStringInfoString(&value, r->payload);
		courier_append_base64(buf, value.data, value.len);
		pfree(value.data);
	}
	appendStringInfoChar(buf, '}');
}

/* (JSON semantic callbacks: COURIER_JSON_CB_TYPE / _RETURN, compat.h) */
#define JSON_CB_TYPE COURIER_JSON_CB_TYPE
#define JSON_CB_RETURN COURIER_JSON_CB_RETURN

/* Parser state for {"offsets":[{"partition":..,"error_code":..,"error":..}, ...]} */
typedef struct OffsetsParse
{
	int			depth;
	bool		in_offsets;		/* inside the top-level "offsets" array */
	int			index;			/* current element of offsets */
	const char *field;			/* current field name inside an element */
	int			nrecords;
	int		   *codes;
	int			seen;
	int			error_fields;	/* entries with an "error" field (Confluent's always have one) */
	int			first_error;	/* the first non-zero error_code, 0: none */
	char	   *errbuf;
	int			errlen;
} OffsetsParse;

static JSON_CB_TYPE
op_object_start(void *state)
{
	((OffsetsParse *) state)->depth++;
	JSON_CB_RETURN;
}

static JSON_CB_TYPE
op_object_end(void *state)
{
	((OffsetsParse *) state)->depth--;
	JSON_CB_RETURN;
}

static JSON_CB_TYPE
op_array_start(void *state)
{
	((OffsetsParse *) state)->depth++;
	JSON_CB_RETURN;
}

static JSON_CB_TYPE
op_array_end(void *state)
{
	OffsetsParse *p = state;

	if (p->depth == 2)
		p->in_offsets = false;
	p->depth--;
	JSON_CB_RETURN;
}

static JSON_CB_TYPE
op_field_start(void *state, char *fname, bool isnull)
{
	OffsetsParse *p = state;

	if (p->depth == 1 && strcmp(fname, "offsets") == 0)
		p->in_offsets = true;
	else if (p->depth == 3 && p->in_offsets)
	{
		p->field = fname;
		if (strcmp(fname, "error") == 0)
			p->error_fields++;
	}
	JSON_CB_RETURN;
}

static JSON_CB_TYPE
op_element_start(void *state, bool isnull)
{
	OffsetsParse *p = state;

	if (p->depth == 2 && p->in_offsets)
	{
		p->index = p->seen++;
		if (p->index < p->nrecords)
			p->codes[p->index] = 0;
	}
	JSON_CB_RETURN;
}

static JSON_CB_TYPE
op_scalar(void *state, char *token, JsonTokenType type)
{
	OffsetsParse *p = state;

	if (p->depth != 3 || !p->in_offsets || p->field == NULL)
		JSON_CB_RETURN;
	if (strcmp(p->field, "error_code") == 0 && type == JSON_TOKEN_NUMBER)
	{
		int			code = atoi(token);

		if (p->index < p->nrecords)
			p->codes[p->index] = code;
		if (p->first_error == 0)
			p->first_error = code;
	}
	else if (strcmp(p->field, "error") == 0 && type == JSON_TOKEN_STRING && p->errbuf[0] == '\0')
		strlcpy(p->errbuf, token, p->errlen);
	JSON_CB_RETURN;
}

/*
 * courier_parse_kafka_offsets
 *		Read the outcome of a Kafka REST v2 produce answer (a 200): codes[i]
 *		= 0 when record i was written, else its error code.
 *		- As many entries as records, each with an "error" field (null or
 *		  text: Confluent): one per record, in order.
 *		- Otherwise one entry per partition (Redpanda, whose entries have
 *		  no "error" field and come in no particular order: as many entries
 *		  as records says nothing about which record each one is):
 *		  - none with an error code: every record was written;
 *		  - one with an error code: which records failed cannot be told;
 *		    every record gets the first code (a retriable one sends records
 *		    that were written again: at least once, never lost).
 *		Returns false when the body is not such an answer (malformed, no
 *		entries, more entries than records); errbuf says why.  Otherwise
 *		errbuf holds the first "error" text, or "".
 */
bool
courier_parse_kafka_offsets(const char *json, int len, int nrecords, int *codes, char *errbuf, int errlen)
{
	OffsetsParse p = {0};
	JsonSemAction sem = {0};
	JsonLexContext *lex;
	JsonParseErrorType rc;

	p.nrecords = nrecords;
	p.codes = codes;
	p.errbuf = errbuf;
	p.errlen = errlen;
	errbuf[0] = '\0';
	for (int i = 0; i < nrecords; i++)
		codes[i] = -1;			/* -1: no entry for this record */

	sem.semstate = &p;
	sem.object_start = op_object_start;
	sem.object_end = op_object_end;
	sem.array_start = op_array_start;
	sem.array_end = op_array_end;
	sem.object_field_start = op_field_start;
	sem.array_element_start = op_element_start;
	sem.scalar = op_scalar;

	lex = courier_json_lexer(json, len);
	rc = pg_parse_json(lex, &sem);
	if (rc != JSON_SUCCESS)
	{
		strlcpy(errbuf, "malformed JSON in the Kafka REST response", errlen);
		return false;
	}
	if (p.seen == 0 || p.seen > nrecords)
	{
		snprintf(errbuf, errlen, "Kafka REST response has %d offsets for %d records", p.seen, nrecords);
		return false;
	}
	if (p.seen < nrecords || p.error_fields < p.seen)
		for (int i = 0; i < nrecords; i++)
			codes[i] = p.first_error;
	return true;
}
