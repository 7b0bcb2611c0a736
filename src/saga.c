/*-------------------------------------------------------------------------
 *
 * saga.c
 *	  Saga-step state: the SQL-callable functions (courier.saga_define,
 *	  saga_start, the transitions, saga_next, saga_purge), the module's
 *	  GUCs and the step-timeout sweep run by the database worker.
 *
 * Privileges: the saga tables belong to the extension owner and are not
 * accessible to other roles.  A function checks that the caller may use
 * the saga type (is a member of the role that defined it), then switches
 * to the tables' owner for its SPI statements, the way a SECURITY DEFINER
 * function would but without the cost of one on every transition.  The
 * switch is undone on error by (sub)transaction abort.
 *
 * To a role that may not use a saga type, the type and its sagas do not
 * exist: the errors are those for unknown names and ids, and
 * courier.saga_types shows each role its own types (row-level security).
 * saga_define serialises on a lock of its own class that SQL cannot take.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "pg_courier.h"
#include "owner_exec.h"
#include "saga.h"

PG_FUNCTION_INFO_V1(courier_saga_define);
PG_FUNCTION_INFO_V1(courier_saga_start);
PG_FUNCTION_INFO_V1(courier_saga_step_started);
PG_FUNCTION_INFO_V1(courier_saga_step_succeeded);
PG_FUNCTION_INFO_V1(courier_saga_step_failed);
PG_FUNCTION_INFO_V1(courier_saga_compensated);
PG_FUNCTION_INFO_V1(courier_saga_compensation_failed);
PG_FUNCTION_INFO_V1(courier_saga_abort);
PG_FUNCTION_INFO_V1(courier_saga_next);
PG_FUNCTION_INFO_V1(courier_saga_purge);
PG_FUNCTION_INFO_V1(courier_saga_stuck_after);

/* GUCs */
int			saga_timeout_interval_ms = 1000;
static int	saga_stuck_after_s = 300;

/* Advisory lock class of saga_define ("CJ"); SQL reaches only classes 1 and 2. */
#define SAGA_DEFINE_LOCK_CLASS	17226


/*
 * courier_saga_init
 *		Define this module's GUCs (called from _PG_init).
 */
void
courier_saga_init(void)
{
	DefineCustomIntVariable("courier.saga_timeout_interval",
							"How often the database worker fails saga steps that are past their timeout.",
							"0 turns timeout enforcement off.  The worker runs its housekeeping about once a second, "
							"so shorter intervals make no difference.",
							&saga_timeout_interval_ms,
							1000, 0, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("courier.saga_stuck_after",
							"How long a running or compensating saga may go without a transition before courier.saga_stuck lists it.",
							NULL,
							&saga_stuck_after_s,
							300, 1, INT_MAX / 2,
							PGC_USERSET, GUC_UNIT_S,
							NULL, NULL, NULL);
	saga_catalog_init();
}

/*
 * saga_become_owner / saga_become_caller
 *		Switch to the saga tables' owner for SPI work, and back.  Like a
 *		SECURITY DEFINER function with SET search_path: our statements run
 *		with the owner's rights, so nothing on the caller's search_path (an
 *		operator planted for IS DISTINCT FROM, NULLIF, IN ...) may resolve
 *		them.  An error pops the nest level and the identity with the
 *		(sub)transaction.
 */
void
saga_become_owner(SagaIdentity *id)
{
	Oid			owner = saga_owner_role();

	GetUserIdAndSecContext(&id->caller, &id->sec_context);
	SetUserIdAndSecContext(owner, id->sec_context | SECURITY_LOCAL_USERID_CHANGE);
	id->nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", COURIER_SAFE_SEARCH_PATH, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

void
saga_become_caller(SagaIdentity *id)
{
	AtEOXact_GUC(true, id->nestlevel);
	SetUserIdAndSecContext(id->caller, id->sec_context);
}

/*
 * type_not_found
 *		The one error for a saga type that does not exist or that the caller
 *		may not use: other roles' types are not revealed.
 */
static void
type_not_found(const char *saga_type)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("saga type \"%s\" does not exist", saga_type),
			 errhint("Define it with courier.saga_define().")));
}

/*
 * check_access
 *		Only members of the role that defined a saga type drive its sagas;
 *		to anyone else the type does not exist.
 */
static void
check_access(SagaDef *def, Oid caller)
{
	if (!has_privs_of_role(caller, def->owner))
		type_not_found(def->saga_type);
}

/*
 * saga_uuid_text
 *		A uuid for messages.
 */
char *
saga_uuid_text(pg_uuid_t *id)
{
	return DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(id)));
}

/*
 * arg_text / arg_uuid
 *		Mandatory arguments: NULL is an error, not a silent NULL result.
 */
static char *
arg_text(FunctionCallInfo fcinfo, int n, const char *what)
{
	if (PG_ARGISNULL(n))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("%s must not be NULL", what)));
	return text_to_cstring(PG_GETARG_TEXT_PP(n));
}

static pg_uuid_t *
arg_uuid(FunctionCallInfo fcinfo, int n)
{
	if (PG_ARGISNULL(n))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("saga_id must not be NULL")));
	return PG_GETARG_UUID_P(n);
}

/*
 * saga_not_found
 *		The error for an unknown saga id (or one the caller may not see).
 */
static void
saga_not_found(pg_uuid_t *id)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("saga %s does not exist", saga_uuid_text(id)),
			 errhint("Start it with courier.saga_start(); finished sagas may have been purged.")));
}

/*
 * load_or_error
 *		Load a saga (locked when asked) that the caller may drive, or raise
 *		"does not exist".
 */
static void
load_or_error(SagaInstance *inst, pg_uuid_t *id, bool lock, bool fresh, Oid caller)
{
	/* another role's saga does not exist either (its type is not revealed) */
	if (!saga_load(inst, id, lock, fresh) || !has_privs_of_role(caller, inst->def->owner))
		saga_not_found(id);
}

/*
 * step_or_error
 *		The index of a named step of the saga's type.
 */
static int
step_or_error(SagaInstance *inst, const char *step)
{
	int			k = saga_step_index(inst->def, step);

	if (k < 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("saga type \"%s\" (version %d) has no step \"%s\"",
						inst->def->saga_type, inst->def->version, step)));
	return k;
}

/*
 * saga_make_jsonb
 *		Parse JSON text built here into jsonb.
 */
Datum
saga_make_jsonb(const char *json)
{
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(json));
}

/*
 * next_tuple
 *		The (status, action, step, compensation, attempt) record that
 *		saga_next() and every transition return.
 */
static Datum
next_tuple(FunctionCallInfo fcinfo, SagaDef *def, SagaNext next)
{
	TupleDesc	desc;
	Datum		values[5];
	bool		nulls[5] = {false, false, true, true, true};
	SagaStepDef *s = next.step >= 0 ? &def->steps[next.step] : NULL;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	values[0] = CStringGetTextDatum(saga_status_name(next.status));
	values[1] = CStringGetTextDatum(saga_action_name(next.action));
	if (s)
	{
		values[2] = CStringGetTextDatum(s->name);
		nulls[2] = false;
	}
	if (s && s->compensation && next.action == SAGA_ACTION_COMPENSATE)
	{
		values[3] = CStringGetTextDatum(s->compensation);
		nulls[3] = false;
	}
	if (next.attempt > 0)
	{
		values[4] = Int32GetDatum(next.attempt);
		nulls[4] = false;
	}
	return HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls));
}

/*
 * transition
 *		Common body of the transition functions: lock the saga's row, apply
 *		the transition, write the row (and the command event) when anything
 *		changed, and return what is due next.
 */
static Datum
transition(FunctionCallInfo fcinfo, SagaOp op)
{
	pg_uuid_t  *id = arg_uuid(fcinfo, 0);
	char	   *step = op == SAGA_OP_ABORT ? NULL : arg_text(fcinfo, 1, "step");
	bool		has_payload = !PG_ARGISNULL(op == SAGA_OP_ABORT ? 1 : 2);
	Datum		payload = has_payload ? PG_GETARG_DATUM(op == SAGA_OP_ABORT ? 1 : 2) : (Datum) 0;
	SagaInstance inst;
	SagaIdentity who;
	SagaNext	next;
	int			k = -1;

	SPI_connect();
	saga_become_owner(&who);
	load_or_error(&inst, id, true, true, who.caller);
	if (step)
		k = step_or_error(&inst, step);

	inst.error = (Datum) 0;
	if (op == SAGA_OP_FAILED || op == SAGA_OP_COMPENSATION_FAILED)
		inst.error = payload;
	else if (op == SAGA_OP_ABORT)
	{
		StringInfoData buf;

		initStringInfo(&buf);
		appendStringInfoString(&buf, "{\"reason\": \"aborted\"");
		if (has_payload)
		{
			appendStringInfoString(&buf, ", \"detail\": ");
			escape_json(&buf, TextDatumGetCString(payload));
		}
		appendStringInfoChar(&buf, '}');
		inst.error = saga_make_jsonb(buf.data);
	}

	saga_apply(&inst, op, k, GetCurrentTimestamp());
	if (inst.changed)
	{
		saga_store(&inst, op == SAGA_OP_SUCCEEDED ? payload : (Datum) 0,
				   payload, op == SAGA_OP_ABORT && has_payload);
		saga_send_command(&inst);
	}
	next = saga_next_action(&inst);
	saga_become_caller(&who);
	SPI_finish();
	return next_tuple(fcinfo, inst.def, next);
}

Datum
courier_saga_step_started(PG_FUNCTION_ARGS)
{
	return transition(fcinfo, SAGA_OP_STARTED);
}

Datum
courier_saga_step_succeeded(PG_FUNCTION_ARGS)
{
	return transition(fcinfo, SAGA_OP_SUCCEEDED);
}

Datum
courier_saga_step_failed(PG_FUNCTION_ARGS)
{
	return transition(fcinfo, SAGA_OP_FAILED);
}

Datum
courier_saga_compensated(PG_FUNCTION_ARGS)
{
	return transition(fcinfo, SAGA_OP_COMPENSATED);
}

Datum
courier_saga_compensation_failed(PG_FUNCTION_ARGS)
{
	return transition(fcinfo, SAGA_OP_COMPENSATION_FAILED);
}

Datum
courier_saga_abort(PG_FUNCTION_ARGS)
{
	return transition(fcinfo, SAGA_OP_ABORT);
}

/*
 * courier_saga_next
 *		courier.saga_next(saga_id): what the orchestrator should do now
 *		(reads the saga without locking it).
 */
Datum
courier_saga_next(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *id = arg_uuid(fcinfo, 0);
	SagaInstance inst;
	SagaIdentity who;
	SagaNext	next;

	SPI_connect();
	saga_become_owner(&who);
	load_or_error(&inst, id, false, false, who.caller);
	next = saga_next_action(&inst);
	saga_become_caller(&who);
	SPI_finish();
	return next_tuple(fcinfo, inst.def, next);
}

/*
 * courier_saga_start
 *		courier.saga_start(saga_type, data, saga_id) RETURNS uuid: start a
 *		saga on the newest version of its type.  Starting an id that exists
 *		already returns it unchanged (the first start's data wins).
 */
Datum
courier_saga_start(PG_FUNCTION_ARGS)
{
	char	   *saga_type = arg_text(fcinfo, 0, "saga_type");
	Datum		data = PG_ARGISNULL(1) ? saga_make_jsonb("{}") : PG_GETARG_DATUM(1);
	pg_uuid_t  *id = arg_uuid(fcinfo, 2);
	SagaInstance inst;
	SagaIdentity who;
	int32		version;

	SPI_connect();
	saga_become_owner(&who);
	version = saga_latest_version(saga_type);
	if (version == 0)
		type_not_found(saga_type);
	inst.id = *id;
	saga_init_instance(&inst, saga_def_lookup(saga_type, version), GetCurrentTimestamp());
	check_access(inst.def, who.caller);
	if (saga_insert(&inst, data))
		saga_send_command(&inst);
	else
	{
		/*
		 * Started before (perhaps by a transaction that just committed).  An
		 * id taken by a saga of another type, ours or another role's, gets
		 * one error that names no type: ids are unique in the database.
		 */
		if (!saga_load(&inst, id, false, true))
			saga_not_found(id);	/* purged meanwhile */
		if (strcmp(inst.def->saga_type, saga_type) != 0 ||
			!has_privs_of_role(who.caller, inst.def->owner))
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("saga %s already exists with another saga type", saga_uuid_text(id)),
					 errhint("Saga ids are unique in the database: start this saga with a new id.")));
	}
	saga_become_caller(&who);
	SPI_finish();
	PG_RETURN_UUID_P(id);
}

/*
 * lock_saga_type
 *		Serialise definers of one saga type until the end of the transaction.
 *		The lock is an advisory lock tag of our own class (locktag_field4),
 *		which no SQL function can take (pg_advisory_lock uses classes 1 and
 *		2): no role can hold it first to block saga_define.
 */
static void
lock_saga_type(const char *saga_type)
{
	LOCKTAG		tag;
	uint64		h = hash_bytes_extended((const unsigned char *) saga_type, strlen(saga_type), 0);

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h, SAGA_DEFINE_LOCK_CLASS);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}

/*
 * courier_saga_define
 *		courier.saga_define(saga_type, steps, outbox) RETURNS integer: the
 *		version sagas of this type now start on.  The steps are checked and
 *		normalized by courier._saga_check_definition (SQL); an identical
 *		redefinition returns the current version, anything else adds a new
 *		one (running sagas stay on theirs).
 */
Datum
courier_saga_define(PG_FUNCTION_ARGS)
{
	char	   *saga_type = arg_text(fcinfo, 0, "saga_type");
	Oid			outbox = PG_ARGISNULL(2) ? InvalidOid : PG_GETARG_OID(2);
	Datum		args[4];
	char		nulls[4] = {' ', ' ', 'n', ' '};
	Oid			types[4] = {TEXTOID, JSONBOID, OIDOID, OIDOID};
	SagaIdentity who;
	Datum		steps;
	bool		isnull;
	int32		version = 1;
	Oid			owner;

	if (PG_ARGISNULL(1))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("steps must not be NULL")));

	SPI_connect();
	args[0] = CStringGetTextDatum(saga_type);
	args[1] = PG_GETARG_DATUM(1);
	if (SPI_execute_with_args("SELECT courier._saga_check_definition($1, $2)", 2, types, args, NULL, true, 1)
		!= SPI_OK_SELECT)
		elog(ERROR, "pg_courier: checking the saga definition failed");
	steps = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	args[1] = steps;

	saga_become_owner(&who);
	owner = who.caller;
	if (OidIsValid(outbox))
	{
		args[2] = ObjectIdGetDatum(outbox);
		nulls[2] = ' ';
		if (SPI_execute_with_args("SELECT 1 FROM courier.outboxes o WHERE o.outbox::pg_catalog.oid OPERATOR(pg_catalog.=) $3",
								  3, types, args, nulls, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("relation with OID %u is not a pg_courier outbox", outbox),
					 errhint("Create outboxes with courier.create_outbox(); see courier.outboxes.")));
		if (pg_class_aclcheck(outbox, who.caller, ACL_INSERT) != ACLCHECK_OK)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied for outbox %s", get_rel_name(outbox)),
					 errhint("Commands of a saga type are written to its outbox: its definer needs INSERT on it.")));
	}

	/* one definer at a time per type, so that versions are gapless */
	lock_saga_type(saga_type);
	if (SPI_execute_with_args("SELECT t.version, t.owner::pg_catalog.oid,"
							  " t.steps OPERATOR(pg_catalog.=) $2 AND COALESCE(t.outbox::pg_catalog.oid OPERATOR(pg_catalog.=) $3,"
							  "   t.outbox IS NULL AND $3 IS NULL)"
							  " FROM courier.saga_types t WHERE t.saga_type OPERATOR(pg_catalog.=) $1"
							  " ORDER BY t.version DESC LIMIT 1", 3, types, args, nulls, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "pg_courier: reading saga type failed");
	if (SPI_processed == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];

		version = DatumGetInt32(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull));
		owner = DatumGetObjectId(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));
		if (!has_privs_of_role(who.caller, owner))
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("saga type \"%s\" is already defined by another role", saga_type),
					 errhint("Saga type names are unique in the database: choose another name.")));
		if (DatumGetBool(SPI_getbinval(tup, SPI_tuptable->tupdesc, 3, &isnull)))
		{
			saga_become_caller(&who);
			SPI_finish();
			PG_RETURN_INT32(version);
		}
		version++;
	}
	args[3] = ObjectIdGetDatum(owner);
	args[2] = Int32GetDatum(version);
	types[2] = INT4OID;
	nulls[2] = ' ';
	if (SPI_execute_with_args("INSERT INTO courier.saga_types (saga_type, version, steps, outbox, owner)"
							  " VALUES ($1, $3, $2, $5::pg_catalog.regclass, $4::pg_catalog.regrole)",
							  5, (Oid[]) {TEXTOID, JSONBOID, INT4OID, OIDOID, OIDOID},
							  (Datum[]) {args[0], args[1], args[2], args[3], ObjectIdGetDatum(outbox)},
							  (char[]) {' ', ' ', ' ', ' ', OidIsValid(outbox) ? ' ' : 'n'},
							  false, 0) != SPI_OK_INSERT)
		elog(ERROR, "pg_courier: inserting saga type failed");
	saga_become_caller(&who);
	SPI_finish();
	PG_RETURN_INT32(version);
}

/*
 * courier_saga_purge
 *		courier.saga_purge(older_than) RETURNS bigint: delete completed and
 *		compensated sagas (of types the caller may use) whose last
 *		transition is older than older_than.  Failed sagas are kept: they
 *		wait for someone to look at them.
 */
Datum
courier_saga_purge(PG_FUNCTION_ARGS)
{
	SagaIdentity who;
	Datum		args[2];
	Oid			types[2] = {INTERVALOID, OIDOID};
	uint64		n;

	if (PG_ARGISNULL(0))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("older_than must not be NULL")));
	SPI_connect();
	saga_become_owner(&who);
	args[0] = PG_GETARG_DATUM(0);
	args[1] = ObjectIdGetDatum(who.caller);
	if (SPI_execute_with_args("DELETE FROM courier.saga_instances i USING courier.saga_types t"
							  " WHERE t.saga_type OPERATOR(pg_catalog.=) i.saga_type"
							  " AND t.version OPERATOR(pg_catalog.=) i.version"
							  " AND i.status OPERATOR(pg_catalog.=) ANY ('{completed,compensated}'::pg_catalog.text[])"
							  " AND i.updated_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) $1)"
							  " AND pg_catalog.pg_has_role($2, t.owner::pg_catalog.oid, 'USAGE')",
							  2, types, args, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "pg_courier: purging sagas failed");
	n = SPI_processed;
	saga_become_caller(&who);
	SPI_finish();
	PG_RETURN_INT64((int64) n);
}

/*
 * courier_saga_stuck_after
 *		The courier.saga_stuck_after setting as an interval (for the view).
 */
Datum
courier_saga_stuck_after(PG_FUNCTION_ARGS)
{
	Interval   *iv = palloc0(sizeof(Interval));

	iv->time = (int64) saga_stuck_after_s * USECS_PER_SEC;
	PG_RETURN_INTERVAL_P(iv);
}
