/*-------------------------------------------------------------------------
 *
 * kafka_rest_v3.c
 *	  Kafka REST Proxy v3 (Confluent Platform >= 7, Confluent Cloud): the
 *	  records:batch produce request, its 207 answer, and the cluster id.
 *
 * A request is POST {base}/v3/clusters/{cluster}/topics/{topic}/records:batch
 * with {"entries": [...]}; entry ids are the row's index in the request
 * ("0", "1", ...), unique in the batch whatever the rows hold, and the 207
 * answer's successes and failures are matched back by them.  Keys are
 * STRING (their bytes reach Kafka as they are, partitioned like a native
 * producer's), values JSON, and the row's headers become Kafka headers.
 * When the value is a CloudEvent, the header content-type says so
 * (application/cloudevents+json: the CloudEvents Kafka binding's structured
 * mode), and row headers of that name or named ce_* (the binding's binary
 * mode attributes) are not passed: they would contradict the value.
 *
 * The cluster id is the cluster_id option, or discovered with GET
 * {base}/v3/clusters (a request of the worker's like any other, under the
 * endpoint policy, see outbox_delivery.c) and kept until the proxy answers
 * 404 for it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "utils/json.h"

#include "compat.h"
#include "pg_courier.h"
#include "outbox_worker.h"

/*
 * courier_valid_cluster_id
 *		A cluster id we put in a URL path: 1 to 64 of [A-Za-z0-9_-] (Kafka's
 *		cluster ids are base64url of 16 bytes; Confluent Cloud's lkc-xxxxx).
 */
bool
courier_valid_cluster_id(const char *id)
{
	size_t		n = strlen(id);

	return n > 0 && n <= 64 &&
		strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") == n;
}

/*
 * courier_kafka_v3_cluster
 *		The cluster the outbox produces to: the option, else the one
 *		discovered; NULL while unknown.
 */
const char *
courier_kafka_v3_cluster(const OutboxState *ob)
{
	return ob->cluster_option ? ob->cluster_option : ob->cluster_found;
}

/*
 * courier_kafka_v3_url
 *		The records:batch URL of a topic (NULL when the cluster is unknown or
 *		the endpoint does not parse).
 */
char *
courier_kafka_v3_url(const OutboxState *ob, const char *topic)
{
	const char *cluster = courier_kafka_v3_cluster(ob);

	if (cluster == NULL)
		return NULL;
	return courier_kafka_url(ob->endpoint,
							 psprintf("/v3/clusters/%s/topics/%s/records:batch", cluster, topic));
}

/*
 * append_headers
 *		The Kafka headers of a record: content-type for a CloudEvent, then
 *		the row's "Name: value" lines (names and values as filtered when the
 *		row was read), values base64.
 */
static void
append_headers(StringInfo buf, const OutboxState *ob, const OutboxRow *r)
{
	static const char ce_type[] = "application/cloudevents+json";
	bool		first = true;

	appendStringInfoString(buf, ",\"headers\":[");
	if (ob->kafka_envelope)
	{
		appendStringInfoString(buf, "{\"name\":\"content-type\",\"value\":");
		courier_append_base64(buf, ce_type, sizeof(ce_type) - 1);
		appendStringInfoChar(buf, '}');
		first = false;
	}
	if (r->headers)
	{
		char	   *save;
		char	   *line;

		for (line = strtok_r(pstrdup(r->headers), "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		{
			char	   *colon = strchr(line, ':');
			char	   *value;

			if (colon == NULL)
				continue;
			*colon = '\0';
			/* with a CloudEvent value, the binding's own headers would contradict it */
			if (ob->kafka_envelope &&
				(pg_strcasecmp(line, "content-type") == 0 || pg_strncasecmp(line, "ce_", 3) == 0))
				continue;
			value = colon + 1;
			while (*value == ' ')
				value++;
			if (!first)
				appendStringInfoChar(buf, ',');
			first = false;
			appendStringInfoString(buf, "{\"name\":");
			escape_json(buf, line);
			appendStringInfoString(buf, ",\"value\":");
			courier_append_base64(buf, value, strlen(value));
			appendStringInfoChar(buf, '}');
		}
	}
	appendStringInfoChar(buf, ']');
}

/*
 * courier_format_kafka_v3_entry
 *		Append one entry of a records:batch request; index is its id.
 */
void
courier_format_kafka_v3_entry(StringInfo buf, const OutboxState *ob, const OutboxRow *r, int index)
{
	appendStringInfo(buf, "{\"id\":\"%d\"", index);
	if (r->key)
	{
		appendStringInfoString(buf, ",\"key\":{\"type\":\"STRING\",\"data\":");
		escape_json(buf, r->key);
		appendStringInfoChar(buf, '}');
	}
	appendStringInfoString(buf, ",\"value\":{\"type\":\"JSON\",\"data\":");
	if (ob->kafka_envelope)
		courier_format_cloudevent(buf, ob, r);
	else
		appendStringInfoString(buf, r->payload);
	appendStringInfoChar(buf, '}');
	append_headers(buf, ob, r);
	appendStringInfoChar(buf, '}');
}

/* (JSON semantic callbacks: COURIER_JSON_CB_TYPE / _RETURN, compat.h) */
#define JSON_CB_TYPE COURIER_JSON_CB_TYPE
#define JSON_CB_RETURN COURIER_JSON_CB_RETURN

/*
 * Parser state for the 207 answer {"successes": [{"id": ..}], "failures":
 * [{"id": .., "error_code": .., "message": ..}]}, and for {"data":
 * [{"cluster_id": ..}]} (list: "data").
 */
typedef struct BatchParse
{
	int			depth;
	int			list;			/* 0 none, 1 successes / data, 2 failures */
	const char *field;			/* field inside an element */
	int			id;				/* the element's id, -1: none yet */
	int			code;			/* its error_code */
	int			nrecords;
	int		   *codes;
	char	   *errbuf;			/* first failure message (batch) or cluster id */
	int			errlen;
	bool		clusters;		/* parsing GET /v3/clusters */
} BatchParse;

static JSON_CB_TYPE
bp_object_start(void *state)
{
	BatchParse *p = state;

	p->depth++;
	if (p->depth == 3)
	{
		p->id = -1;
		p->code = 0;
		p->field = NULL;
	}
	JSON_CB_RETURN;
}

static JSON_CB_TYPE
bp_object_end(void *state)
{
	BatchParse *p = state;

	if (p->depth == 3 && p->list != 0 && !p->clusters && p->id >= 0 && p->id < p->nrecords)
		p->codes[p->id] = p->list == 1 ? 0 : (p->code != 0 ? p->code : 50001);
	p->depth--;
	JSON_CB_RETURN;
}

static JSON_CB_TYPE
bp_array_start(void *state)
{
	((BatchParse *) state)->depth++;
	JSON_CB_RETURN;
}

static JSON_CB_TYPE
bp_array_end(void *state)
{
	BatchParse *p = state;

	if (p->depth == 2)
		p->list = 0;
	p->depth--;
	JSON_CB_RETURN;
}

static JSON_CB_TYPE
bp_field_start(void *state, char *fname, bool isnull)
{
	BatchParse *p = state;

	if (p->depth == 1)
	{
		if (p->clusters)
			p->list = strcmp(fname, "data") == 0 ? 1 : 0;
		else
			p->list = strcmp(fname, "successes") == 0 ? 1 : strcmp(fname, "failures") == 0 ? 2 : 0;
	}
	else if (p->depth == 3)
		p->field = fname;
	JSON_CB_RETURN;
}

static JSON_CB_TYPE
bp_scalar(void *state, char *token, JsonTokenType type)
{
	BatchParse *p = state;

	if (p->depth != 3 || p->list == 0 || p->field == NULL)
		JSON_CB_RETURN;
	if (p->clusters)
	{
		if (strcmp(p->field, "cluster_id") == 0 && type == JSON_TOKEN_STRING && p->errbuf[0] == '\0')
			strlcpy(p->errbuf, token, p->errlen);
		JSON_CB_RETURN;
	}
	if (strcmp(p->field, "id") == 0 && type == JSON_TOKEN_STRING)
	{
		char	   *end;
		long		v = strtol(token, &end, 10);

		p->id = (end != token && *end == '\0' && v >= 0 && v < PG_INT32_MAX) ? (int) v : -1;
	}
	else if (strcmp(p->field, "error_code") == 0 && type == JSON_TOKEN_NUMBER)
		p->code = atoi(token);
	else if (strcmp(p->field, "message") == 0 && type == JSON_TOKEN_STRING && p->errbuf[0] == '\0')
		strlcpy(p->errbuf, token, p->errlen);
	JSON_CB_RETURN;
}

/*
 * run_parse
 *		Parse json with a BatchParse's callbacks.
 */
static bool
run_parse(BatchParse *p, const char *json, int len)
{
	JsonSemAction sem = {0};

	sem.semstate = p;
	sem.object_start = bp_object_start;
	sem.object_end = bp_object_end;
	sem.array_start = bp_array_start;
	sem.array_end = bp_array_end;
	sem.object_field_start = bp_field_start;
	sem.scalar = bp_scalar;
	return pg_parse_json(courier_json_lexer(json, len), &sem) == JSON_SUCCESS;
}

/*
 * courier_parse_kafka_v3_batch
 *		Read a records:batch answer: codes[i] = 0 for a success, the
 *		failure's error_code, or -1 when the answer does not mention entry i
 *		(not known to be written: sent again).  errbuf: the first failure's
 *		message.  False when the body is not JSON.
 */
bool
courier_parse_kafka_v3_batch(const char *json, int len, int nrecords, int *codes, char *errbuf, int errlen)
{
	BatchParse	p = {0};

	p.nrecords = nrecords;
	p.codes = codes;
	p.errbuf = errbuf;
	p.errlen = errlen;
	errbuf[0] = '\0';
	for (int i = 0; i < nrecords; i++)
		codes[i] = -1;
	if (!run_parse(&p, json, len))
	{
		strlcpy(errbuf, "malformed JSON in the Kafka REST response", errlen);
		return false;
	}
	return true;
}

/*
 * courier_parse_kafka_v3_clusters
 *		The first cluster_id of a GET /v3/clusters answer, if it is one we
 *		can put in a URL.
 */
bool
courier_parse_kafka_v3_clusters(const char *json, int len, char *id, int idlen)
{
	BatchParse	p = {0};

	p.clusters = true;
	p.errbuf = id;
	p.errlen = idlen;
	id[0] = '\0';
	return run_parse(&p, json, len) && courier_valid_cluster_id(id);
}
