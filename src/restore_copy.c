/*-------------------------------------------------------------------------
 *
 * restore_copy.c
 *	  Restoring the extension's tables that name relations and roles:
 *	  COPY ... FROM STDIN of courier.outboxes, dead_letters,
 *	  delivered_events and saga_types (what pg_dump writes for them, as an
 *	  extension's configuration tables) keeps every row whose relation is in
 *	  the restored database and skips the others with one WARNING.
 *
 * Why.  Their outbox column is a regclass (and dead letters have a regrole
 * owner): pg_dump writes names, and COPY FROM turns a name back into an OID
 * or fails.  A dump without some of the outbox tables (pg_dump
 * --exclude-schema, or a table dropped on the way) would make the whole COPY
 * of the table fail: no registration, dead letter or saga type at all.
 *
 * How.  The ProcessUtility hook (outbox_dropdb.c) hands us such a COPY.  It
 * is run into a temporary table with the same columns, names as text, and
 * the rows are then inserted into the real table with the names resolved:
 * as the same user, through the same triggers and row-level security as the
 * COPY would have been.  A row naming a relation or role that does not
 * exist is left out (dead letters and delivered events keep theirs as
 * evidence: outbox NULL, outbox_name the dumped name, as after DROP TABLE).
 * COPY with a file, a program, a WHERE clause or to other tables is left to
 * PostgreSQL.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/parsenodes.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "pg_courier.h"
#include "owner_exec.h"
#include "restore_copy.h"

static const char *const name_tables[] = {"outboxes", "dead_letters", "delivered_events", "saga_types"};

/*
 * restore_target
 *		The relation of a COPY FROM STDIN into one of the tables above, or
 *		InvalidOid.
 */
static Oid
restore_target(Node *parsetree)
{
	CopyStmt   *stmt;
	Oid			nsp;
	Oid			relid;
	const char *relname;

	if (!IsA(parsetree, CopyStmt))
		return InvalidOid;
	stmt = (CopyStmt *) parsetree;
	if (!stmt->is_from || stmt->filename != NULL || stmt->is_program || stmt->relation == NULL ||
		stmt->query != NULL || stmt->whereClause != NULL)
		return InvalidOid;
	nsp = courier_schema_oid();
	if (!OidIsValid(nsp))
		return InvalidOid;
	relid = RangeVarGetRelid(stmt->relation, NoLock, true);
	if (!OidIsValid(relid) || get_rel_namespace(relid) != nsp)
		return InvalidOid;
	relname = get_rel_name(relid);
	for (int i = 0; i < lengthof(name_tables); i++)
		if (strcmp(relname, name_tables[i]) == 0)
			return relid;
	return InvalidOid;
}

/*
 * spi_exec
 *		Run one statement (SPI is connected); error out on failure.
 */
static uint64
spi_exec(const char *sql)
{
	int			rc = SPI_execute(sql, false, 0);

	if (rc < 0)
		elog(ERROR, "pg_courier: restore statement failed (%s): %s", SPI_result_code_string(rc), sql);
	return SPI_processed;
}

/*
 * column_copied
 *		Whether the COPY fills column name (all columns when it names none).
 */
static bool
column_copied(List *attlist, const char *name)
{
	ListCell   *lc;

	if (attlist == NIL)
		return true;
	foreach(lc, attlist)
		if (strcmp(strVal(lfirst(lc)), name) == 0)
			return true;
	return false;
}

/*
 * build_statements
 *		The staging table's DDL, the INSERT ... SELECT from it (for the
 *		columns the COPY fills), and an expression listing the names a row
 *		has that do not resolve (NULL when none).
 */
static void
build_statements(Relation rel, List *attlist, const char *staging,
				 StringInfo create, StringInfo insert, StringInfo missing)
{
	TupleDesc	desc = RelationGetDescr(rel);
	StringInfoData cols,
				exprs,
				cond;
	bool		evidence = false;
	int			ncreated = 0;

	/* dead_letters, delivered_events: an outbox that is gone is kept by name */
	for (int i = 0; i < desc->natts; i++)
		if (!TupleDescAttr(desc, i)->attisdropped &&
			strcmp(NameStr(TupleDescAttr(desc, i)->attname), "outbox_name") == 0)
			evidence = true;

	initStringInfo(&cols);
	initStringInfo(&exprs);
	initStringInfo(&cond);
	appendStringInfo(create, "CREATE TEMPORARY TABLE %s (", staging);
	appendStringInfoString(&cond, "true");
	appendStringInfoString(missing, "pg_catalog.concat_ws(', '");
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		const char *name = NameStr(att->attname);
		const char *col = quote_identifier(name);
		bool		isreg = (att->atttypid == REGCLASSOID || att->atttypid == REGROLEOID);
		const char *to_reg = att->atttypid == REGCLASSOID ? "pg_catalog.to_regclass" : "pg_catalog.to_regrole";

		if (att->attisdropped || att->attgenerated)
			continue;
		appendStringInfo(create, "%s%s %s", ncreated++ > 0 ? ", " : "", col,
						 isreg ? "pg_catalog.text" :
						 format_type_extended(att->atttypid, att->atttypmod,
											  FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY));
		if (evidence && strcmp(name, "outbox_name") == 0)
		{
			appendStringInfo(&cols, "%s%s", cols.len > 0 ? ", " : "", col);
			appendStringInfo(&exprs, "%sCASE WHEN s.outbox IS NOT NULL AND pg_catalog.to_regclass(s.outbox) IS NULL "
							 "THEN COALESCE(s.outbox_name, s.outbox) ELSE s.outbox_name END",
							 exprs.len > 0 ? ", " : "");
			continue;
		}
		if (!column_copied(attlist, name))
			continue;
		appendStringInfo(&cols, "%s%s", cols.len > 0 ? ", " : "", col);
		if (!isreg)
		{
			appendStringInfo(&exprs, "%ss.%s", exprs.len > 0 ? ", " : "", col);
			continue;
		}
		appendStringInfo(&exprs, "%s%s(s.%s)", exprs.len > 0 ? ", " : "", to_reg, col);
		appendStringInfo(missing, ", CASE WHEN %s(s.%s) IS NULL THEN s.%s END", to_reg, col, col);
		if (!(evidence && strcmp(name, "outbox") == 0))
			appendStringInfo(&cond, " AND (s.%s IS NULL OR %s(s.%s) IS NOT NULL)", col, to_reg, col);
	}
	appendStringInfoString(create, ")");
	appendStringInfoString(missing, ")");
	appendStringInfo(insert, "INSERT INTO %s.%s (%s) SELECT %s FROM %s s WHERE %s",
					 quote_identifier(get_namespace_name(RelationGetNamespace(rel))),
					 quote_identifier(RelationGetRelationName(rel)), cols.data, exprs.data, staging, cond.data);
}

/*
 * courier_restore_copy
 *		Run a COPY FROM STDIN into one of the tables that name relations
 *		through a staging table (see the file header), with next (the
 *		previous hook, or PostgreSQL's own).  Returns false, having done
 *		nothing, for any other statement.
 */
bool
courier_restore_copy(ProcessUtility_hook_type next, PlannedStmt *pstmt, const char *queryString,
					 bool readOnlyTree, ProcessUtilityContext context, ParamListInfo params,
					 QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Oid			relid = restore_target(pstmt->utilityStmt);
	CopyStmt   *stmt;
	PlannedStmt *staged;
	Relation	rel;
	char	   *staging;
	StringInfoData create,
				insert,
				missing,
				sql;
	uint64		inserted;

	if (!OidIsValid(relid))
		return false;

	stmt = copyObject((CopyStmt *) pstmt->utilityStmt);
	staging = psprintf("courier_restore_%s_%d", get_rel_name(relid), MyProcPid);
	initStringInfo(&create);
	initStringInfo(&insert);
	initStringInfo(&missing);
	rel = table_open(relid, AccessShareLock);
	build_statements(rel, stmt->attlist, quote_identifier(staging), &create, &insert, &missing);
	table_close(rel, AccessShareLock);

	/* the rows as they come, names as text */
	SPI_connect();
	spi_exec(create.data);
	SPI_finish();
	stmt->relation = makeRangeVar("pg_temp", staging, -1);
	staged = copyObject(pstmt);
	staged->utilityStmt = (Node *) stmt;
	(next ? next : standard_ProcessUtility) (staged, queryString, false, context, params, queryEnv, dest, qc);

	/* into the real table, names resolved; the rest said once */
	SPI_connect();
	inserted = spi_exec(insert.data);
	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT pg_catalog.count(*), pg_catalog.string_agg(DISTINCT m, ', ') "
					 "FROM (SELECT %s AS m FROM pg_temp.%s s) x WHERE m OPERATOR(pg_catalog.<>) ''",
					 missing.data, quote_identifier(staging));
	spi_exec(sql.data);
	if (SPI_processed == 1)
	{
		bool		isnull;
		int64		skipped = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		char	   *names = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);

		if (skipped > 0)
			ereport(WARNING,
					(errmsg("pg_courier: %lld rows of %s name relations or roles that are not in this database",
							(long long) skipped, get_rel_name(relid)),
					 errdetail("Missing: %s.  Dead letters and delivered events of a missing outbox are kept under "
							   "its name (outbox_name); other rows are left out.", names),
					 errhint("Restore the missing tables first (and courier.adopt_outbox() them), or ignore this "
							 "for a partial dump.")));
	}
	spi_exec(psprintf("DROP TABLE pg_temp.%s", quote_identifier(staging)));
	SPI_finish();
	if (qc)
		SetQueryCompletion(qc, CMDTAG_COPY, inserted);
	return true;
}
