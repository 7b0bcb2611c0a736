/*-------------------------------------------------------------------------
 *
 * saga_catalog.c
 *	  Reading and writing the saga tables: the per-backend cache of saga
 *	  definitions, and the prepared statements that load, store and start
 *	  instances and send their command events.
 *
 * Every statement is prepared once per backend and kept (the plan cache
 * re-plans it after DDL).  All names are schema-qualified and parameters
 * carry their types, so the caller's search_path can neither break nor
 * subvert them.  Callers run these while connected to SPI and, for users,
 * under the identity of the saga tables' owner (see saga.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "pg_courier.h"
#include "owner_exec.h"
#include "saga.h"

/* Hash key of the definition cache. */
typedef struct SagaDefKey
{
	char		saga_type[NAMEDATALEN];
	int32		version;
} SagaDefKey;

static HTAB *def_cache = NULL;
static MemoryContext def_context = NULL;

/* Plain OIDs of our tables, re-resolved after any relcache invalidation. */
static bool rels_valid = false;
static Oid	types_relid = InvalidOid;
static Oid	instances_relid = InvalidOid;
static Oid	tables_owner = InvalidOid;

static SPIPlanPtr plan_load_lock = NULL;
static SPIPlanPtr plan_load = NULL;
static SPIPlanPtr plan_store = NULL;
static SPIPlanPtr plan_insert = NULL;
static SPIPlanPtr plan_send = NULL;
static SPIPlanPtr plan_send_write = NULL;
static SPIPlanPtr plan_def = NULL;
static SPIPlanPtr plan_latest = NULL;

/*
 * rels_invalidate
 *		Relcache callback.  Only plain OIDs are dropped here (this can run
 *		in the middle of a transition); cached definitions are checked
 *		against the current courier.saga_types OID when used.
 */
static void
rels_invalidate(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == types_relid || relid == instances_relid)
		rels_valid = false;
}

/*
 * saga_catalog_init
 *		Called once per backend from courier_saga_init.
 */
void
saga_catalog_init(void)
{
	CacheRegisterRelcacheCallback(rels_invalidate, (Datum) 0);
}

/*
 * resolve_rels
 *		Find our tables and their owner (syscache lookups only).
 */
static void
resolve_rels(void)
{
	Oid			nsp;
	HeapTuple	tup;

	if (rels_valid)
		return;
	nsp = courier_schema_oid();
	types_relid = get_relname_relid("saga_types", nsp);
	instances_relid = get_relname_relid("saga_instances", nsp);
	if (!OidIsValid(types_relid) || !OidIsValid(instances_relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("the saga tables of pg_courier are missing"),
				 errhint("Is the extension pg_courier installed in this database?")));
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(instances_relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", instances_relid);
	tables_owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	rels_valid = true;
}

/*
 * saga_owner_role
 *		The role that owns the saga tables: transitions run as this role
 *		once the caller's right to drive the saga has been checked.
 */
Oid
saga_owner_role(void)
{
	resolve_rels();
	return tables_owner;
}

/*
 * prepare
 *		Prepare and keep one statement.  The statement names the extension's
 *		schema as %1$s: it is the one pg_extension records, not whatever
 *		schema is called "courier".
 */
static SPIPlanPtr
prepare(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(psprintf(sql, courier_schema_name()), nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "pg_courier: could not prepare saga statement: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

/*
 * text_array_elems
 *		Deconstruct a text[] into C strings (NULL elements stay NULL).
 */
static int
text_array_elems(Datum arr, char ***out)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	deconstruct_array(DatumGetArrayTypeP(arr), TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	*out = MemoryContextAlloc(def_context, sizeof(char *) * Max(n, 1));
	for (int i = 0; i < n; i++)
		(*out)[i] = nulls[i] ? NULL : MemoryContextStrdup(def_context, TextDatumGetCString(elems[i]));
	return n;
}

/*
 * int8_array_elems
 *		Deconstruct a bigint[] (no NULLs: the definition is normalized).
 */
static int
int8_array_elems(Datum arr, int64 **out)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	deconstruct_array(DatumGetArrayTypeP(arr), INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems, &nulls, &n);
	*out = palloc(sizeof(int64) * Max(n, 1));
	for (int i = 0; i < n; i++)
		(*out)[i] = nulls[i] ? 0 : DatumGetInt64(elems[i]);
	return n;
}

/*
 * def_fill
 *		Read one version of a saga type into a cache entry.
 */
static void
def_fill(SagaDef *def, const char *saga_type, int32 version)
{
	Datum		args[2] = {CStringGetTextDatum(saga_type), Int32GetDatum(version)};
	Datum		v;
	bool		isnull;
	char	  **names;
	char	  **comps;
	int64	   *timeouts;
	int64	   *retries;
	int			n;

	if (plan_def == NULL)
	{
		Oid			types[2] = {TEXTOID, INT4OID};

		plan_def = prepare("SELECT t.owner::pg_catalog.oid, t.outbox::pg_catalog.oid,"
						   " pg_catalog.array_agg(s.e OPERATOR(pg_catalog.->>) 'name' ORDER BY s.n),"
						   " pg_catalog.array_agg(s.e OPERATOR(pg_catalog.->>) 'compensation' ORDER BY s.n),"
						   " pg_catalog.array_agg((s.e OPERATOR(pg_catalog.->>) 'timeout_ms')::pg_catalog.int8 ORDER BY s.n),"
						   " pg_catalog.array_agg((s.e OPERATOR(pg_catalog.->>) 'max_retries')::pg_catalog.int8 ORDER BY s.n)"
						   " FROM %1$s.saga_types t,"
						   " pg_catalog.jsonb_array_elements(t.steps) WITH ORDINALITY s(e, n)"
						   " WHERE t.saga_type OPERATOR(pg_catalog.=) $1 AND t.version OPERATOR(pg_catalog.=) $2"
						   " GROUP BY t.owner, t.outbox", 2, types);
	}
	if (SPI_execute_plan(plan_def, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "pg_courier: reading saga type failed");
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("version %d of saga type \"%s\" does not exist", version, saga_type)));

	def->owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	v = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	def->outbox = isnull ? InvalidOid : DatumGetObjectId(v);
	n = text_array_elems(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull), &names);
	text_array_elems(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull), &comps);
	int8_array_elems(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5, &isnull), &timeouts);
	int8_array_elems(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 6, &isnull), &retries);

	def->steps = MemoryContextAlloc(def_context, sizeof(SagaStepDef) * n);
	for (int i = 0; i < n; i++)
	{
		def->steps[i].name = names[i];
		def->steps[i].compensation = comps[i];
		def->steps[i].timeout_ms = timeouts[i];
		def->steps[i].max_retries = (int32) retries[i];
	}
	def->nsteps = n;
	def->types_relid = types_relid;
}

/*
 * saga_def_lookup
 *		One version of a saga type, from the cache or read on first use.
 *		Versions are immutable, so an entry stays right for as long as the
 *		table it came from exists (a re-created extension starts over).
 */
SagaDef *
saga_def_lookup(const char *saga_type, int32 version)
{
	SagaDefKey	key;
	SagaDef    *def;
	bool		found;

	resolve_rels();
	if (def_cache == NULL)
	{
		HASHCTL		ctl;

		def_context = AllocSetContextCreate(CacheMemoryContext, "pg_courier saga definitions",
											ALLOCSET_SMALL_SIZES);
		ctl.keysize = sizeof(SagaDefKey);
		ctl.entrysize = sizeof(SagaDef);
		ctl.hcxt = def_context;
		def_cache = hash_create("pg_courier saga definitions", 64, &ctl,
								HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	memset(&key, 0, sizeof(key));
	strlcpy(key.saga_type, saga_type, NAMEDATALEN);
	key.version = version;
	def = hash_search(def_cache, &key, HASH_ENTER, &found);
	if (found && def->types_relid == types_relid)
		return def;

	/* new, or left over from a dropped extension: (re)read it */
	def->types_relid = InvalidOid;
	PG_TRY();
	{
		def_fill(def, saga_type, version);
	}
	PG_CATCH();
	{
		/* do not leave a half-filled entry behind */
		hash_search(def_cache, &key, HASH_REMOVE, NULL);
		PG_RE_THROW();
	}
	PG_END_TRY();
	return def;
}

/*
 * saga_latest_version
 *		The newest version of a saga type (new sagas start on it), or 0.
 */
int32
saga_latest_version(const char *saga_type)
{
	Datum		arg = CStringGetTextDatum(saga_type);
	bool		isnull;

	if (plan_latest == NULL)
	{
		Oid			types[1] = {TEXTOID};

		plan_latest = prepare("SELECT t.version FROM %1$s.saga_types t"
							  " WHERE t.saga_type OPERATOR(pg_catalog.=) $1"
							  " ORDER BY t.version DESC LIMIT 1", 1, types);
	}
	if (SPI_execute_plan(plan_latest, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "pg_courier: reading saga type failed");
	if (SPI_processed == 0)
		return 0;
	return DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * saga_load
 *		Read (and with lock, FOR UPDATE) a saga's row into inst.  fresh
 *		reads with a new snapshot rather than the caller's.  Returns false
 *		when there is no such saga.
 */
bool
saga_load(SagaInstance *inst, pg_uuid_t *id, bool lock, bool fresh)
{
	SPIPlanPtr *plan = lock ? &plan_load_lock : &plan_load;
	Datum		arg = UUIDPGetDatum(id);
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		v;
	char	   *states;
	ArrayType  *attempts;

	if (*plan == NULL)
	{
		Oid			types[1] = {UUIDOID};

		*plan = prepare(lock ?
						"SELECT ctid, saga_type, version, status, step_states, attempts, current_step, deadline"
						" FROM %1$s.saga_instances WHERE saga_id OPERATOR(pg_catalog.=) $1 FOR UPDATE" :
						"SELECT ctid, saga_type, version, status, step_states, attempts, current_step, deadline"
						" FROM %1$s.saga_instances WHERE saga_id OPERATOR(pg_catalog.=) $1",
						1, types);
	}
	if (SPI_execute_plan(*plan, &arg, NULL, !(lock || fresh), 1) != SPI_OK_SELECT)
		elog(ERROR, "pg_courier: reading saga failed");
	if (SPI_processed == 0)
		return false;

	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	inst->id = *id;
	inst->tid = *(ItemPointer) DatumGetPointer(SPI_getbinval(tup, desc, 1, &isnull));
	inst->def = saga_def_lookup(TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull)),
								DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull)));
	inst->status = saga_status_from_name(TextDatumGetCString(SPI_getbinval(tup, desc, 4, &isnull)));
	states = TextDatumGetCString(SPI_getbinval(tup, desc, 5, &isnull));
	attempts = DatumGetArrayTypeP(SPI_getbinval(tup, desc, 6, &isnull));
	if (strlen(states) != inst->def->nsteps || ArrayGetNItems(ARR_NDIM(attempts), ARR_DIMS(attempts)) != inst->def->nsteps ||
		ARR_HASNULL(attempts))
		elog(ERROR, "pg_courier: saga row is inconsistent with its definition");
	memcpy(inst->states, states, inst->def->nsteps + 1);
	memcpy(inst->attempts, ARR_DATA_PTR(attempts), sizeof(int32) * inst->def->nsteps);
	v = SPI_getbinval(tup, desc, 7, &isnull);
	inst->current = isnull ? -1 : DatumGetInt32(v);
	v = SPI_getbinval(tup, desc, 8, &isnull);
	inst->has_deadline = !isnull;
	inst->deadline = isnull ? 0 : DatumGetTimestampTz(v);
	return true;
}

/*
 * attempts_array
 *		The attempts column value of an instance.
 */
static Datum
attempts_array(SagaInstance *inst)
{
	Datum		elems[SAGA_MAX_STEPS];

	for (int i = 0; i < inst->def->nsteps; i++)
		elems[i] = Int32GetDatum(inst->attempts[i]);
	return PointerGetDatum(construct_array(elems, inst->def->nsteps, INT4OID, 4, true, TYPALIGN_INT));
}

/*
 * saga_store
 *		Write a changed instance back to its (locked) row, by ctid.  The
 *		step result/error given by the transition is merged into the
 *		results/errors objects under the step's name.
 */
void
saga_store(SagaInstance *inst, Datum result, Datum abort_reason, bool has_abort_reason)
{
	Datum		args[11];
	char		nulls[11];

	if (plan_store == NULL)
	{
		Oid			types[11] = {TIDOID, TEXTOID, TEXTOID, INT4ARRAYOID, INT4OID, TIMESTAMPTZOID,
		TEXTOID, JSONBOID, TEXTOID, JSONBOID, TEXTOID};

		plan_store = prepare("UPDATE %1$s.saga_instances SET status = $2, step_states = $3, attempts = $4,"
							 " current_step = $5, deadline = $6, updated_at = pg_catalog.now(),"
							 " results = CASE WHEN $7 IS NULL THEN results"
							 "   ELSE results OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object($7, $8) END,"
							 " errors = CASE WHEN $9 IS NULL THEN errors"
							 "   ELSE errors OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object($9, $10) END,"
							 " abort_reason = COALESCE($11, abort_reason)"
							 " WHERE ctid OPERATOR(pg_catalog.=) $1", 11, types);
	}
	memset(nulls, ' ', sizeof(nulls));
	args[0] = PointerGetDatum(&inst->tid);
	args[1] = CStringGetTextDatum(saga_status_name(inst->status));
	args[2] = CStringGetTextDatum(inst->states);
	args[3] = attempts_array(inst);
	args[4] = Int32GetDatum(inst->current);
	nulls[4] = inst->current < 0 ? 'n' : ' ';
	args[5] = TimestampTzGetDatum(inst->deadline);
	nulls[5] = inst->has_deadline ? ' ' : 'n';
	args[6] = inst->result_step >= 0 ? CStringGetTextDatum(inst->def->steps[inst->result_step].name) : (Datum) 0;
	nulls[6] = inst->result_step >= 0 ? ' ' : 'n';
	args[7] = result;
	nulls[7] = inst->result_step >= 0 && result != (Datum) 0 ? ' ' : 'n';
	args[8] = inst->error_step >= 0 ? CStringGetTextDatum(inst->def->steps[inst->error_step].name) : (Datum) 0;
	nulls[8] = inst->error_step >= 0 ? ' ' : 'n';
	args[9] = inst->error;
	nulls[9] = inst->error_step >= 0 && inst->error != (Datum) 0 ? ' ' : 'n';
	args[10] = abort_reason;
	nulls[10] = inst->abort && has_abort_reason ? ' ' : 'n';

	if (SPI_execute_plan(plan_store, args, nulls, false, 0) != SPI_OK_UPDATE || SPI_processed != 1)
		elog(ERROR, "pg_courier: updating saga failed");
}

/*
 * saga_insert
 *		Insert a new saga; false when a saga with that id exists already.
 */
bool
saga_insert(SagaInstance *inst, Datum data)
{
	Datum		args[8];
	char		nulls[8] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};

	if (plan_insert == NULL)
	{
		Oid			types[8] = {UUIDOID, TEXTOID, INT4OID, TEXTOID, TEXTOID, INT4ARRAYOID, JSONBOID, TIMESTAMPTZOID};

		/* (the deadline: with an outbox, writing the first command already started step 1) */
		plan_insert = prepare("INSERT INTO %1$s.saga_instances"
							  " (saga_id, saga_type, version, status, step_states, attempts, current_step, data, deadline)"
							  " VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8) ON CONFLICT (saga_id) DO NOTHING",
							  8, types);
	}
	args[0] = UUIDPGetDatum(&inst->id);
	args[1] = CStringGetTextDatum(inst->def->saga_type);
	args[2] = Int32GetDatum(inst->def->version);
	args[3] = CStringGetTextDatum(saga_status_name(inst->status));
	args[4] = CStringGetTextDatum(inst->states);
	args[5] = attempts_array(inst);
	args[6] = data;
	args[7] = TimestampTzGetDatum(inst->deadline);
	nulls[7] = inst->has_deadline ? ' ' : 'n';
	if (SPI_execute_plan(plan_insert, args, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "pg_courier: inserting saga failed");
	return SPI_processed == 1;
}

/*
 * saga_send_command
 *		Write the command event a transition asked for to the type's outbox
 *		(topic <saga_type>.<step>.execute or .compensate, key = saga id), in
 *		the caller's transaction.  The payload carries what a participant
 *		needs: the saga's data and the results of the steps so far.
 */
void
saga_send_command(SagaInstance *inst)
{
	SagaStepDef *s;
	Datum		args[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	char	   *topic;

	if (inst->command_step < 0 || !OidIsValid(inst->def->outbox))
		return;
	if (plan_send == NULL)
	{
		Oid			types[6] = {UUIDOID, OIDOID, TEXTOID, TEXTOID, INT4OID, TEXTOID};

		/* the command's contents, read as the saga tables' owner */
		plan_send = prepare("SELECT pg_catalog.jsonb_build_object('saga_id', i.saga_id, 'saga_type', i.saga_type,"
							"   'version', i.version, 'step', $3, 'action', $6, 'compensation', $4,"
							"   'attempt', $5, 'data', i.data, 'results', i.results),"
							" i.saga_id::pg_catalog.text,"
							" i.saga_type OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) $3"
							"   OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) $6"
							" FROM %1$s.saga_instances i WHERE i.saga_id OPERATOR(pg_catalog.=) $1",
							6, types);
		/* the write into the outbox, as the saga type's owner (see below) */
		plan_send_write = prepare("SELECT %1$s.send($1::pg_catalog.regclass, $2, $3, $4)", 4,
							  (Oid[]) {OIDOID, JSONBOID, TEXTOID, TEXTOID});
	}
	s = &inst->def->steps[inst->command_step];
	topic = inst->command_compensate ? "compensate" : "execute";
	args[0] = UUIDPGetDatum(&inst->id);
	args[1] = ObjectIdGetDatum(inst->def->outbox);
	args[2] = CStringGetTextDatum(s->name);
	args[3] = s->compensation && inst->command_compensate ? CStringGetTextDatum(s->compensation) : (Datum) 0;
	nulls[3] = s->compensation && inst->command_compensate ? ' ' : 'n';
	/* the step is running when the outbox started it (see dispatch) */
	args[4] = Int32GetDatum(inst->command_compensate ? 0 :
							inst->attempts[inst->command_step] +
							(inst->states[inst->command_step] == STEP_RUNNING ? 0 : 1));
	nulls[4] = inst->command_compensate ? 'n' : ' ';
	args[5] = CStringGetTextDatum(topic);
	if (SPI_execute_plan(plan_send, args, nulls, false, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "pg_courier: reading the saga command failed");
	{
		bool		isnull;
		Datum		ins[4];

		ins[0] = ObjectIdGetDatum(inst->def->outbox);
		ins[1] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		ins[2] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
		ins[3] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);

		/*
		 * The outbox is a table of the saga type's owner: whatever runs when a
		 * row is inserted there (its triggers, defaults, constraints) must run
		 * with that role's rights, never ours, and restricted as autovacuum and
		 * REFRESH MATERIALIZED VIEW restrict code they run on users' behalf,
		 * and nothing it sets or locks for the session may outlive the
		 * statement (the worker runs this after a timeout): owner_exec.c.
		 */
		if (courier_owner_execute_plan(inst->def->owner, plan_send_write, ins, NULL, false, 0) != SPI_OK_SELECT ||
			SPI_processed != 1)
			elog(ERROR, "pg_courier: writing the saga command failed");
	}
}
