/*-------------------------------------------------------------------------
 *
 * extension_schema.c
 *	  The extension's own schema, found from the extension's catalog entry
 *	  (never by the name "courier"), and whether it can be trusted.
 *
 * Trust rules.  pg_courier's SQL refers to its relations and functions in
 * the schema pg_extension records for it, quoted: a schema of that name made
 * by someone else, or objects planted on a search_path, are never picked up.
 * The schema is trusted only while it and the extension belong to
 * superusers: its owner could otherwise rename and replace what the worker
 * (a superuser) reads and calls.  The delivery worker refuses to serve a
 * database whose schema is not trusted.
 *
 * The lookup is cached for the current command of the current transaction:
 * a DROP and CREATE EXTENSION in between (even in the same transaction) is
 * seen at the next command.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "access/xact.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_namespace.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "pg_courier.h"
#include "owner_exec.h"

/* The lookup of the current transaction. */
static LocalTransactionId cached_lxid = InvalidLocalTransactionId;
static CommandId cached_cid = InvalidCommandId;
static Oid	cached_nsp = InvalidOid;
static Oid	cached_extowner = InvalidOid;
static char *cached_quoted = NULL;	/* in TopMemoryContext */

/*
 * lookup_extension
 *		Read pg_courier's pg_extension entry: its schema and owner (invalid
 *		when the extension is not installed).
 */
static void
lookup_extension(void)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;

	if (cached_lxid != InvalidLocalTransactionId && cached_lxid == COURIER_MY_LXID &&
		cached_cid == GetCurrentCommandId(false))
		return;
	cached_nsp = InvalidOid;
	cached_extowner = InvalidOid;
	if (cached_quoted)
		pfree(cached_quoted);
	cached_quoted = NULL;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum(COURIER_EXTENSION));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		cached_nsp = ((Form_pg_extension) GETSTRUCT(tup))->extnamespace;
		cached_extowner = ((Form_pg_extension) GETSTRUCT(tup))->extowner;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);

	if (OidIsValid(cached_nsp))
	{
		char	   *name = get_namespace_name(cached_nsp);

		if (name == NULL)
			elog(ERROR, "pg_courier: the schema of extension \"%s\" (OID %u) is missing",
				 COURIER_EXTENSION, cached_nsp);
		cached_quoted = MemoryContextStrdup(TopMemoryContext, quote_identifier(name));
	}
	cached_lxid = COURIER_MY_LXID;
	cached_cid = GetCurrentCommandId(false);
}

/*
 * courier_schema_oid
 *		The OID of the extension's schema; InvalidOid when the extension is
 *		not installed in this database.
 */
Oid
courier_schema_oid(void)
{
	lookup_extension();
	return cached_nsp;
}

/*
 * courier_schema_name
 *		The extension's schema name, quoted for SQL text.  Errors out when the
 *		extension is not installed.
 */
const char *
courier_schema_name(void)
{
	lookup_extension();
	if (!OidIsValid(cached_nsp))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"%s\" is not installed in this database", COURIER_EXTENSION)));
	return cached_quoted;
}

/*
 * courier_qualified
 *		"schema".relname of one of the extension's objects, in the current
 *		memory context (relname must be a plain lower-case identifier).
 */
char *
courier_qualified(const char *relname)
{
	return psprintf("%s.%s", courier_schema_name(), relname);
}

/*
 * courier_schema_trusted
 *		Do the extension's schema and the extension itself belong to
 *		superusers?  False when the extension is not installed.
 */
bool
courier_schema_trusted(void)
{
	HeapTuple	tup;
	Oid			nspowner;

	lookup_extension();
	if (!OidIsValid(cached_nsp))
		return false;
	tup = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(cached_nsp));
	if (!HeapTupleIsValid(tup))
		return false;
	nspowner = ((Form_pg_namespace) GETSTRUCT(tup))->nspowner;
	ReleaseSysCache(tup);
	return superuser_arg(nspowner) && superuser_arg(cached_extowner);
}
