/*-------------------------------------------------------------------------
 *
 * outbox_format.c
 *	  Wire formats: CloudEvents 1.0 structured JSON (Kafka REST records are
 *	  in kafka_rest.c and kafka_rest_v3.c), and the judge of outbox rows.
 *
 * Rows come from tables their owners control, with any constraint dropped:
 * courier_decode_row() and courier_decode_rest() turn a fetched row into an
 * OutboxRow and judge
 * every value on its own (NULLs, infinities, years RFC 3339 cannot write,
 * oversized texts, headers that are not an object), so that the formatters
 * only ever see values they can write.  A row that cannot be sent says why,
 * naming the column; the caller moves it to the dead letters.
 *
 * Bodies are assembled as text: the payload is already JSON (jsonb's output)
 * and strings go through escape_json().
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/jsonb.h"
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
 * column_text
 *		Column col of a read's row as text, NULL for NULL: text and jsonb
 *		directly (once per row sent, so worth it), other types through
 *		their output function.
 */
static char *
column_text(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);
	Oid			type = SPI_gettypeid(desc, col);

	if (isnull)
		return NULL;
	if (type == TEXTOID)
		return TextDatumGetCString(d);
	if (type == JSONBOID)
	{
		Jsonb	   *jb = DatumGetJsonbP(d);

		return JsonbToCString(NULL, &jb->root, VARSIZE(jb));
	}
	return SPI_getvalue(tup, desc, col);
}

/*
 * courier_decode_row
 *		Decode what deciding about one row of an outbox read needs (columns
 *		as listed by outbox_statements.c, types checked by
 *		courier_check_row_shape): its id, attempts, whether it waits behind a
 *		failure, topic and key.  The rest, which only a row about to be sent
 *		needs, is decoded by courier_decode_rest(): a row parked behind its
 *		key costs no payload output.
 */
void
courier_decode_row(HeapTuple tup, TupleDesc desc, OutboxRow *r)
{
	bool		isnull;
	Datum		d;

	memset(r, 0, sizeof(OutboxRow));
	r->tup = tup;
	r->desc = desc;
	d = SPI_getbinval(tup, desc, 1, &isnull);
	r->id = isnull ? 0 : DatumGetInt64(d);	/* (the reads never return a NULL id) */
	d = SPI_getbinval(tup, desc, 8, &isnull);
	r->attempts = isnull ? 0 : Min(Max(DatumGetInt32(d), 0), PG_INT32_MAX - 1);
	d = SPI_getbinval(tup, desc, 9, &isnull);
	r->blocked = !isnull && DatumGetBool(d);
	r->topic = column_text(tup, desc, 3);
	r->key = column_text(tup, desc, 4);
	r->keyhash = r->key ? courier_key_hash(r->key, strlen(r->key)) : 0;
}

/*
 * courier_decode_rest
 *		Decode the rest of a row read by courier_decode_row, and judge it.
 *		r->unsendable names the first column that makes the row unfit to
 *		send; the other values are then not all filled in.  A created_at
 *		without an RFC 3339 form is not a reason: the CloudEvents time
 *		attribute is optional and is left out.  Decodes once.
 */
void
courier_decode_rest(const OutboxState *ob, OutboxRow *r)
{
	HeapTuple	tup = r->tup;
	TupleDesc	desc = r->desc;
	bool		isnull;
	Datum		d;
	const char *problem;

	if (r->decoded)
		return;
	r->decoded = true;
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
	if (COURIER_FORMAT_IS_KAFKA(ob->format) && !courier_valid_kafka_topic(r->topic))
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
	r->payload = column_text(tup, desc, 5);
	r->headers = column_text(tup, desc, 6);
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
