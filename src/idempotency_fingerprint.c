/*-------------------------------------------------------------------------
 *
 * idempotency_fingerprint.c
 *	  courier.request_fingerprint(method, path, body): a stable SHA-256 of a
 *	  request, so that a retry with the same Idempotency-Key but a different
 *	  request is recognised (HTTP 422).
 *
 * What is hashed, in order:
 *	  - the method, ASCII upper-cased, and the path, each as a netstring
 *		("<length>:<bytes>,") so that no choice of values can make two
 *		different (method, path) pairs hash the same bytes;
 *	  - the body in a canonical JSON text: jsonb already sorts object keys
 *		(shorter first, then bytewise) and drops duplicate keys and
 *		whitespace, and numbers are written without insignificant zeroes
 *		(1.0 and 1 are the same number) - or "~" for a NULL (absent) body,
 *		which is distinct from the JSON value null.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/cryptohash.h"
#include "common/sha2.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "pg_courier.h"

PG_FUNCTION_INFO_V1(courier_request_fingerprint);

/*
 * append_scalar
 *		Canonical text of one JSON scalar.
 */
static void
append_scalar(StringInfo out, JsonbValue *v)
{
	switch (v->type)
	{
		case jbvNull:
			appendStringInfoString(out, "null");
			break;
		case jbvBool:
			appendStringInfoString(out, v->val.boolean ? "true" : "false");
			break;
		case jbvString:
			escape_json(out, pnstrdup(v->val.string.val, v->val.string.len));
			break;
		case jbvNumeric:
			appendStringInfoString(out, numeric_normalize(v->val.numeric));
			break;
		default:
			elog(ERROR, "pg_courier: unexpected jsonb value type %d", (int) v->type);
	}
}

/*
 * canonical_json
 *		Write a jsonb document as compact canonical JSON text.
 */
static void
canonical_json(StringInfo out, Jsonb *jb)
{
	JsonbIterator *it = JsonbIteratorInit(&jb->root);
	JsonbIteratorToken tok;
	JsonbIteratorToken prev = WJB_DONE;
	JsonbValue	v;
	bool		raw_scalar = false;

	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		/* a separator before anything that is not the first in its container */
		if ((tok == WJB_KEY || tok == WJB_ELEM ||
			 tok == WJB_BEGIN_ARRAY || tok == WJB_BEGIN_OBJECT) &&
			prev != WJB_DONE && prev != WJB_BEGIN_ARRAY &&
			prev != WJB_BEGIN_OBJECT && prev != WJB_KEY)
			appendStringInfoChar(out, ',');

		switch (tok)
		{
			case WJB_BEGIN_ARRAY:
				/* a top-level scalar is stored as a one-element "raw" array */
				if (v.val.array.rawScalar)
					raw_scalar = true;
				else
					appendStringInfoChar(out, '[');
				break;
			case WJB_END_ARRAY:
				if (!raw_scalar)
					appendStringInfoChar(out, ']');
				break;
			case WJB_BEGIN_OBJECT:
				appendStringInfoChar(out, '{');
				break;
			case WJB_END_OBJECT:
				appendStringInfoChar(out, '}');
				break;
			case WJB_KEY:
				append_scalar(out, &v);
				appendStringInfoChar(out, ':');
				break;
			case WJB_VALUE:
			case WJB_ELEM:
				append_scalar(out, &v);
				break;
			default:
				break;
		}
		prev = tok;
	}
}

/*
 * append_netstring
 *		"<length>:<bytes>," - self-delimiting, whatever the bytes are.
 */
static void
append_netstring(StringInfo out, const char *s, int len)
{
	appendStringInfo(out, "%d:", len);
	appendBinaryStringInfo(out, s, len);
	appendStringInfoChar(out, ',');
}

/*
 * courier_request_fingerprint
 *		courier.request_fingerprint(method text, path text, body jsonb)
 *		RETURNS text: 64 lower-case hex digits.
 */
Datum
courier_request_fingerprint(PG_FUNCTION_ARGS)
{
	StringInfoData buf;
	char	   *method;
	text	   *path;
	pg_cryptohash_ctx *ctx;
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	char		hex[PG_SHA256_DIGEST_LENGTH * 2 + 1];

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("request method and path must not be NULL"),
				 errhint("Only the body may be NULL (a request without a body).")));
	method = text_to_cstring(PG_GETARG_TEXT_PP(0));
	path = PG_GETARG_TEXT_PP(1);
	if (method[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("request method must not be empty"),
				 errhint("For example 'POST'.")));
	for (char *p = method; *p; p++)
		*p = pg_ascii_toupper((unsigned char) *p);

	initStringInfo(&buf);
	append_netstring(&buf, method, strlen(method));
	append_netstring(&buf, VARDATA_ANY(path), VARSIZE_ANY_EXHDR(path));
	if (PG_ARGISNULL(2))
		appendStringInfoChar(&buf, '~');
	else
		canonical_json(&buf, PG_GETARG_JSONB_P(2));

	ctx = pg_cryptohash_create(PG_SHA256);
	if (pg_cryptohash_init(ctx) < 0 ||
		pg_cryptohash_update(ctx, (uint8 *) buf.data, buf.len) < 0 ||
		pg_cryptohash_final(ctx, digest, sizeof(digest)) < 0)
		elog(ERROR, "pg_courier: could not compute SHA-256: %s", pg_cryptohash_error(ctx));
	pg_cryptohash_free(ctx);

	hex_encode((const char *) digest, sizeof(digest), hex);
	hex[sizeof(hex) - 1] = '\0';
	PG_RETURN_TEXT_P(cstring_to_text(hex));
}
