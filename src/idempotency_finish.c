/*-------------------------------------------------------------------------
 *
 * idempotency_finish.c
 *	  The end of an idempotency key's request: courier.idempotency_complete(),
 *	  courier.idempotency_abandon() and courier.idempotency_extend().
 *
 * Each waits for the key's lock (a begin() holds it only for a moment, or
 * for the transaction that took the key over), then acts on the in-progress
 * row of the caller's key space that matches the lease token; when there is
 * none it says why.  Identity and key spaces: see idempotency.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "pg_courier.h"
#include "idempotency.h"

PG_FUNCTION_INFO_V1(courier_idempotency_complete);
PG_FUNCTION_INFO_V1(courier_idempotency_abandon);
PG_FUNCTION_INFO_V1(courier_idempotency_extend);

static SPIPlanPtr plan_complete = NULL;
static SPIPlanPtr plan_release = NULL;
static SPIPlanPtr plan_extend = NULL;
static SPIPlanPtr plan_state = NULL;

/*
 * finish_diagnose
 *		complete/abandon/extend found no row to act on: say why.
 */
static void
finish_diagnose(Datum *args, const char *nulls, text *key, text *scope, bool token_given)
{
	static Oid	types[] = {TEXTOID, TEXTOID, TIMESTAMPTZOID, UUIDOID, INT4OID, INT4OID, REGROLEOID};
	SPIPlanPtr	plan;
	bool		isnull;
	char	   *k = text_to_cstring(key);
	char	   *s = text_to_cstring(scope);

	plan = courier_idem_plan(&plan_state, STATE_SQL, IDEM_NARGS, types);
	if (SPI_execute_plan(plan, args, nulls, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "pg_courier: could not read courier.idempotency_keys");
	if (SPI_processed == 1 &&
		DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)))
	{
		char	   *state = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0],
															  SPI_tuptable->tupdesc, 1, &isnull));

		if (strcmp(state, "completed") == 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("idempotency key \"%s\" in scope \"%s\" is already completed", k, s),
					 errhint("A completed key is replayed by courier.idempotency_begin until it expires.")));
		if (token_given)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("idempotency key \"%s\" in scope \"%s\" is held by another request", k, s),
					 errdetail("The lease token does not match: this request's lease expired and another request took the key over."),
					 errhint("Roll back; the request that holds the key now will answer.")));
	}
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("idempotency key \"%s\" in scope \"%s\" is not in progress", k, s),
			 errdetail("It was never begun, was abandoned, or has expired."),
			 errhint("Call courier.idempotency_begin first, with a ttl longer than the work takes.")));
}

/*
 * lock_and_run
 *		Common body of complete/abandon/extend: wait for the key's lock (a
 *		begin() holds it only for a moment, or for the transaction that took
 *		the key over), then run "plan" on the in-progress row that matches
 *		the token; diagnose and raise when there is none.
 */
static void
lock_and_run(SPIPlanPtr *slot, const char *sql,
			 Oid *types, Datum *args, const char *nulls,
			 text *key, text *scope, bool token_given)
{
	LOCKTAG		tag;
	SPIPlanPtr	plan = courier_idem_plan(slot, sql, IDEM_NARGS, types);
	int			rc;

	courier_idem_locktag(&tag, DatumGetObjectId(args[ARG_OWNER]), scope, key);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
	rc = SPI_execute_plan(plan, args, nulls, false, 1);
	if (rc < 0)
		elog(ERROR, "pg_courier: could not update courier.idempotency_keys: %s",
			 SPI_result_code_string(rc));
	if (SPI_processed == 0)
		finish_diagnose(args, nulls, key, scope, token_given);
}

/* The WHERE clause shared by complete/abandon/extend: $1 scope, $2 key, $3 now, $4 token, $7 owner. */
#define HELD_ROW \
	" WHERE owner " EQ " $7 AND scope " EQ " $1 AND key " EQ " $2 " \
	"   AND state " EQ " 'in_progress' " \
	"   AND expires_at " GT " $3 AND ($4 IS NULL OR lease_token " EQ " $4) "

/*
 * transient_status
 *		Statuses a client should retry (PROTOCOLS.md): not stored, the key is
 *		released so that the retry runs the work again.
 */
static bool
transient_status(int status)
{
	return status == 408 || status == 425 || status == 429 || status >= 500;
}

/*
 * courier_idempotency_complete
 *		courier.idempotency_complete(key, status_code, response, scope,
 *		lease_token): store the answer for replay, or release the key when the
 *		answer is a transient failure.  Returns true when stored.
 */
Datum
courier_idempotency_complete(PG_FUNCTION_ARGS)
{
	static Oid	types[] = {TEXTOID, TEXTOID, TIMESTAMPTZOID, UUIDOID, INT4OID, JSONBOID, REGROLEOID};
	text	   *key = courier_idem_check_name(fcinfo, 0, "key", false);
	text	   *scope = courier_idem_check_name(fcinfo, 3, "scope", true);
	int			status;
	Datum		args[IDEM_NARGS];
	char		nulls[IDEM_NARGS] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	IdemCall	call;
	bool		store;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("idempotency status_code must not be NULL")));
	status = PG_GETARG_INT32(1);
	if (status < 200 || status > 599)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency status_code %d is not a final HTTP status", status),
				 errhint("Use a status between 200 and 599.")));
	store = !transient_status(status);

	args[0] = PointerGetDatum(scope);
	args[1] = PointerGetDatum(key);
	args[2] = TimestampTzGetDatum(GetCurrentTimestamp());
	args[3] = PG_ARGISNULL(4) ? (Datum) 0 : PG_GETARG_DATUM(4);
	nulls[3] = PG_ARGISNULL(4) ? 'n' : ' ';
	args[4] = Int32GetDatum(status);
	args[5] = PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2);
	nulls[5] = PG_ARGISNULL(2) ? 'n' : ' ';

	courier_idem_enter(&call);
	args[ARG_OWNER] = ObjectIdGetDatum(call.space);
	SPI_connect();
	if (store)
		lock_and_run(&plan_complete,
					 "UPDATE courier.idempotency_keys "
					 "   SET state = 'completed', status_code = $5, response = $6, "
					 "       completed_at = $3, lease_token = NULL, lease_expires_at = NULL "
					 HELD_ROW,
					 types, args, nulls, key, scope, !PG_ARGISNULL(4));
	else
		lock_and_run(&plan_release,
					 "DELETE FROM courier.idempotency_keys" HELD_ROW,
					 types, args, nulls, key, scope, !PG_ARGISNULL(4));
	SPI_finish();
	courier_idem_leave(&call);
	PG_RETURN_BOOL(store);
}

/*
 * courier_idempotency_abandon
 *		courier.idempotency_abandon(key, scope, lease_token): release an
 *		in-progress key so that a retry starts afresh.  Returns false (and does
 *		nothing) when the key is not held at all.
 */
Datum
courier_idempotency_abandon(PG_FUNCTION_ARGS)
{
	static Oid	types[] = {TEXTOID, TEXTOID, TIMESTAMPTZOID, UUIDOID, INT4OID, INT4OID, REGROLEOID};
	text	   *key = courier_idem_check_name(fcinfo, 0, "key", false);
	text	   *scope = courier_idem_check_name(fcinfo, 1, "scope", true);
	Datum		args[IDEM_NARGS];
	char		nulls[IDEM_NARGS] = {' ', ' ', ' ', ' ', 'n', 'n', ' '};
	IdemCall	call;
	LOCKTAG		tag;
	int			rc;
	bool		released;

	args[0] = PointerGetDatum(scope);
	args[1] = PointerGetDatum(key);
	args[2] = TimestampTzGetDatum(GetCurrentTimestamp());
	args[3] = PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2);
	nulls[3] = PG_ARGISNULL(2) ? 'n' : ' ';
	args[4] = args[5] = (Datum) 0;

	courier_idem_enter(&call);
	args[ARG_OWNER] = ObjectIdGetDatum(call.space);
	SPI_connect();
	courier_idem_locktag(&tag, call.space, scope, key);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
	rc = SPI_execute_plan(courier_idem_plan(&plan_release,
											"DELETE FROM courier.idempotency_keys" HELD_ROW,
											IDEM_NARGS, types),
						  args, nulls, false, 1);
	if (rc < 0)
		elog(ERROR, "pg_courier: could not update courier.idempotency_keys: %s",
			 SPI_result_code_string(rc));
	released = (SPI_processed == 1);
	if (!released)
	{
		/* completed or held by someone else: an error; simply absent: false */
		rc = SPI_execute_plan(courier_idem_plan(&plan_state, STATE_SQL, IDEM_NARGS, types),
							  args, nulls, false, 1);
		if (rc == SPI_OK_SELECT && SPI_processed == 1)
		{
			bool		isnull;

			if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)))
				finish_diagnose(args, nulls, key, scope, !PG_ARGISNULL(2));
		}
	}
	SPI_finish();
	courier_idem_leave(&call);
	PG_RETURN_BOOL(released);
}

/*
 * courier_idempotency_extend
 *		courier.idempotency_extend(key, lease, scope, lease_token): heartbeat
 *		of long work in the multi-transaction shape; the lease now ends
 *		"lease" from now.  Returns the new end of the lease.
 */
Datum
courier_idempotency_extend(PG_FUNCTION_ARGS)
{
	static Oid	types[] = {TEXTOID, TEXTOID, TIMESTAMPTZOID, UUIDOID, INTERVALOID, INT4OID, REGROLEOID};
	text	   *key = courier_idem_check_name(fcinfo, 0, "key", false);
	Interval   *lease = courier_idem_check_interval(fcinfo, 1, "lease");
	text	   *scope = courier_idem_check_name(fcinfo, 2, "scope", true);
	Datum		args[IDEM_NARGS];
	char		nulls[IDEM_NARGS] = {' ', ' ', ' ', ' ', ' ', 'n', ' '};
	IdemCall	call;
	bool		isnull;
	TimestampTz until;

	args[0] = PointerGetDatum(scope);
	args[1] = PointerGetDatum(key);
	args[2] = TimestampTzGetDatum(GetCurrentTimestamp());
	args[3] = PG_ARGISNULL(3) ? (Datum) 0 : PG_GETARG_DATUM(3);
	nulls[3] = PG_ARGISNULL(3) ? 'n' : ' ';
	args[4] = IntervalPGetDatum(lease);
	args[5] = (Datum) 0;

	courier_idem_enter(&call);
	args[ARG_OWNER] = ObjectIdGetDatum(call.space);
	SPI_connect();
	lock_and_run(&plan_extend,
				 "UPDATE courier.idempotency_keys "
				 "   SET lease_expires_at = LEAST($3 " PLUS " $5, expires_at) "
				 HELD_ROW
				 "RETURNING lease_expires_at",
				 types, args, nulls, key, scope, !PG_ARGISNULL(3));
	until = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	courier_idem_leave(&call);
	PG_RETURN_TIMESTAMPTZ(until);
}
