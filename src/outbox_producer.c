/*-------------------------------------------------------------------------
 *
 * outbox_producer.c
 *	  The producer side of an outbox: the row trigger that assigns ids and
 *	  registers keys, the row trigger that guards updates, courier.send(),
 *	  and endpoint validation/redaction.
 *
 * Producers pay for every microsecond here, so the trigger caches what it
 * needs per outbox (column numbers, the id sequence) and courier.send()
 * keeps one prepared INSERT per outbox; both caches are dropped by relcache
 * invalidation.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "access/detoast.h"
#include "access/htup_details.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "parser/parse_func.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/uuid.h"

#include "pg_courier.h"
#include "outbox_registry.h"
#include "endpoint_policy.h"

PG_FUNCTION_INFO_V1(courier_outbox_before_insert);
PG_FUNCTION_INFO_V1(courier_outbox_before_update);
PG_FUNCTION_INFO_V1(courier_send);
PG_FUNCTION_INFO_V1(courier_validate_endpoint);
PG_FUNCTION_INFO_V1(courier_redact_url);

/* What the trigger and courier.send() remember about one outbox table. */
typedef struct OutboxCacheEntry
{
	Oid			relid;			/* hash key */
	bool		valid;
	Oid			seqid;
	AttrNumber	att_id;
	AttrNumber	att_key;
	AttrNumber	att_payload;
	AttrNumber	att_event_id;	/* (these three: InvalidAttrNumber if absent) */
	AttrNumber	att_topic;
	AttrNumber	att_headers;
	SPIPlanPtr	send_plan;
} OutboxCacheEntry;

static HTAB *outbox_cache = NULL;

/*
 * outbox_cache_invalidate
 *		Relcache callback: forget what we know about a changed relation.
 */
static void
outbox_cache_invalidate(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	OutboxCacheEntry *e;

	if (outbox_cache == NULL)
		return;
	hash_seq_init(&status, outbox_cache);
	while ((e = hash_seq_search(&status)) != NULL)
	{
		if (relid != InvalidOid && e->relid != relid)
			continue;
		e->valid = false;
		if (e->send_plan)
		{
			SPI_freeplan(e->send_plan);
			e->send_plan = NULL;
		}
	}
}

/*
 * outbox_cache_lookup
 *		The cache entry of an outbox relation, filled in from its tuple
 *		descriptor and owned sequence on first use.
 */
static OutboxCacheEntry *
outbox_cache_lookup(Relation rel)
{
	OutboxCacheEntry *e;
	bool		found;
	TupleDesc	desc = RelationGetDescr(rel);
	List	   *seqs;

	if (outbox_cache == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(OutboxCacheEntry);
		ctl.hcxt = TopMemoryContext;
		outbox_cache = hash_create("pg_courier outboxes", 16, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		CacheRegisterRelcacheCallback(outbox_cache_invalidate, (Datum) 0);
	}
	e = hash_search(outbox_cache, &rel->rd_id, HASH_ENTER, &found);
	if (!found)
		e->send_plan = NULL;
	if (found && e->valid)
		return e;

	e->att_id = e->att_key = e->att_payload = InvalidAttrNumber;
	e->att_event_id = e->att_topic = e->att_headers = InvalidAttrNumber;
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped)
			continue;
		if (strcmp(NameStr(att->attname), "id") == 0 && att->atttypid == INT8OID)
			e->att_id = att->attnum;
		else if (strcmp(NameStr(att->attname), "key") == 0 && att->atttypid == TEXTOID)
			e->att_key = att->attnum;
		else if (strcmp(NameStr(att->attname), "payload") == 0 && att->atttypid == JSONBOID)
			e->att_payload = att->attnum;
		else if (strcmp(NameStr(att->attname), "event_id") == 0 && att->atttypid == UUIDOID)
			e->att_event_id = att->attnum;
		else if (strcmp(NameStr(att->attname), "topic") == 0 && att->atttypid == TEXTOID)
			e->att_topic = att->attnum;
		else if (strcmp(NameStr(att->attname), "headers") == 0 && att->atttypid == JSONBOID)
			e->att_headers = att->attnum;
	}
	seqs = getOwnedSequences(rel->rd_id);
	e->seqid = (seqs != NIL) ? linitial_oid(seqs) : InvalidOid;
	if (e->att_id == InvalidAttrNumber || e->att_key == InvalidAttrNumber ||
		e->att_payload == InvalidAttrNumber || e->seqid == InvalidOid)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" does not have the shape of a pg_courier outbox",
						RelationGetRelationName(rel)),
				 errdetail("An outbox needs columns id bigint, key text, payload jsonb and a sequence owned by id."),
				 errhint("Create outboxes with courier.create_outbox().")));
	e->valid = true;
	return e;
}

/*
 * check_event_size
 *		courier.max_payload_bytes holds for each variable-length column of an
 *		event (payload, headers, topic, key): the worker holds whole batches
 *		of rows in memory.  With oldtup (an UPDATE), a column whose value did
 *		not change is not checked again, so the worker can still record a
 *		failure on a row written under a larger limit.
 */
static void
check_event_size(Relation rel, AttrNumber attnum, HeapTuple newtup, HeapTuple oldtup)
{
	TupleDesc	desc = RelationGetDescr(rel);
	bool		isnull;
	bool		oldnull;
	Datum		d;
	Size		size;

	if (attnum == InvalidAttrNumber)
		return;
	d = heap_getattr(newtup, attnum, desc, &isnull);
	if (isnull)
		return;
	if (oldtup != NULL)
	{
		Datum		old = heap_getattr(oldtup, attnum, desc, &oldnull);

		if (!oldnull && datumIsEqual(old, d, false, -1))
			return;
	}
	size = toast_raw_datum_size(d) - VARHDRSZ;
	if (size > (Size) courier_max_payload_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 strcmp(NameStr(TupleDescAttr(desc, attnum - 1)->attname), "payload") == 0
				 ? errmsg("event payload is too large: %zu bytes", size)
				 : errmsg("event column \"%s\" is too large: %zu bytes",
						  NameStr(TupleDescAttr(desc, attnum - 1)->attname), size),
				 errdetail("courier.max_payload_bytes is %d.", courier_max_payload_bytes),
				 errhint("Send a reference to the data instead, or raise courier.max_payload_bytes.")));
}

/*
 * check_key_length
 *		Keys are at most COURIER_MAX_KEY_BYTES long (the index of failed rows
 *		must be able to hold them).
 */
static void
check_key_length(int keylen)
{
	if (keylen > COURIER_MAX_KEY_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("event key is too long: %d bytes", keylen),
				 errdetail("Keys of pg_courier events are at most %d bytes.", COURIER_MAX_KEY_BYTES),
				 errhint("Use a shorter identifier of the entity as the key, e.g. a hash of it.")));
}

/*
 * check_topic_not_empty
 *		An empty topic is no CloudEvents type and no Kafka topic: refused
 *		here rather than dead-lettered later (NULL means the default topic).
 */
static void
check_topic_not_empty(Relation rel, AttrNumber attnum, HeapTuple tuple)
{
	bool		isnull;
	Datum		d;

	if (attnum == InvalidAttrNumber)
		return;
	d = heap_getattr(tuple, attnum, RelationGetDescr(rel), &isnull);
	if (!isnull && VARSIZE_ANY_EXHDR(DatumGetTextPP(d)) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event topic must not be empty"),
				 errhint("Leave the topic NULL to use the outbox's default topic.")));
}

/*
 * courier_outbox_before_insert
 *		BEFORE INSERT FOR EACH ROW on every outbox: checks the payload size,
 *		registers the row's key for ordering and assigns its id.
 */
Datum
courier_outbox_before_insert(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	OutboxCacheEntry *e;
	HeapTuple	tuple;
	Datum		d;
	bool		isnull;
	const char *key = NULL;
	int			keylen = 0;
	int64		given_id = 0;
	int64		id;
	int			cols[1];
	Datum		vals[1];
	bool		nulls[1] = {false};

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) || !TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("courier._outbox_before_insert() must be a BEFORE INSERT FOR EACH ROW trigger")));

	rel = trigdata->tg_relation;
	tuple = trigdata->tg_trigtuple;
	e = outbox_cache_lookup(rel);

	check_event_size(rel, e->att_payload, tuple, NULL);
	check_event_size(rel, e->att_headers, tuple, NULL);
	check_event_size(rel, e->att_topic, tuple, NULL);
	check_event_size(rel, e->att_key, tuple, NULL);
	check_topic_not_empty(rel, e->att_topic, tuple);

	d = heap_getattr(tuple, e->att_key, RelationGetDescr(rel), &isnull);
	if (!isnull)
	{
		text	   *t = DatumGetTextPP(d);

		key = VARDATA_ANY(t);
		keylen = VARSIZE_ANY_EXHDR(t);
		check_key_length(keylen);
	}
	d = heap_getattr(tuple, e->att_id, RelationGetDescr(rel), &isnull);
	if (!isnull)
		given_id = DatumGetInt64(d);

	id = courier_registry_insert(rel->rd_id, rel->rd_rel->relowner, e->seqid, key, keylen, given_id);
	if (id == given_id)
		return PointerGetDatum(tuple);

	cols[0] = e->att_id;
	vals[0] = Int64GetDatum(id);
	return PointerGetDatum(heap_modify_tuple_by_cols(tuple, RelationGetDescr(rel), 1, cols, vals, nulls));
}

/*
 * column_changed
 *		Does an UPDATE change the column (NULL to value and back included)?
 *		Compared by value: an UPDATE that sets a column to what it was is no
 *		change, whatever its storage.
 */
static bool
column_changed(Relation rel, AttrNumber attnum, HeapTuple newtup, HeapTuple oldtup)
{
	TupleDesc	desc = RelationGetDescr(rel);
	Form_pg_attribute att = TupleDescAttr(desc, attnum - 1);
	bool		newnull;
	bool		oldnull;
	Datum		n = heap_getattr(newtup, attnum, desc, &newnull);
	Datum		o = heap_getattr(oldtup, attnum, desc, &oldnull);

	if (newnull || oldnull)
		return newnull != oldnull;
	if (att->attlen == -1)
	{
		n = PointerGetDatum(PG_DETOAST_DATUM_PACKED(n));
		o = PointerGetDatum(PG_DETOAST_DATUM_PACKED(o));
		return VARSIZE_ANY_EXHDR(DatumGetPointer(n)) != VARSIZE_ANY_EXHDR(DatumGetPointer(o)) ||
			memcmp(VARDATA_ANY(DatumGetPointer(n)), VARDATA_ANY(DatumGetPointer(o)),
				   VARSIZE_ANY_EXHDR(DatumGetPointer(n))) != 0;
	}
	return !datumIsEqual(n, o, att->attbyval, att->attlen);
}

/*
 * courier_outbox_before_update
 *		BEFORE UPDATE FOR EACH ROW on every outbox: an event's identity (id,
 *		event_id) and its place in its key's order (key) are fixed once it
 *		is written: the peer may already have it under that identity, and the
 *		worker tracks keys in flight.  Everything else may change (the worker
 *		records failures; owners may correct payloads), within
 *		courier.max_payload_bytes.
 */
Datum
courier_outbox_before_update(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	OutboxCacheEntry *e;
	HeapTuple	newtup;
	HeapTuple	oldtup;
	AttrNumber	fixed[3];

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) || !TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("courier._outbox_before_update() must be a BEFORE UPDATE FOR EACH ROW trigger")));

	rel = trigdata->tg_relation;
	newtup = trigdata->tg_newtuple;
	oldtup = trigdata->tg_trigtuple;
	e = outbox_cache_lookup(rel);

	fixed[0] = e->att_id;
	fixed[1] = e->att_event_id;
	fixed[2] = e->att_key;
	for (int i = 0; i < lengthof(fixed); i++)
		if (fixed[i] != InvalidAttrNumber && column_changed(rel, fixed[i], newtup, oldtup))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("the %s of an event in outbox \"%s\" cannot be changed",
							NameStr(TupleDescAttr(RelationGetDescr(rel), fixed[i] - 1)->attname),
							RelationGetRelationName(rel)),
					 errdetail("id, event_id and key identify an event and its place in its key's order."),
					 errhint("Delete the event and send a new one instead.")));

	check_event_size(rel, e->att_payload, newtup, oldtup);
	check_event_size(rel, e->att_headers, newtup, oldtup);
	check_event_size(rel, e->att_topic, newtup, oldtup);
	return PointerGetDatum(newtup);
}

/*
 * is_outbox
 *		Does the relation carry pg_courier's outbox trigger?
 */
static bool
is_outbox(Relation rel)
{
	static Oid	trigger_fn = InvalidOid;
	TriggerDesc *td = rel->trigdesc;

	if (!OidIsValid(trigger_fn))
	{
		List	   *name = list_make2(makeString(COURIER_SCHEMA), makeString("_outbox_before_insert"));

		trigger_fn = LookupFuncName(name, 0, NULL, true);
	}
	if (td == NULL || !OidIsValid(trigger_fn))
		return false;
	for (int i = 0; i < td->numtriggers; i++)
		if (td->triggers[i].tgfoid == trigger_fn && td->triggers[i].tgenabled != TRIGGER_DISABLED)
			return true;
	return false;
}

/*
 * send_plan_for
 *		The saved INSERT of courier.send() for one outbox.
 */
static SPIPlanPtr
send_plan_for(Oid relid)
{
	Relation	rel = RelationIdGetRelation(relid);
	OutboxCacheEntry *e;
	StringInfoData sql;
	Oid			argtypes[5] = {UUIDOID, TEXTOID, TEXTOID, JSONBOID, JSONBOID};

	if (!RelationIsValid(rel))
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE), errmsg("outbox with OID %u does not exist", relid)));
	if (!is_outbox(rel))
	{
		char	   *name = pstrdup(RelationGetRelationName(rel));

		RelationClose(rel);
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("relation \"%s\" is not a pg_courier outbox", name),
				 errhint("Create outboxes with courier.create_outbox(); see courier.outboxes.")));
	}
	e = outbox_cache_lookup(rel);
	RelationClose(rel);
	if (e->send_plan != NULL)
		return e->send_plan;

	initStringInfo(&sql);
	appendStringInfo(&sql, "INSERT INTO %s (event_id, topic, key, payload, headers) VALUES ($1, $2, $3, $4, $5)",
					 quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
												get_rel_name(relid)));
	e->send_plan = SPI_prepare(sql.data, 5, argtypes);
	if (e->send_plan == NULL)
		elog(ERROR, "could not prepare courier.send for outbox %u: %s", relid, SPI_result_code_string(SPI_result));
	SPI_keepplan(e->send_plan);
	return e->send_plan;
}

/*
 * courier_send
 *		courier.send(outbox, payload, key, topic, headers) RETURNS uuid:
 *		insert one event in the caller's transaction, return its event id.
 */
Datum
courier_send(PG_FUNCTION_ARGS)
{
	Datum		args[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	Datum		event_id;
	int			rc;

	if (PG_ARGISNULL(0))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("outbox must not be NULL")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("event payload must not be NULL"),
				 errhint("Use '{}'::jsonb or 'null'::jsonb for an event without data.")));
	if (!PG_ARGISNULL(4) && !JB_ROOT_IS_OBJECT(PG_GETARG_JSONB_P(4)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event headers must be a JSON object of header names and string values")));

	event_id = DirectFunctionCall1(gen_random_uuid, (Datum) 0);
	args[0] = event_id;
	args[1] = PG_GETARG_DATUM(3);
	nulls[1] = PG_ARGISNULL(3) ? 'n' : ' ';
	args[2] = PG_GETARG_DATUM(2);
	nulls[2] = PG_ARGISNULL(2) ? 'n' : ' ';
	args[3] = PG_GETARG_DATUM(1);
	args[4] = PG_GETARG_DATUM(4);
	nulls[4] = PG_ARGISNULL(4) ? 'n' : ' ';

	SPI_connect();
	rc = SPI_execute_plan(send_plan_for(PG_GETARG_OID(0)), args, nulls, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "courier.send: INSERT failed: %s", SPI_result_code_string(rc));
	SPI_finish();
	PG_RETURN_DATUM(event_id);
}

/*
 * courier_redact_text
 *		A URL fit for logs and views: password and query values replaced.
 *		Returns a palloc'd string; unparsable input is fully redacted.
 */
char *
courier_redact_text(const char *url)
{
	CURLU	   *u = curl_url();
	char	   *out = NULL;
	char	   *q = NULL;
	char	   *result;

	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK)
	{
		curl_url_cleanup(u);
		return pstrdup("(invalid URL)");
	}
	if (curl_url_get(u, CURLUPART_PASSWORD, &q, 0) == CURLUE_OK)
	{
		curl_url_set(u, CURLUPART_PASSWORD, "redacted", 0);
		curl_free(q);
		q = NULL;
	}
	else if (curl_url_get(u, CURLUPART_USER, &q, 0) == CURLUE_OK)
	{
		/* a user without a password is often a token (https://TOKEN@host) */
		curl_url_set(u, CURLUPART_USER, "redacted", 0);
		curl_free(q);
		q = NULL;
	}
	if (curl_url_get(u, CURLUPART_QUERY, &q, 0) == CURLUE_OK)
	{
		/* query strings often carry tokens: keep names, drop values */
		StringInfoData buf;
		char	   *save;
		char	   *part;

		initStringInfo(&buf);
		for (part = strtok_r(q, "&", &save); part; part = strtok_r(NULL, "&", &save))
		{
			char	   *eq = strchr(part, '=');

			if (buf.len > 0)
				appendStringInfoChar(&buf, '&');
			if (eq)
				appendStringInfo(&buf, "%.*s=redacted", (int) (eq - part), part);
			else
				appendStringInfoString(&buf, part);
		}
		curl_url_set(u, CURLUPART_QUERY, buf.data, 0);
		curl_free(q);
	}
	curl_url_get(u, CURLUPART_URL, &out, 0);
	result = pstrdup(out ? out : "(invalid URL)");
	curl_free(out);
	curl_url_cleanup(u);
	return result;
}

/*
 * courier_redact_url
 *		courier._redact_url(text): SQL wrapper of courier_redact_text.
 */
Datum
courier_redact_url(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(courier_redact_text(text_to_cstring(PG_GETARG_TEXT_PP(0)))));
}

/*
 * url_shape_problem
 *		What is wrong with an endpoint before libcurl parses it, in our own
 *		words: libcurl's messages for the same malformed URL differ from one
 *		version to the next ("Bad scheme", "Malformed input to a URL
 *		function", "No host present"), and users should not see them.
 */
static const char *
url_shape_problem(const char *url)
{
	const char *p = url;
	const char *authority;
	size_t		len;

	if (!isalpha((unsigned char) *p))
		return "it is not an absolute URL (it must start with http:// or https://)";
	while (isalnum((unsigned char) *p) || *p == '+' || *p == '-' || *p == '.')
		p++;
	if (strncmp(p, "://", 3) != 0)
		return "it is not an absolute URL (it must start with http:// or https://)";
	authority = p + 3;
	len = strcspn(authority, "/?#");
	for (size_t i = len; i > 0; i--)
		if (authority[i - 1] == '@')
		{
			len -= i;
			break;
		}
	if (len == 0)
		return "the URL has no host";
	return NULL;
}

/*
 * curl_url_problem
 *		A libcurl URL parser failure, said in our words.
 */
static const char *
curl_url_problem(CURLUcode rc)
{
	switch (rc)
	{
		case CURLUE_BAD_SCHEME:
		case CURLUE_UNSUPPORTED_SCHEME:
			return "the scheme must be http or https";
		case CURLUE_NO_HOST:
		case CURLUE_BAD_HOSTNAME:
		case CURLUE_BAD_IPV6:
			return "the host is missing or not a valid host name or address";
		case CURLUE_BAD_PORT_NUMBER:
			return "the port must be a number from 1 to 65535";
		case CURLUE_BAD_LOGIN:
		case CURLUE_BAD_USER:
		case CURLUE_BAD_PASSWORD:
			return "the user name or password part is not valid";
		default:
			return "it is not a well-formed URL";
	}
}

/*
 * parsed_url_problem
 *		What is wrong with a URL libcurl parsed, or NULL (and its host, in
 *		*host).
 */
static const char *
parsed_url_problem(CURLU *u, const char *url, char **host)
{
	char	   *scheme = NULL;
	char	   *hostpart = NULL;
	char	   *fragment = NULL;
	const char *problem = NULL;

	if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
		(pg_strcasecmp(scheme, "http") != 0 && pg_strcasecmp(scheme, "https") != 0))
		problem = "the scheme must be http or https";
	else if (curl_url_get(u, CURLUPART_HOST, &hostpart, 0) != CURLUE_OK || hostpart[0] == '\0')
		problem = "the URL has no host";
	else if (curl_url_get(u, CURLUPART_FRAGMENT, &fragment, 0) == CURLUE_OK)
		problem = "the URL must not have a #fragment";
	else if (strpbrk(url, " \t\r\n") != NULL)
		problem = "the URL contains white space";
	else
		*host = pstrdup(hostpart);
	curl_free(scheme);
	curl_free(hostpart);
	curl_free(fragment);
	return problem;
}

/*
 * courier_validate_endpoint
 *		courier._validate_endpoint(endpoint, format): an absolute http(s) URL
 *		with a host, parsed by the libcurl that will later send to it, whose
 *		host the endpoint policy does not refuse outright (literal addresses
 *		and localhost are judged here; names only at connect time).
 */
Datum
courier_validate_endpoint(PG_FUNCTION_ARGS)
{
	char	   *url = text_to_cstring(PG_GETARG_TEXT_PP(0));
	CURLU	   *u = curl_url();
	CURLUcode	rc;
	char	   *host_copy = NULL;
	const char *problem;

	/* (rc decides below whether the URL can be shown, redacted) */
	problem = url_shape_problem(url);
	rc = problem ? CURLUE_MALFORMED_INPUT : curl_url_set(u, CURLUPART_URL, url, 0);
	if (problem == NULL)
		problem = rc != CURLUE_OK ? curl_url_problem(rc) : parsed_url_problem(u, url, &host_copy);
	curl_url_cleanup(u);
	/* the endpoint policy, on what can be known without resolving names */
	if (host_copy != NULL)
		courier_endpoint_check_host(host_copy, courier_redact_text(url));
	if (problem)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 rc == CURLUE_OK
				 ? errmsg("invalid endpoint URL \"%s\": %s", courier_redact_text(url), problem)
				 : errmsg("invalid endpoint URL: %s", problem),
				 errhint("Use an absolute URL such as https://hooks.example.com/events%s.",
						 strncmp(text_to_cstring(PG_GETARG_TEXT_PP(1)), "kafka_rest_", 11) == 0
						 ? " (for Kafka REST: the proxy's base URL, e.g. http://kafka-rest:8082)" : "")));
	PG_RETURN_VOID();
}
