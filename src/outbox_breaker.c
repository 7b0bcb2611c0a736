/*-------------------------------------------------------------------------
 *
 * outbox_breaker.c
 *	  Circuit breakers, one per endpoint (scheme://host:port/path: what an
 *	  outbox points at), in shared memory so that every database's worker
 *	  sees the same state; a Retry-After answer holds every endpoint of
 *	  its origin (scheme://host:port).
 *
 * Scopes: a failing /bad must not stall a healthy /ok on the same server,
 * so breakers count per endpoint.  A 429 or 503 with Retry-After is the
 * server's pacing, not a failure: it holds every outbox sending to that
 * origin until the given time (the CloudEvents HTTP webhook spec's MUST),
 * capped at COURIER_RETRY_AFTER_MAX_S (http.h).
 *
 * closed --(breaker_failure_threshold consecutive failures)--> open
 * open --(breaker_reset_ms elapsed)--> half-open: exactly one probe request
 * half-open --probe succeeds--> closed;  --probe fails--> open again
 *
 * While a breaker is open its outboxes send nothing: rows wait without
 * spending attempts.  A failure here is the endpoint not answering properly
 * (connection error, timeout, 408, 425, 429, 5xx); a permanent rejection
 * such as 400 is an answer, and counts as a success for the breaker.
 *
 * Who may see what: the origins in use are the endpoints of every role's
 * outboxes.  courier.breakers() lists them for pg_monitor only;
 * courier._breaker_state(origin) answers pg_monitor members, and others
 * only for the origin of an outbox they can see (courier.outboxes under its
 * row-level security, read in the caller's identity); for any other origin
 * it answers NULL, as for an origin without a breaker.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "funcapi.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "pg_courier.h"
#include "outbox_breaker.h"
#include "outbox_registry.h"
#include "owner_exec.h"

#define COURIER_MAX_BREAKERS	1024
#define ORIGIN_LEN				512
/* a breaker no worker looked up for this long serves no outbox: reusable */
#define BREAKER_IDLE_MS			60000

struct CourierBreaker
{
	slock_t		mutex;
	char		origin[ORIGIN_LEN]; /* "" while unused */
	Oid			dboid;			/* the database whose worker created it */
	TimestampTz last_used_at;	/* last courier_breaker_for() */
	BreakerState state;
	int			consecutive_failures;
	bool		probe_inflight;
	TimestampTz probe_started_at;
	TimestampTz opened_at;
	TimestampTz last_change_at;
	uint64		opens;
	uint64		successes;
	uint64		failures;
	TimestampTz hold_until;		/* Retry-After: nothing is sent before this */
};

typedef struct BreakerTable
{
	slock_t		mutex;			/* allocation of entries */
	CourierBreaker entries[COURIER_MAX_BREAKERS];
} BreakerTable;

static BreakerTable *breakers = NULL;

int			courier_breaker_failure_threshold = 5;
int			courier_breaker_reset_ms = 30000;

static const char *const state_names[] = {"closed", "open", "half-open"};

PG_FUNCTION_INFO_V1(courier_breakers);
PG_FUNCTION_INFO_V1(courier_origin);
PG_FUNCTION_INFO_V1(courier_breaker_state);

/*
 * courier_breaker_define_gucs
 *		The breaker's settings (reload).
 */
void
courier_breaker_define_gucs(void)
{
	DefineCustomIntVariable("courier.breaker_failure_threshold",
							"Consecutive failed requests to an endpoint that open its circuit breaker.",
							"0 disables circuit breaking.",
							&courier_breaker_failure_threshold,
							5, 0, 1000000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.breaker_reset_ms",
							"How long an open circuit breaker waits before one probe request.",
							NULL,
							&courier_breaker_reset_ms,
							30000, 10, 24 * 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
}

Size
courier_breaker_shmem_size(void)
{
	return sizeof(BreakerTable);
}

/*
 * courier_breaker_shmem_init
 *		Create or attach the breaker table (caller holds AddinShmemInitLock).
 */
void
courier_breaker_shmem_init(void)
{
	bool		found;

	breakers = ShmemInitStruct("pg_courier breakers", sizeof(BreakerTable), &found);
	if (found)
		return;
	memset(breakers, 0, sizeof(BreakerTable));
	SpinLockInit(&breakers->mutex);
	for (int i = 0; i < COURIER_MAX_BREAKERS; i++)
		SpinLockInit(&breakers->entries[i].mutex);
}

/*
 * courier_origin_text
 *		scheme://host:port of a URL (palloc'd), "" if it does not parse.
 *		Credentials, path and query are not part of it.
 */
char *
courier_origin_text(const char *url)
{
	CURLU	   *u = curl_url();
	char	   *scheme = NULL;
	char	   *host = NULL;
	char	   *port = NULL;
	char	   *result;

	if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
		curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
		curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
		curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK)
		result = psprintf("%s://%s:%s", scheme, host, port);
	else
		result = pstrdup("");
	curl_free(scheme);
	curl_free(host);
	curl_free(port);
	curl_url_cleanup(u);
	return result;
}

/*
 * Entries are created by the workers for the endpoints of the outboxes they
 * serve, and any role can create outboxes with new ones: so a database
 * creates at most courier.max_outboxes_per_database entries, and entries
 * nobody looked up for BREAKER_IDLE_MS (their outboxes are gone) are reused,
 * least recently used first.  An endpoint without an entry simply has no
 * breaker; delivery is unaffected.
 */

/*
 * take_entry
 *		Give entry b to origin, from a clean state (caller holds the table's
 *		mutex).
 */
static void
take_entry(CourierBreaker *b, const char *origin, TimestampTz now)
{
	SpinLockAcquire(&b->mutex);
	strlcpy(b->origin, origin, ORIGIN_LEN);
	b->dboid = MyDatabaseId;
	b->state = BREAKER_CLOSED;
	b->consecutive_failures = 0;
	b->probe_inflight = false;
	b->probe_started_at = b->opened_at = 0;
	b->opens = b->successes = b->failures = 0;
	b->hold_until = 0;
	b->last_change_at = b->last_used_at = now;
	SpinLockRelease(&b->mutex);
}

/*
 * courier_breaker_for
 *		The breaker of an origin, created on first use; NULL when none can be
 *		had (the endpoint then simply has no breaker).
 */
CourierBreaker *
courier_breaker_for(const char *origin)
{
	CourierBreaker *result = NULL;
	CourierBreaker *free_entry = NULL;
	CourierBreaker *idle_any = NULL;
	CourierBreaker *idle_mine = NULL;
	int			mine = 0;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz idle_before = TimestampTzPlusMilliseconds(now, -BREAKER_IDLE_MS);

	if (breakers == NULL || origin[0] == '\0')
		return NULL;
	SpinLockAcquire(&breakers->mutex);
	for (int i = 0; i < COURIER_MAX_BREAKERS && result == NULL; i++)
	{
		CourierBreaker *b = &breakers->entries[i];

		if (b->origin[0] == '\0')
		{
			if (free_entry == NULL)
				free_entry = b;
			continue;
		}
		if (strncmp(b->origin, origin, ORIGIN_LEN - 1) == 0)
		{
			result = b;
			b->last_used_at = now;
			break;
		}
		mine += (b->dboid == MyDatabaseId);
		if (b->last_used_at < idle_before && (idle_any == NULL || b->last_used_at < idle_any->last_used_at))
			idle_any = b;
		if (b->dboid == MyDatabaseId && b->last_used_at < idle_before &&
			(idle_mine == NULL || b->last_used_at < idle_mine->last_used_at))
			idle_mine = b;
	}
	if (result == NULL)
	{
		if (mine >= courier_max_outboxes_per_database)
			result = idle_mine;
		else
			result = free_entry ? free_entry : idle_any;
		if (result != NULL)
			take_entry(result, origin, now);
	}
	SpinLockRelease(&breakers->mutex);
	return result;
}

/*
 * courier_breaker_admit
 *		How many new requests the endpoint may get now: -1 (no limit:
 *		closed), 0 (open, or a probe is already out), or 1 (this is the
 *		probe: the caller must report its outcome with was_probe = true, or
 *		give it back with courier_breaker_release_probe).
 */
int
courier_breaker_admit(CourierBreaker *b)
{
	TimestampTz now = GetCurrentTimestamp();
	int			allowed = -1;

	if (b == NULL || courier_breaker_failure_threshold == 0)
		return -1;
	SpinLockAcquire(&b->mutex);
	if (b->state == BREAKER_OPEN &&
		TimestampDifferenceExceeds(b->opened_at, now, courier_breaker_reset_ms))
	{
		b->state = BREAKER_HALF_OPEN;
		b->last_change_at = now;
		b->probe_inflight = false;
	}
	if (b->state == BREAKER_OPEN)
		allowed = 0;
	else if (b->state == BREAKER_HALF_OPEN)
	{
		/* a probe lost with a crashed worker must not block forever */
		if (b->probe_inflight &&
			!TimestampDifferenceExceeds(b->probe_started_at, now, courier_http_timeout_ms + 5000))
			allowed = 0;
		else
		{
			b->probe_inflight = true;
			b->probe_started_at = now;
			allowed = 1;
		}
	}
	SpinLockRelease(&b->mutex);
	return allowed;
}

/*
 * courier_breaker_release_probe
 *		Give back a probe that was not used (nothing to send).
 */
void
courier_breaker_release_probe(CourierBreaker *b)
{
	if (b == NULL)
		return;
	SpinLockAcquire(&b->mutex);
	b->probe_inflight = false;
	SpinLockRelease(&b->mutex);
}

/*
 * courier_breaker_record
 *		Count one finished request against its endpoint's breaker.
 */
void
courier_breaker_record(CourierBreaker *b, bool success, bool was_probe)
{
	TimestampTz now = GetCurrentTimestamp();

	if (b == NULL)
		return;
	SpinLockAcquire(&b->mutex);
	if (was_probe)
		b->probe_inflight = false;
	if (success)
	{
		b->successes++;
		b->consecutive_failures = 0;
		if (b->state != BREAKER_CLOSED && (was_probe || b->state == BREAKER_HALF_OPEN))
		{
			b->state = BREAKER_CLOSED;
			b->last_change_at = now;
		}
	}
	else
	{
		b->failures++;
		b->consecutive_failures++;
		if ((b->state == BREAKER_HALF_OPEN && was_probe) ||
			(b->state == BREAKER_CLOSED && courier_breaker_failure_threshold > 0 &&
			 b->consecutive_failures >= courier_breaker_failure_threshold))
		{
			b->state = BREAKER_OPEN;
			b->opened_at = b->last_change_at = now;
			b->opens++;
		}
	}
	SpinLockRelease(&b->mutex);
}

/*
 * courier_breaker_next_change
 *		When an open breaker will let a probe through (0 when not open).
 */
TimestampTz
courier_breaker_next_change(CourierBreaker *b)
{
	TimestampTz t = 0;

	if (b == NULL)
		return 0;
	SpinLockAcquire(&b->mutex);
	if (b->state == BREAKER_OPEN)
		t = TimestampTzPlusMilliseconds(b->opened_at, courier_breaker_reset_ms);
	SpinLockRelease(&b->mutex);
	return t;
}

/*
 * courier_endpoint_identity
 *		scheme://host:port/path of a URL (palloc'd): what a breaker counts
 *		for.  No credentials, query or fragment; "" if it does not parse.
 */
char *
courier_endpoint_identity(const char *url)
{
	CURLU	   *u = curl_url();
	char	   *path = NULL;
	char	   *origin = courier_origin_text(url);
	char	   *result = origin;

	if (origin[0] != '\0' && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
		curl_url_get(u, CURLUPART_PATH, &path, 0) == CURLUE_OK)
		result = psprintf("%s%s", origin, path);
	curl_free(path);
	curl_url_cleanup(u);
	return result;
}

/*
 * courier_breaker_hold_origin
 *		The origin (scheme://host:port) answered Retry-After: none of its
 *		endpoints gets anything before until.  (An endpoint without an
 *		entry has no hold, as it has no breaker.)
 */
void
courier_breaker_hold_origin(const char *origin, TimestampTz until)
{
	size_t		len = strlen(origin);

	if (breakers == NULL || len == 0)
		return;
	for (int i = 0; i < COURIER_MAX_BREAKERS; i++)
	{
		CourierBreaker *b = &breakers->entries[i];

		SpinLockAcquire(&b->mutex);
		if (strncmp(b->origin, origin, len) == 0 && (b->origin[len] == '/' || b->origin[len] == '\0') &&
			until > b->hold_until)
			b->hold_until = until;
		SpinLockRelease(&b->mutex);
	}
}

/*
 * courier_breaker_held_until
 *		The end of the endpoint's Retry-After hold, or 0 when it is not held.
 */
TimestampTz
courier_breaker_held_until(CourierBreaker *b)
{
	TimestampTz t;

	if (b == NULL)
		return 0;
	SpinLockAcquire(&b->mutex);
	t = b->hold_until;
	SpinLockRelease(&b->mutex);
	return t > GetCurrentTimestamp() ? t : 0;
}

/*
 * courier_breakers
 *		courier.breakers(): every endpoint's breaker.
 */
Datum
courier_breakers(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	if (breakers == NULL)
		PG_RETURN_VOID();
	for (int i = 0; i < COURIER_MAX_BREAKERS; i++)
	{
		CourierBreaker c;
		Datum		values[8];
		bool		nulls[8] = {0};

		SpinLockAcquire(&breakers->entries[i].mutex);
		memcpy(&c, &breakers->entries[i], sizeof(c));
		SpinLockRelease(&breakers->entries[i].mutex);
		if (c.origin[0] == '\0')
			continue;
		values[0] = CStringGetTextDatum(c.origin);
		values[1] = CStringGetTextDatum(state_names[c.state]);
		values[2] = Int32GetDatum(c.consecutive_failures);
		values[3] = TimestampTzGetDatum(c.opened_at);
		nulls[3] = (c.opened_at == 0);
		values[4] = Int64GetDatum((int64) c.opens);
		values[5] = Int64GetDatum((int64) c.successes);
		values[6] = Int64GetDatum((int64) c.failures);
		values[7] = TimestampTzGetDatum(c.last_change_at);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	PG_RETURN_VOID();
}

/*
 * origin_visible
 *		May the caller learn the breaker state of this origin?  Members of
 *		pg_monitor may; others when an outbox they can see (row-level
 *		security of courier.outboxes, as the caller) has this origin.
 */
static bool
origin_visible(text *origin)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1] = {PointerGetDatum(origin)};
	bool		visible;

	if (has_privs_of_role(GetUserId(), ROLE_PG_MONITOR))
		return true;
	SPI_connect();
	if (SPI_execute_with_args(psprintf("SELECT 1 FROM %s o WHERE %s(o.endpoint) OPERATOR(pg_catalog.=) $1 LIMIT 1",
									   courier_qualified("outboxes"), courier_qualified("_origin")),
							  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "pg_courier: could not read courier.outboxes");
	visible = (SPI_processed > 0);
	SPI_finish();
	return visible;
}

/*
 * courier_breaker_state
 *		courier._breaker_state(origin): closed / open / half-open, or NULL
 *		when the endpoint has no breaker yet or is not one of the caller's
 *		(see the header comment).  Looks up only the origin asked for: the
 *		list of every endpoint is courier.breakers(), for monitors.
 */
Datum
courier_breaker_state(PG_FUNCTION_ARGS)
{
	char	   *origin = text_to_cstring(PG_GETARG_TEXT_PP(0));
	BreakerState state = BREAKER_CLOSED;
	bool		found = false;

	if (breakers == NULL || !origin_visible(PG_GETARG_TEXT_PP(0)))
		PG_RETURN_NULL();
	for (int i = 0; i < COURIER_MAX_BREAKERS && !found; i++)
	{
		CourierBreaker *b = &breakers->entries[i];

		SpinLockAcquire(&b->mutex);
		if (b->origin[0] != '\0' && strcmp(b->origin, origin) == 0)
		{
			state = b->state;
			found = true;
		}
		SpinLockRelease(&b->mutex);
	}
	if (!found)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(state_names[state]));
}

/*
 * courier_origin
 *		courier._origin(url): the breaker identity of an endpoint.
 */
Datum
courier_origin(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(courier_endpoint_identity(text_to_cstring(PG_GETARG_TEXT_PP(0)))));
}
