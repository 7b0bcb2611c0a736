/*-------------------------------------------------------------------------
 *
 * outbox_format.c
 *	  Wire formats: CloudEvents 1.0 structured JSON and Kafka REST Proxy v2
 *	  produce records, and the parser of the Kafka REST produce response.
 *
 * Rows come from tables their owners control, with any constraint dropped:
 * courier_decode_row() turns a fetched row into an OutboxRow and judges
 * every value on its own (NULLs, infinities, years RFC 3339 cannot write,
 * oversized texts, headers that are not an object), so that the formatters
 * only ever see values they can write.  A row that cannot be sent says why,
 * naming the column; the caller moves it to the dead letters.
 *
 * Bodies are assembled as text: the payload is already JSON (jsonb's output)
 * and strings go through escape_json().  The response is parsed with
 * PostgreSQL's own incremental JSON parser, which reports malformed input
 * as a return code instead of throwing: a bad answer from an endpoint is a
 * failed delivery, never an error in the worker.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "common/jsonapi.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/uuid.h"

#include "pg_courier.h"
#include "outbox_worker.h"

/*
 * rfc3339_time
 *		A timestamp as RFC 3339 in UTC, formatted here rather than by
 *		to_char() (which has no answer for infinity).  NULL when it has no
 *		RFC 3339 form: infinite, or a year outside 0001-9999 (BC included).
 */
static const char *
rfc3339_time(TimestampTz t)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (TIMESTAMP_NOT_FINITE(t) || timestamp2tm(t, NULL, &tm, &fsec, NULL, NULL) != 0)
		return NULL;
	if (tm.tm_year < 1 || tm.tm_year > 9999)
		return NULL;
	return psprintf("%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year, tm.tm_mon, tm.tm_mday,
					tm.tm_hour, tm.tm_min, tm.tm_sec, (int) fsec);
}

/*
 * uuid_text
 *		The canonical text of a uuid (36 characters and a NUL).
 */
static void
uuid_text(const pg_uuid_t *u, char *out)
{
	static const char hex[] = "0123456789abcdef";
	char	   *p = out;

	for (int i = 0; i < UUID_LEN; i++)
	{
		if (i == 4 || i == 6 || i == 8 || i == 10)
			*p++ = '-';
		*p++ = hex[u->data[i] >> 4];
		*p++ = hex[u->data[i] & 0x0F];
	}
	*p = '\0';
}

/*
 * text_problem
 *		Why a topic or key cannot be sent, or NULL.
 */
static const char *
text_problem(const char *value, const char *column, bool required, size_t limit)
{
	if (value == NULL)
		return required ? psprintf("%s is NULL", column) : NULL;
	if (required && value[0] == '\0')
		return psprintf("%s is empty", column);
	if (strlen(value) > limit)
		return psprintf("%s is longer than %zu bytes", column, limit);
	return NULL;
}

/*
 * courier_decode_row
 *		Decode one row of an outbox read (columns as listed by
 *		outbox_statements.c, types checked by courier_check_row_shape) and
 *		judge it.  r->unsendable names the first column that makes the row
 *		unfit to send; the other values are then not all filled in.  A
 *		created_at without an RFC 3339 form is not a reason: the CloudEvents
 *		time attribute is optional and is left out.
 */
void
courier_decode_row(HeapTuple tup, TupleDesc desc, const OutboxState *ob, OutboxRow *r)
{
	bool		isnull;
	Datum		d;
	const char *problem;

	memset(r, 0, sizeof(OutboxRow));
	d = SPI_getbinval(tup, desc, 1, &isnull);
	r->id = isnull ? 0 : DatumGetInt64(d);	/* (the reads never return a NULL id) */
	d = SPI_getbinval(tup, desc, 8, &isnull);
	r->attempts = isnull ? 0 : Min(Max(DatumGetInt32(d), 0), PG_INT32_MAX - 1);
	d = SPI_getbinval(tup, desc, 9, &isnull);
	r->blocked = !isnull && DatumGetBool(d);
	r->topic = SPI_getvalue(tup, desc, 3);
	r->key = SPI_getvalue(tup, desc, 4);

	d = SPI_getbinval(tup, desc, 2, &isnull);
	if (isnull)
	{
		r->unsendable = "event_id is NULL";
		return;
	}
	uuid_text(DatumGetUUIDP(d), r->event_id);
	/* (a topic as long as courier.max_payload_bytes allows a payload) */
	if ((problem = text_problem(r->topic, "topic", true, (size_t) courier_max_payload_bytes)) != NULL ||
		(problem = text_problem(r->key, "key", false, COURIER_MAX_KEY_BYTES)) != NULL)
	{
		r->unsendable = problem;
		return;
	}
	if (ob->format == COURIER_FORMAT_KAFKA_REST_V2 && !courier_valid_kafka_topic(r->topic))
	{
		r->unsendable = "invalid Kafka topic name";
		return;
	}
	d = SPI_getbinval(tup, desc, 5, &isnull);
	if (isnull)
	{
		r->unsendable = "payload is NULL";
		return;
	}
	if (toast_raw_datum_size(d) - VARHDRSZ > (Size) courier_max_payload_bytes)
	{
		r->unsendable = psprintf("payload is larger than courier.max_payload_bytes (%d)",
								 courier_max_payload_bytes);
		return;
	}
	d = SPI_getbinval(tup, desc, 10, &isnull);
	if (isnull || !DatumGetBool(d))
	{
		r->unsendable = "headers is not a JSON object";
		return;
	}
	r->payload = SPI_getvalue(tup, desc, 5);
	r->headers = SPI_getvalue(tup, desc, 6);
	d = SPI_getbinval(tup, desc, 7, &isnull);
	r->time = isnull ? NULL : rfc3339_time(DatumGetTimestampTz(d));
}

/*
 * courier_format_cloudevent
 *		Append one event in CloudEvents 1.0 structured JSON.  An empty key
 *		is a key for ordering, but not a valid subject: it is left out.
 */
void
courier_format_cloudevent(StringInfo buf, const OutboxState *ob, const OutboxRow *r)
{
	appendStringInfoString(buf, "{\"specversion\":\"1.0\",\"id\":\"");
	appendStringInfoString(buf, r->event_id);
	appendStringInfoString(buf, "\",\"source\":");
	escape_json(buf, ob->source);
	appendStringInfoString(buf, ",\"type\":");
	escape_json(buf, r->topic);
	if (r->key && r->key[0] != '\0')
	{
		appendStringInfoString(buf, ",\"subject\":");
		escape_json(buf, r->key);
		/* the CloudEvents Partitioning extension */
		appendStringInfoString(buf, ",\"partitionkey\":");
		escape_json(buf, r->key);
	}
	if (r->time)
	{
		appendStringInfoString(buf, ",\"time\":\"");
		appendStringInfoString(buf, r->time);
		appendStringInfoChar(buf, '"');
	}
	appendStringInfoString(buf, ",\"datacontenttype\":\"application/json\",\"data\":");
	appendStringInfoString(buf, r->payload);
	appendStringInfoChar(buf, '}');
}

/*
 * courier_format_kafka_record
 *		Append one record of a Kafka REST v2 JSON produce request.  The value
 *		is the CloudEvent (Kafka protocol binding, structured mode) so that
 *		the event id travels with it, unless the outbox asks for raw payloads.
 */
void
courier_format_kafka_record(StringInfo buf, const OutboxState *ob, const OutboxRow *r)
{
	appendStringInfoString(buf, "{\"key\":");
	if (r->key)
		escape_json(buf, r->key);
	else
		appendStringInfoString(buf, "null");
	appendStringInfoString(buf, ",\"value\":");
	if (ob->kafka_envelope)
		courier_format_cloudevent(buf, ob, r);
	else
		appendStringInfoString(buf, r->payload);
	appendStringInfoChar(buf, '}');
}

/*
 * courier_valid_kafka_topic
 *		Kafka's topic name rule: 1 to 249 of [a-zA-Z0-9._-].
 */
bool
courier_valid_kafka_topic(const char *topic)
{
	size_t		n = strlen(topic);

	if (n == 0 || n > 249)
		return false;
	return strspn(topic, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

/* (JSON semantic callbacks: COURIER_JSON_CB_TYPE / _RETURN, compat.h) */
#define JSON_CB_TYPE COURIER_JSON_CB_TYPE
#define JSON_CB_RETURN COURIER_JSON_CB_RETURN

/* Parser state for {"offsets":[{"error_code":..,"error":..}, ...]} */
typedef struct OffsetsParse
{
	int			depth;
	bool		in_offsets;		/* inside the top-level "offsets" array */
	int			index;			/* current element of offsets */
	const char *field;			/* current field name inside an element */
	int			nrecords;
	int		   *codes;
	int			seen;
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
		p->field = fname;
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

	if (p->depth != 3 || !p->in_offsets || p->field == NULL || p->index >= p->nrecords)
		JSON_CB_RETURN;
	if (strcmp(p->field, "error_code") == 0 && type == JSON_TOKEN_NUMBER)
		p->codes[p->index] = atoi(token);
	else if (strcmp(p->field, "error") == 0 && type == JSON_TOKEN_STRING && p->errbuf[0] == '\0')
		strlcpy(p->errbuf, token, p->errlen);
	JSON_CB_RETURN;
}

/*
 * courier_parse_kafka_offsets
 *		Read the per-record outcome of a Kafka REST v2 produce response:
 *		codes[i] = 0 when record i was written, else its error_code.  Returns
 *		false when the body is not a well-formed answer for nrecords records.
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
	if (p.seen != nrecords)
	{
		snprintf(errbuf, errlen, "Kafka REST response has %d offsets for %d records", p.seen, nrecords);
		return false;
	}
	return true;
}
