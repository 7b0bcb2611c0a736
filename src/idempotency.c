/*-------------------------------------------------------------------------
 *
 * idempotency.c
 *	  API-boundary idempotency keys: courier.idempotency_begin() and what
 *	  the key functions share (complete, abandon and extend are in
 *	  idempotency_finish.c).
 *
 * A key is a row of courier.idempotency_keys, primary key (scope, key),
 * either 'in_progress' (owned by the request holding its lease) or
 * 'completed' (its stored status and response are replayed).
 *
 * The hard part is two requests racing on a new key.  INSERT ... ON
 * CONFLICT DO NOTHING alone is not enough: when the conflicting row was
 * inserted by a transaction that has not committed yet, the second INSERT
 * waits for that transaction to end - for the whole duration of the first
 * request in the single-transaction usage shape.  So every write of a key
 * is made under a transaction-level lock on a 64-bit hash of (scope, key),
 * and begin() only *tries* that lock: whoever does not get it is told
 * 'in_progress' at once.  Holding the lock until commit also means the
 * winner's snapshot, taken after the lock, sees every earlier holder's
 * committed row (locks are released after the commit is visible).
 *
 * Reads need no lock: a committed, live, completed key is replayed by a
 * plain index lookup, so replays never contend with each other.
 *
 * The lock is an advisory lock with its own class (locktag_field4), so it
 * cannot collide with pg_advisory_lock(bigint) or (int, int) keys; it shows
 * up in pg_locks as locktype 'advisory' with objsubid 17225.
 *
 * Key spaces.  A key belongs to a role (column owner, first column of the
 * primary key; see key_space.c): the caller's key space is part of every
 * statement, of the lookup and of the lock, so another role's key is
 * invisible: it can be neither replayed nor completed, abandoned or
 * extended, and begin() with the same key starts a key of the caller's own.
 * The functions are SECURITY INVOKER so that they can see who calls them
 * (a SECURITY DEFINER function only sees its definer): each one takes the
 * caller's key space first, then acts as the owner of the keys table (the
 * extension's owner) with SECURITY_LOCAL_USERID_CHANGE, as fmgr does for
 * SECURITY DEFINER functions, and switches back before returning (an error
 * restores the identity through the (sub)transaction abort).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "mb/pg_wchar.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/syscache.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "pg_courier.h"
#include "idempotency.h"
#include "key_space.h"

PG_FUNCTION_INFO_V1(courier_idempotency_begin);

/* Advisory lock class of key locks ("CI"); user advisory locks use 1 and 2. */
#define IDEM_LOCK_CLASS		17225

/* Longest accepted key and scope, in characters (Stripe's limit for keys). */
#define IDEM_MAX_CHARS		255

/*
 * The key functions act as the table's owner without a SET search_path
 * (that costs a quarter of a replay): instead every name and every operator
 * in their statements is schema-qualified (idempotency.h), so that no object
 * in the caller's search_path can be picked up, even when a statement is
 * re-planned.
 */
/* fingerprint IS NOT DISTINCT FROM $3, spelled without an unqualified "=" */
#define SAME_FP	"COALESCE(fingerprint " EQ " $3, fingerprint IS NULL AND $3 IS NULL)"

/* Columns of begin()'s result row. */
#define BEGIN_NCOLS			7

static SPIPlanPtr plan_insert = NULL;
static SPIPlanPtr plan_recover = NULL;
static SPIPlanPtr plan_reset = NULL;

/* What begin()'s read of a key found, evaluated against one "now". */
typedef struct KeyState
{
	bool		found;
	bool		completed;
	bool		same_fingerprint;
	bool		live;			/* not past expires_at */
	bool		lease_live;		/* in progress and its lease not expired */
	Datum		status_code;
	bool		status_null;
	Datum		response;
	bool		response_null;
	Datum		lease_expires_at;
	bool		lease_expires_null;
	Datum		expires_at;
	Datum		attempt;
} KeyState;

/* Outcome of begin(): one of these words and the columns that go with it. */
typedef struct BeginResult
{
	const char *outcome;
	Datum		values[BEGIN_NCOLS];
	bool		nulls[BEGIN_NCOLS];
} BeginResult;

/*
 * courier_idem_plan
 *		Prepare a statement once per backend and keep it.  The plan cache
 *		re-plans it when the tables change (e.g. the extension is recreated).
 */
SPIPlanPtr
courier_idem_plan(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan;

	if (*slot != NULL)
		return *slot;
	plan = SPI_prepare(sql, nargs, argtypes);
	if (plan == NULL)
		elog(ERROR, "pg_courier: could not prepare \"%s\": %s",
			 sql, SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	*slot = plan;
	return plan;
}

/*
 * idem_enter
 *		Take the caller's key space, then act as the owner of the keys table
 *		(the caller cannot write it) until courier_idem_leave().
 */
void
courier_idem_enter(IdemCall *c)
{
	Oid			nsp = get_namespace_oid(COURIER_SCHEMA, false);
	HeapTuple	tp;
	Oid			owner;

	c->space = courier_key_space();
	c->relid = get_relname_relid("idempotency_keys", nsp);
	if (!OidIsValid(c->relid))
		elog(ERROR, "pg_courier: table courier.idempotency_keys is missing");
	tp = SearchSysCache1(RELOID, ObjectIdGetDatum(c->relid));
	if (!HeapTupleIsValid(tp))
		elog(ERROR, "pg_courier: table courier.idempotency_keys is missing");
	owner = ((Form_pg_class) GETSTRUCT(tp))->relowner;
	ReleaseSysCache(tp);
	GetUserIdAndSecContext(&c->save_user, &c->save_sec);
	SetUserIdAndSecContext(owner, c->save_sec | SECURITY_LOCAL_USERID_CHANGE);
}

/*
 * idem_leave
 *		Back to the caller's identity.
 */
void
courier_idem_leave(IdemCall *c)
{
	SetUserIdAndSecContext(c->save_user, c->save_sec);
}

/*
 * check_name
 *		Validate a key or scope argument: the NULL/empty key is the HTTP 400
 *		case, so say precisely what was wrong.
 */
text *
courier_idem_check_name(FunctionCallInfo fcinfo, int argno, const char *what, bool empty_ok)
{
	text	   *t;
	int			len;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("idempotency %s must not be NULL", what),
				 errhint(empty_ok ? "Use '' for the default scope." :
						 "Pass the client's Idempotency-Key; a request without one cannot be deduplicated (HTTP 400).")));
	t = PG_GETARG_TEXT_PP(argno);
	len = VARSIZE_ANY_EXHDR(t);
	if (len == 0 && !empty_ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency %s must not be empty", what),
				 errhint("Pass the client's Idempotency-Key; a request without one cannot be deduplicated (HTTP 400).")));
	if (len > IDEM_MAX_CHARS &&
		pg_mbstrlen_with_len(VARDATA_ANY(t), len) > IDEM_MAX_CHARS)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("idempotency %s is too long (%d characters)", what,
						pg_mbstrlen_with_len(VARDATA_ANY(t), len)),
				 errdetail("At most %d characters are accepted.", IDEM_MAX_CHARS)));
	return t;
}

/*
 * check_interval
 *		A ttl or lease must be given and strictly positive.
 */
Interval *
courier_idem_check_interval(FunctionCallInfo fcinfo, int argno, const char *what)
{
	Interval   *iv;
	Interval	zero = {0};

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("idempotency %s must not be NULL", what)));
	iv = PG_GETARG_INTERVAL_P(argno);
	if (DatumGetInt32(DirectFunctionCall2(interval_cmp, IntervalPGetDatum(iv),
										  IntervalPGetDatum(&zero))) <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency %s must be positive", what),
				 errhint("For example '24 hours' for ttl, '30 seconds' for lease.")));
	return iv;
}

/*
 * key_locktag
 *		The advisory lock tag of (key space, scope, key): 64 bits of hash, so that two
 *		different keys sharing a lock (and one of them seeing a spurious
 *		'in_progress') is practically impossible.
 */
void
courier_idem_locktag(LOCKTAG *tag, Oid space, text *scope, text *key)
{
	uint64		h;

	h = hash_bytes_extended((const unsigned char *) VARDATA_ANY(scope),
							VARSIZE_ANY_EXHDR(scope), (uint64) space);
	h = hash_bytes_extended((const unsigned char *) VARDATA_ANY(key),
							VARSIZE_ANY_EXHDR(key), h);
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h,
						 IDEM_LOCK_CLASS);
}

/* Columns of courier.idempotency_keys, as the install script creates them. */
#define COL_SCOPE			1
#define COL_KEY				2
#define COL_FINGERPRINT		3
#define COL_STATE			4
#define COL_STATUS_CODE		5
#define COL_RESPONSE		6
#define COL_LEASE_EXPIRES	8
#define COL_ATTEMPT			9
#define COL_EXPIRES_AT		12
#define COL_OWNER			13	/* added by 0.2.0 */
#define KEYS_NATTS			13

/*
 * text_equal
 *		Bytewise equality of two text datums (what texteq does under the
 *		deterministic collations a database can have as its default).
 */
static bool
text_equal(Datum a, Datum b)
{
	text	   *ta = DatumGetTextPP(a);
	text	   *tb = DatumGetTextPP(b);

	return VARSIZE_ANY_EXHDR(ta) == VARSIZE_ANY_EXHDR(tb) &&
		memcmp(VARDATA_ANY(ta), VARDATA_ANY(tb), VARSIZE_ANY_EXHDR(ta)) == 0;
}

/*
 * keys_table_outdated
 *		The key table is not the one this library works on: the library was
 *		updated and ALTER EXTENSION ... UPDATE has not run yet (or the table
 *		was changed by hand).
 */
pg_noreturn static void
keys_table_outdated(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("courier.idempotency_keys is not the table this version of pg_courier expects"),
			 errhint("After installing a new pg_courier, run ALTER EXTENSION pg_courier UPDATE in each database.")));
}

/*
 * read_key
 *		Look the key up with a fresh snapshot (as an SPI query would take) and
 *		judge it against "now".  This is the whole of a replay, so it reads the
 *		primary key index directly: a quarter of the cost of an SPI query.
 *		Values are copied out of the buffer into the current (SPI) context.
 */
static void
read_key(KeyState *ks, Oid relid, Datum *args, const char *nulls)
{
	Relation	rel;
	Relation	idx;
	ScanKeyData skey[3];
	SysScanDesc scan;
	Snapshot	snap;
	HeapTuple	tup;
	Datum		v[KEYS_NATTS];
	bool		n[KEYS_NATTS];
	TimestampTz now = DatumGetTimestampTz(args[3]);

	if (!OidIsValid(relid))
		elog(ERROR, "pg_courier: table courier.idempotency_keys is missing");
	memset(ks, 0, sizeof(*ks));
	rel = table_open(relid, AccessShareLock);
	if (RelationGetDescr(rel)->natts != KEYS_NATTS || !OidIsValid(courier_primary_key_index(rel)))
		keys_table_outdated();
	idx = index_open(courier_primary_key_index(rel), AccessShareLock);
	if (idx->rd_index->indnatts != 3 || idx->rd_index->indkey.values[0] != COL_OWNER)
		keys_table_outdated();
	ScanKeyEntryInitialize(&skey[0], 0, COL_OWNER, BTEqualStrategyNumber, InvalidOid,
						   InvalidOid, F_OIDEQ, args[ARG_OWNER]);
	ScanKeyEntryInitialize(&skey[1], 0, COL_SCOPE, BTEqualStrategyNumber, InvalidOid,
						   idx->rd_indcollation[1], F_TEXTEQ, args[0]);
	ScanKeyEntryInitialize(&skey[2], 0, COL_KEY, BTEqualStrategyNumber, InvalidOid,
						   idx->rd_indcollation[2], F_TEXTEQ, args[1]);

	/* see this transaction's earlier writes, and in READ COMMITTED everyone's latest commits */
	CommandCounterIncrement();
	snap = RegisterSnapshot(GetTransactionSnapshot());	/* (a private copy) */
	snap->curcid = GetCurrentCommandId(false);	/* REPEATABLE READ: still see our own writes */
	scan = systable_beginscan(rel, RelationGetRelid(idx), true, snap, 3, skey);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		in_progress;

		heap_deform_tuple(tup, RelationGetDescr(rel), v, n);
		ks->found = true;
		ks->completed = text_equal(v[COL_STATE - 1], CStringGetTextDatum("completed"));
		in_progress = !ks->completed;
		if (n[COL_FINGERPRINT - 1] || nulls[2] == 'n')
			ks->same_fingerprint = n[COL_FINGERPRINT - 1] && nulls[2] == 'n';
		else
			ks->same_fingerprint = text_equal(v[COL_FINGERPRINT - 1], args[2]);
		ks->expires_at = TimestampTzGetDatum(DatumGetTimestampTz(v[COL_EXPIRES_AT - 1]));
		ks->live = DatumGetTimestampTz(v[COL_EXPIRES_AT - 1]) > now;
		ks->lease_expires_null = n[COL_LEASE_EXPIRES - 1];
		if (!ks->lease_expires_null)
			ks->lease_expires_at = TimestampTzGetDatum(DatumGetTimestampTz(v[COL_LEASE_EXPIRES - 1]));
		ks->lease_live = in_progress && !ks->lease_expires_null &&
			DatumGetTimestampTz(v[COL_LEASE_EXPIRES - 1]) > now;
		ks->status_null = n[COL_STATUS_CODE - 1];
		ks->status_code = v[COL_STATUS_CODE - 1];
		ks->response_null = n[COL_RESPONSE - 1];
		if (!ks->response_null)
			ks->response = PointerGetDatum(PG_DETOAST_DATUM_COPY(v[COL_RESPONSE - 1]));
		ks->attempt = v[COL_ATTEMPT - 1];
	}
	systable_endscan(scan);
	UnregisterSnapshot(snap);
	index_close(idx, AccessShareLock);
	table_close(rel, AccessShareLock);
}

/*
 * set_outcome
 *		Fill begin()'s result for an outcome that did not write anything.
 */
static void
set_outcome(BeginResult *r, const char *outcome, KeyState *ks)
{
	r->outcome = outcome;
	for (int i = 0; i < BEGIN_NCOLS; i++)
		r->nulls[i] = true;
	if (strcmp(outcome, "replay") == 0)
	{
		r->values[1] = ks->status_code;
		r->nulls[1] = ks->status_null;
		r->values[2] = ks->response;
		r->nulls[2] = ks->response_null;
		r->values[5] = ks->expires_at;
		r->nulls[5] = false;
		r->values[6] = ks->attempt;
		r->nulls[6] = false;
	}
	else if (strcmp(outcome, "in_progress") == 0 && ks->found && ks->lease_live)
	{
		/* when the holder's lease ends: what a 409 can put in Retry-After */
		r->values[4] = ks->lease_expires_at;
		r->nulls[4] = ks->lease_expires_null;
	}
}

/*
 * write_key
 *		Take the key for this request (we hold its lock): insert a new row,
 *		reset an expired one, or recover one whose holder's lease expired.
 *		Returns false when the row changed since it was read (the caller
 *		reads again); on success fills the 'started' result.
 */
static bool
write_key(BeginResult *r, KeyState *ks, Datum *args, const char *nulls)
{
	static Oid	types[] = {TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, INTERVALOID, INTERVALOID, REGROLEOID};
	SPIPlanPtr	plan;
	int			rc;
	bool		isnull;

	if (!ks->found)
		plan = courier_idem_plan(&plan_insert,
								 "INSERT INTO courier.idempotency_keys AS k "
								 "  (owner, scope, key, fingerprint, state, lease_token, lease_expires_at, "
								 "   attempt, created_at, expires_at) "
								 "VALUES ($7, $1, $2, $3, 'in_progress', pg_catalog.gen_random_uuid(), $4 " PLUS " $5, "
								 "        1, $4, $4 " PLUS " $6) "
								 "ON CONFLICT DO NOTHING "
								 "RETURNING lease_token, lease_expires_at, expires_at, attempt",
								 IDEM_NARGS, types);
	else if (!ks->live)
		plan = courier_idem_plan(&plan_reset,
								 "UPDATE courier.idempotency_keys "
								 "   SET fingerprint = $3, state = 'in_progress', status_code = NULL, "
								 "       response = NULL, lease_token = pg_catalog.gen_random_uuid(), "
								 "       lease_expires_at = $4 " PLUS " $5, attempt = 1, created_at = $4, "
								 "       completed_at = NULL, expires_at = $4 " PLUS " $6 "
								 " WHERE owner " EQ " $7 AND scope " EQ " $1 AND key " EQ " $2 "
								 "   AND expires_at " LE " $4 "
								 "RETURNING lease_token, lease_expires_at, expires_at, attempt",
								 IDEM_NARGS, types);
	else
		plan = courier_idem_plan(&plan_recover,
								 "UPDATE courier.idempotency_keys "
								 "   SET lease_token = pg_catalog.gen_random_uuid(), "
								 "       lease_expires_at = $4 " PLUS " $5, attempt = attempt " PLUS " 1 "
								 " WHERE owner " EQ " $7 AND scope " EQ " $1 AND key " EQ " $2 "
								 "   AND state " EQ " 'in_progress' AND lease_expires_at " LE " $4 AND expires_at " GT " $4 "
								 "   AND " SAME_FP " "
								 "RETURNING lease_token, lease_expires_at, expires_at, attempt",
								 IDEM_NARGS, types);

	rc = SPI_execute_plan(plan, args, nulls, false, 1);
	if (rc != SPI_OK_INSERT_RETURNING && rc != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "pg_courier: could not write courier.idempotency_keys: %s",
			 SPI_result_code_string(rc));
	if (SPI_processed != 1)
		return false;

	r->outcome = "started";
	for (int i = 0; i < 4; i++)
	{
		r->values[3 + i] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
										 i + 1, &isnull);
		r->nulls[3 + i] = isnull;
	}
	r->nulls[0] = r->nulls[1] = r->nulls[2] = true;
	return true;
}

/*
 * begin_tupdesc
 *		begin()'s blessed result descriptor, built once per call site: looking
 *		it up costs more than the rest of a replay.
 */
static TupleDesc
begin_tupdesc(FunctionCallInfo fcinfo)
{
	TupleDesc	tupdesc;
	MemoryContext old;

	if (fcinfo->flinfo->fn_extra != NULL)
		return (TupleDesc) fcinfo->flinfo->fn_extra;
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "pg_courier: idempotency_begin must return a row");
	old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);
	tupdesc = BlessTupleDesc(CreateTupleDescCopy(tupdesc));
	MemoryContextSwitchTo(old);
	fcinfo->flinfo->fn_extra = tupdesc;
	return tupdesc;
}

/*
 * courier_idempotency_begin
 *		courier.idempotency_begin(key, fingerprint, scope, ttl, lease):
 *		claim a key or say what the request should answer instead.
 *
 * Never waits for another request: the key lock is only tried.  The row
 * read before the lock may be stale; a write that finds the row changed
 * (0 rows) reads again, now under the lock, and decides again.
 */
Datum
courier_idempotency_begin(PG_FUNCTION_ARGS)
{
	text	   *key = courier_idem_check_name(fcinfo, 0, "key", false);
	text	   *scope = courier_idem_check_name(fcinfo, 2, "scope", true);
	Interval   *ttl = courier_idem_check_interval(fcinfo, 3, "ttl");
	Interval   *lease = courier_idem_check_interval(fcinfo, 4, "lease");
	MemoryContext caller = CurrentMemoryContext;
	TupleDesc	tupdesc;
	Datum		args[IDEM_NARGS];
	char		nulls[IDEM_NARGS] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	IdemCall	call;
	LOCKTAG		tag;
	LockAcquireResult locked = LOCKACQUIRE_NOT_AVAIL;
	KeyState	ks;
	BeginResult r;
	HeapTuple	result;

	if (DatumGetInt32(DirectFunctionCall2(interval_cmp, IntervalPGetDatum(lease),
										  IntervalPGetDatum(ttl))) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency lease must not be longer than ttl"),
				 errhint("The lease bounds how long a crashed request blocks its key; the ttl is how long the outcome is remembered.")));
	tupdesc = begin_tupdesc(fcinfo);

	args[0] = PointerGetDatum(scope);
	args[1] = PointerGetDatum(key);
	args[2] = PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1);
	nulls[2] = PG_ARGISNULL(1) ? 'n' : ' ';
	args[3] = TimestampTzGetDatum(GetCurrentTimestamp());
	args[4] = IntervalPGetDatum(lease);
	args[5] = IntervalPGetDatum(ttl);

	courier_idem_enter(&call);
	args[ARG_OWNER] = ObjectIdGetDatum(call.space);
	courier_idem_locktag(&tag, call.space, scope, key);
	SPI_connect();
	for (int round = 0;; round++)
	{
		read_key(&ks, call.relid, args, nulls);
		if (ks.found && ks.live)
		{
			if (!ks.same_fingerprint)
			{
				set_outcome(&r, "mismatch", &ks);
				break;
			}
			if (ks.completed)
			{
				set_outcome(&r, "replay", &ks);
				break;
			}
			if (ks.lease_live)
			{
				set_outcome(&r, "in_progress", &ks);
				break;
			}
		}
		/* New, expired, or its holder's lease ran out: we want to write. */
		if (locked == LOCKACQUIRE_NOT_AVAIL)
		{
			locked = LockAcquire(&tag, ExclusiveLock, false, true);
			if (locked == LOCKACQUIRE_NOT_AVAIL)
			{
				/* another transaction is writing this key right now */
				set_outcome(&r, "in_progress", &ks);
				break;
			}
		}
		if (write_key(&r, &ks, args, nulls))
			break;
		if (round >= 2)
		{
			/* cannot happen while we hold the lock; be conservative */
			set_outcome(&r, "in_progress", &ks);
			break;
		}
	}

	/* A lock taken for nothing is released now, not held to commit. */
	if (locked == LOCKACQUIRE_OK && strcmp(r.outcome, "started") != 0)
		LockRelease(&tag, ExclusiveLock, false);

	MemoryContextSwitchTo(caller);
	r.values[0] = CStringGetTextDatum(r.outcome);
	r.nulls[0] = false;
	result = heap_form_tuple(tupdesc, r.values, r.nulls);
	SPI_finish();
	courier_idem_leave(&call);
	PG_RETURN_DATUM(HeapTupleGetDatum(result));
}
