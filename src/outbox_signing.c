/*-------------------------------------------------------------------------
 *
 * outbox_signing.c
 *	  Standard Webhooks signatures (standardwebhooks.com): the outbox option
 *	  "signing_secret" makes every request carry webhook-id,
 *	  webhook-timestamp and webhook-signature, so that a receiver can tell
 *	  that a request came from us and was not altered or replayed late.
 *
 * A secret is "whsec_" followed by the base64 of 24 to 64 bytes; the HMAC
 * key is those bytes.  While a secret is being rotated the option holds a
 * JSON array of secrets and every request is signed with each of them
 * (space-separated "v1,<base64>" signatures), so receivers holding either
 * secret accept it.  The signed content is "{id}.{timestamp}.{body}" over
 * the exact body bytes sent; the HMAC is PostgreSQL's (common/hmac.h).
 *
 * Secrets are credentials: no message here quotes one, the worker keeps
 * the decoded keys only in the outbox's settings context, and the views
 * and metrics never read the option (see doc/security.md).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/base64.h"
#include "common/cryptohash.h"
#include "common/hmac.h"
#include "common/sha2.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "pg_courier.h"
#include "outbox_worker.h"

#define SECRET_PREFIX		"whsec_"
#define SECRET_MIN_BYTES	24
#define SECRET_MAX_BYTES	64
#define MAX_SECRETS			8

PG_FUNCTION_INFO_V1(courier_validate_signing_secret);

/*
 * decode_secret
 *		The key bytes of a "whsec_..." secret into key (room for
 *		SECRET_MAX_BYTES); returns their number, or -1 when the text is not
 *		such a secret.
 */
static int
decode_secret(const char *secret, uint8 *key)
{
	const char *b64;
	int			len;
	int			declen;
	courier_b64_byte *buf;
	int			n;

	if (strncmp(secret, SECRET_PREFIX, strlen(SECRET_PREFIX)) != 0)
		return -1;
	b64 = secret + strlen(SECRET_PREFIX);
	len = strlen(b64);
	if (len == 0 || len > 4 * ((SECRET_MAX_BYTES + 2) / 3))
		return -1;
	declen = pg_b64_dec_len(len);
	buf = palloc(declen + 1);
	n = pg_b64_decode(b64, len, buf, declen);
	if (n < SECRET_MIN_BYTES || n > SECRET_MAX_BYTES)
		n = -1;
	else
		memcpy(key, buf, n);
	pfree(buf);
	return n;
}

/*
 * courier_validate_signing_secret
 *		courier._validate_signing_secret(text[]): every element must be a
 *		secret (the array holds one, or several while rotating).  The error
 *		says which element is wrong, never what it holds.
 */
Datum
courier_validate_signing_secret(PG_FUNCTION_ARGS)
{
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(0);
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	uint8		key[SECRET_MAX_BYTES];

	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	if (n < 1 || n > MAX_SECRETS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("outbox option \"signing_secret\" must hold 1 to %d secrets", MAX_SECRETS),
				 errhint("Use one secret, or an array of the old and the new one while rotating.")));
	for (int i = 0; i < n; i++)
	{
		if (nulls[i] || decode_secret(TextDatumGetCString(elems[i]), key) < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 n == 1
					 ? errmsg("outbox option \"signing_secret\" is not a valid secret")
					 : errmsg("outbox option \"signing_secret\": secret %d is not a valid secret", i + 1),
					 errdetail("A secret is \"whsec_\" followed by the base64 of %d to %d random bytes.",
							   SECRET_MIN_BYTES, SECRET_MAX_BYTES),
					 errhint("For example: SELECT 'whsec_' || encode(gen_random_bytes(32), 'base64') (pgcrypto).")));
	}
	explicit_bzero(key, sizeof(key));
	PG_RETURN_VOID();
}

/*
 * courier_signing_refresh
 *		Decode the outbox's secrets ("whsec_..." lines, as the catalog read
 *		returns them; "" or NULL: no signing) into ob->settings.  A secret
 *		that does not decode (it was validated when stored) is skipped.
 */
void
courier_signing_refresh(OutboxState *ob, char *lines)
{
	char	   *save;
	char	   *line;

	ob->nsigning_keys = 0;
	ob->signing_keys = NULL;
	if (lines == NULL || lines[0] == '\0')
		return;
	ob->signing_keys = MemoryContextAllocZero(ob->settings, sizeof(CourierSigningKey) * MAX_SECRETS);
	for (line = strtok_r(lines, "\n", &save); line && ob->nsigning_keys < MAX_SECRETS;
		 line = strtok_r(NULL, "\n", &save))
	{
		CourierSigningKey *k = &ob->signing_keys[ob->nsigning_keys];

		k->len = decode_secret(line, k->key);
		if (k->len > 0)
			ob->nsigning_keys++;
	}
	explicit_bzero(lines, strlen(lines));
}

/*
 * sign_one
 *		Append "v1,<base64 HMAC-SHA256(key, id.timestamp.body)>" to buf.
 */
static void
sign_one(StringInfo buf, const CourierSigningKey *k, const char *prefix, const char *body, size_t len)
{
	pg_hmac_ctx *ctx = pg_hmac_create(PG_SHA256);
	uint8		mac[PG_SHA256_DIGEST_LENGTH];
	char		b64[64];
	int			n;

	if (ctx == NULL)
		elog(ERROR, "pg_courier: out of memory signing a request");
	if (pg_hmac_init(ctx, k->key, k->len) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) prefix, strlen(prefix)) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) body, len) < 0 ||
		pg_hmac_final(ctx, mac, sizeof(mac)) < 0)
	{
		pg_hmac_free(ctx);
		elog(ERROR, "pg_courier: could not compute a request signature");
	}
	pg_hmac_free(ctx);
	n = pg_b64_encode((const courier_b64_byte *) mac, sizeof(mac), b64, sizeof(b64) - 1);
	if (n < 0)
		elog(ERROR, "pg_courier: could not encode a request signature");
	b64[n] = '\0';
	appendStringInfo(buf, "%sv1,%s", buf->len > 0 ? " " : "", b64);
}

/*
 * courier_signing_headers
 *		The three Standard Webhooks header lines of a request to add to
 *		headers (room for three more), in the current memory context.
 *		msg_id is stable across retries (the event id, or the batch id);
 *		the timestamp is this attempt's.
 */
int
courier_signing_headers(const OutboxState *ob, const char *msg_id, const char *body, size_t len,
						const char **headers)
{
	long		ts;
	char	   *prefix;
	StringInfoData sig;

	if (ob->nsigning_keys == 0)
		return 0;
	ts = (long) ((GetCurrentTimestamp() / USECS_PER_SEC) +
				 ((POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY));
	prefix = psprintf("%s.%ld.", msg_id, ts);
	initStringInfo(&sig);
	for (int i = 0; i < ob->nsigning_keys; i++)
		sign_one(&sig, &ob->signing_keys[i], prefix, body, len);
	headers[0] = psprintf("webhook-id: %s", msg_id);
	headers[1] = psprintf("webhook-timestamp: %ld", ts);
	headers[2] = psprintf("webhook-signature: %s", sig.data);
	return 3;
}
