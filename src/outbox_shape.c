/*-------------------------------------------------------------------------
 *
 * outbox_shape.c
 *	  What a relation must be to be registered (and served) as an outbox,
 *	  checked from the catalogs.
 *
 * Trust rule: the relation belongs to a role we do not trust.  Whatever it
 * can attach to a relation that runs code when the relation is read or
 * written (view and rule queries, foreign data wrappers, partition routing,
 * row-level security policies, domain checks) could run in the identity of a
 * superuser reading courier.outbox_stats or of the worker.  So an outbox is
 * exactly:
 *
 *	- an ordinary, permanent (logged) table: not a view, materialized view,
 *	  foreign or partitioned table, partition, sequence, temporary or
 *	  unlogged table (unlogged tables lose their events in a crash);
 *	- without rules, row-level security, a composite type behind it (typed
 *	  tables follow ALTER TYPE), inheritance parents or children (a SELECT or
 *	  DELETE on a parent reaches its children's rows);
 *	- with the outbox columns in their exact types (no domains), none of them
 *	  generated or identity; extra columns are allowed when they are nullable
 *	  or have a default (so that replays can insert rows); NOT NULL on our
 *	  columns may be dropped (the worker dead-letters rows it cannot send);
 *	- with a unique index on id alone (the worker deletes delivered rows by
 *	  id: duplicate ids would lose events);
 *	- with pg_courier's BEFORE INSERT and BEFORE UPDATE row triggers, enabled
 *	  in normal operation, without WHEN conditions or UPDATE OF columns.
 *	  Our trigger functions are recognised by their C symbol: only superusers
 *	  can create C functions, so no name lookup (which a schema owner could
 *	  influence) is involved.
 *
 * Registration (courier._outboxes_check) checks the structure only: a restore
 * loads courier.outboxes before it creates the tables' indexes, triggers and
 * rules.  create_outbox and adopt_outbox check everything; the worker checks
 * everything at each catalog refresh and does not serve what fails.
 *
 * Lock rule: none is taken.  The answer reflects the catalog snapshot; a
 * caller that goes on to read the relation (courier._outbox_pending) locks it
 * first and checks afterwards.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/pg_attribute.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "outbox_shape.h"

PG_FUNCTION_INFO_V1(courier_outbox_shape_problem_sql);

/* The columns of an outbox (as created by courier.create_outbox) and their types. */
static const struct
{
	const char *name;
	Oid			type;
}			outbox_columns[] =
{
	{"id", INT8OID},
	{"event_id", UUIDOID},
	{"topic", TEXTOID},
	{"key", TEXTOID},
	{"payload", JSONBOID},
	{"headers", JSONBOID},
	{"created_at", TIMESTAMPTZOID},
	{"attempts", INT4OID},
	{"next_attempt_at", TIMESTAMPTZOID},
	{"first_failed_at", TIMESTAMPTZOID},
	{"last_status", INT4OID},
	{"last_error", TEXTOID},
};

#define OUTBOX_NCOLUMNS lengthof(outbox_columns)

/*
 * relation_kind_problem
 *		Is the pg_class row an ordinary, permanent, plain table?
 */
static const char *
relation_kind_problem(Form_pg_class c)
{
	switch (c->relkind)
	{
		case RELKIND_RELATION:
			break;
		case RELKIND_VIEW:
			return "it is a view, not an ordinary table";
		case RELKIND_MATVIEW:
			return "it is a materialized view, not an ordinary table";
		case RELKIND_FOREIGN_TABLE:
			return "it is a foreign table, not an ordinary table";
		case RELKIND_PARTITIONED_TABLE:
			return "it is a partitioned table, not an ordinary table";
		case RELKIND_SEQUENCE:
			return "it is a sequence, not an ordinary table";
		default:
			return "it is not an ordinary table";
	}
	if (c->relpersistence == RELPERSISTENCE_TEMP)
		return "it is a temporary table (the delivery worker cannot see it)";
	if (c->relpersistence != RELPERSISTENCE_PERMANENT)
		return "it is an unlogged table (its events would be lost in a crash)";
	if (c->relispartition)
		return "it is a partition of another table";
	if (OidIsValid(c->reloftype))
		return "it is a typed table (OF a composite type)";
	if (c->relhasrules)
		return "it has rules";
	if (c->relrowsecurity || c->relforcerowsecurity)
		return "it has row-level security enabled (readers of its statistics would run its policies)";
	return NULL;
}

/*
 * has_inheritance_children
 *		Does any table inherit from relid?  (relhassubclass may be stale.)
 */
static bool
has_inheritance_children(Oid relid)
{
	Relation	inh = table_open(InheritsRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	bool		found;

	ScanKeyInit(&key, Anum_pg_inherits_inhparent, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(relid));
	scan = systable_beginscan(inh, InheritsParentIndexId, true, NULL, 1, &key);
	found = HeapTupleIsValid(systable_getnext(scan));
	systable_endscan(scan);
	table_close(inh, AccessShareLock);
	return found;
}

/*
 * columns_problem
 *		Does the table have the outbox columns, in their exact types?  Sets
 *		*id_attnum to the attribute number of id.
 */
static const char *
columns_problem(Oid relid, int natts, AttrNumber *id_attnum)
{
	bool		found[OUTBOX_NCOLUMNS] = {false};
	const char *extra_problem = NULL;

	for (AttrNumber attnum = 1; attnum <= natts; attnum++)
	{
		HeapTuple	tup = SearchSysCache2(ATTNUM, ObjectIdGetDatum(relid), Int16GetDatum(attnum));
		Form_pg_attribute att;
		const char *problem = NULL;
		int			i;

		if (!HeapTupleIsValid(tup))
			continue;
		att = (Form_pg_attribute) GETSTRUCT(tup);
		if (att->attisdropped)
		{
			ReleaseSysCache(tup);
			continue;
		}
		for (i = 0; i < OUTBOX_NCOLUMNS; i++)
			if (strcmp(NameStr(att->attname), outbox_columns[i].name) == 0)
				break;
		if (i == OUTBOX_NCOLUMNS)
		{
			/* said after a missing column: a renamed one is more likely */
			if (att->attnotnull && !att->atthasdef && extra_problem == NULL)
				extra_problem = psprintf("its extra column \"%s\" is NOT NULL without a default",
										 NameStr(att->attname));
		}
		else if (att->atttypid != outbox_columns[i].type)
			problem = psprintf("column \"%s\" has type %s, not %s", outbox_columns[i].name,
							   format_type_be(att->atttypid), format_type_be(outbox_columns[i].type));
		else if (att->attgenerated != '\0' || att->attidentity != '\0')
			problem = psprintf("column \"%s\" is a generated or identity column", outbox_columns[i].name);
		else
		{
			found[i] = true;
			if (i == 0)
				*id_attnum = attnum;
		}
		ReleaseSysCache(tup);
		if (problem)
			return problem;
	}
	for (int i = 0; i < OUTBOX_NCOLUMNS; i++)
		if (!found[i])
			return psprintf("column \"%s\" (%s) is missing", outbox_columns[i].name,
							format_type_be(outbox_columns[i].type));
	return extra_problem;
}

/*
 * has_unique_id_index
 *		Is there a valid unique index on (id) alone, without expressions or
 *		a predicate?
 */
static bool
has_unique_id_index(Oid relid, AttrNumber id_attnum)
{
	Relation	idx = table_open(IndexRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	bool		found = false;

	ScanKeyInit(&key, Anum_pg_index_indrelid, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(relid));
	scan = systable_beginscan(idx, IndexIndrelidIndexId, true, NULL, 1, &key);
	while (!found && HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_index ind = (Form_pg_index) GETSTRUCT(tup);

		found = ind->indisunique && ind->indisvalid && ind->indnkeyatts == 1 &&
			ind->indkey.values[0] == id_attnum &&
			heap_attisnull(tup, Anum_pg_index_indexprs, NULL) &&
			heap_attisnull(tup, Anum_pg_index_indpred, NULL);
	}
	systable_endscan(scan);
	table_close(idx, AccessShareLock);
	return found;
}

/*
 * is_courier_function
 *		Is fn pg_courier's C function with the given symbol?
 */
static bool
is_courier_function(Oid fn, const char *symbol)
{
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	bool		isnull;
	Datum		d;
	bool		result = false;

	if (!HeapTupleIsValid(tup))
		return false;
	if (((Form_pg_proc) GETSTRUCT(tup))->prolang == ClanguageId)
	{
		d = SysCacheGetAttr(PROCOID, tup, Anum_pg_proc_prosrc, &isnull);
		result = !isnull && strcmp(TextDatumGetCString(d), symbol) == 0;
		d = SysCacheGetAttr(PROCOID, tup, Anum_pg_proc_probin, &isnull);
		result = result && !isnull && strcmp(TextDatumGetCString(d), "$libdir/pg_courier") == 0;
	}
	ReleaseSysCache(tup);
	return result;
}

/*
 * triggers_problem
 *		Are pg_courier's BEFORE INSERT and BEFORE UPDATE row triggers there,
 *		firing in normal operation, unconditionally?
 */
static const char *
triggers_problem(Oid relid)
{
	Relation	trg = table_open(TriggerRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	bool		have_insert = false;
	bool		have_update = false;

	ScanKeyInit(&key, Anum_pg_trigger_tgrelid, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(relid));
	scan = systable_beginscan(trg, TriggerRelidNameIndexId, true, NULL, 1, &key);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_trigger t = (Form_pg_trigger) GETSTRUCT(tup);
		bool		fires = TRIGGER_FOR_ROW(t->tgtype) && TRIGGER_FOR_BEFORE(t->tgtype) &&
			(t->tgenabled == TRIGGER_FIRES_ON_ORIGIN || t->tgenabled == TRIGGER_FIRES_ALWAYS) &&
			heap_attisnull(tup, Anum_pg_trigger_tgqual, NULL);

		if (fires && TRIGGER_FOR_INSERT(t->tgtype) &&
			is_courier_function(t->tgfoid, "courier_outbox_before_insert"))
			have_insert = true;
		if (fires && TRIGGER_FOR_UPDATE(t->tgtype) && t->tgattr.dim1 == 0 &&
			is_courier_function(t->tgfoid, "courier_outbox_before_update"))
			have_update = true;
	}
	systable_endscan(scan);
	table_close(trg, AccessShareLock);
	if (!have_insert)
		return "pg_courier's BEFORE INSERT trigger (courier._outbox_before_insert) is missing or disabled";
	if (!have_update)
		return "pg_courier's BEFORE UPDATE trigger (courier._outbox_before_update) is missing or disabled";
	return NULL;
}

/*
 * courier_outbox_shape_problem_ext
 *		See outbox_shape.h.  complete false checks the structure only (kind,
 *		columns), not what pg_dump restores after the data (indexes,
 *		triggers) and what courier.adopt_outbox adds.
 */
const char *
courier_outbox_shape_problem_ext(Oid relid, bool complete)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Form_pg_class c;
	const char *problem;
	AttrNumber	id_attnum = InvalidAttrNumber;
	int			natts;

	if (!HeapTupleIsValid(tup))
		return "it does not exist (it was dropped)";
	c = (Form_pg_class) GETSTRUCT(tup);
	problem = relation_kind_problem(c);
	natts = c->relnatts;
	if (problem == NULL && c->relhassubclass && has_inheritance_children(relid))
		problem = "other tables inherit from it";
	ReleaseSysCache(tup);
	if (problem)
		return problem;
	if (has_superclass(relid))
		return "it inherits from another table";
	if ((problem = columns_problem(relid, natts, &id_attnum)) != NULL)
		return problem;
	if (!complete)
		return NULL;
	if (!has_unique_id_index(relid, id_attnum))
		return "it has no unique index on (id) alone (add PRIMARY KEY (id))";
	return triggers_problem(relid);
}

/*
 * courier_outbox_shape_problem
 *		See outbox_shape.h.
 */
const char *
courier_outbox_shape_problem(Oid relid)
{
	return courier_outbox_shape_problem_ext(relid, true);
}

/*
 * courier_outbox_shape_problem_sql
 *		courier._outbox_shape_problem(outbox regclass, complete boolean)
 *		RETURNS text: NULL for a real outbox, else what is wrong with it.
 */
Datum
courier_outbox_shape_problem_sql(PG_FUNCTION_ARGS)
{
	const char *problem = courier_outbox_shape_problem_ext(PG_GETARG_OID(0), PG_GETARG_BOOL(1));

	if (problem == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(problem));
}
