/*-------------------------------------------------------------------------
 *
 * compat.h
 *	  Differences between the PostgreSQL majors pg_courier builds against
 *	  (15, 16, 17, 18), in one place.  Code elsewhere uses the names below
 *	  and never tests PG_VERSION_NUM itself.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COURIER_COMPAT_H
#define COURIER_COMPAT_H

#include "postgres.h"

/* 16 moved the varlena macros (VARDATA, SET_VARSIZE, ...) out of postgres.h. */
#if PG_VERSION_NUM >= 160000
#include "varatt.h"
#endif

/* The PGPROC slot number of this backend: renamed in 17. */
#if PG_VERSION_NUM >= 170000
#define COURIER_MY_PROCNO	MyProcNumber
#else
#define COURIER_MY_PROCNO	(MyProc->pgprocno)
#endif

/* This backend's local transaction id: moved into PGPROC.vxid in 17. */
#if PG_VERSION_NUM >= 170000
#define COURIER_MY_LXID		(MyProc->vxid.lxid)
#else
#define COURIER_MY_LXID		(MyProc->lxid)
#endif

/* 16 replaced the per-catalog ownership checks with object_ownercheck(). */
#if PG_VERSION_NUM >= 160000
#define courier_database_ownercheck(dboid, roleid) \
	object_ownercheck(DatabaseRelationId, (dboid), (roleid))
#else
#define courier_database_ownercheck(dboid, roleid)	pg_database_ownercheck((dboid), (roleid))
#endif

/* 16 gave stringToQualifiedNameList a soft-error context (NULL: throw as before). */
#if PG_VERSION_NUM >= 160000
#define courier_qualified_name_list(str)	stringToQualifiedNameList((str), NULL)
#else
#define courier_qualified_name_list(str)	stringToQualifiedNameList(str)
#endif

/* 18 lets the caller accept a deferrable primary key; ours are never deferrable. */
#if PG_VERSION_NUM >= 180000
#define courier_primary_key_index(rel)	RelationGetPrimaryKeyIndex((rel), false)
#else
#define courier_primary_key_index(rel)	RelationGetPrimaryKeyIndex(rel)
#endif

/* 18 made the byte side of pg_b64_encode/pg_b64_decode uint8 (before: char). */
#if PG_VERSION_NUM >= 180000
typedef uint8 courier_b64_byte;
#else
typedef char courier_b64_byte;
#endif

/*
 * 18 replaced pg_attribute_noreturn() (after the declarator) with
 * pg_noreturn (before the return type).  Before 18, the GCC/Clang attribute
 * works in the leading position too.
 */
#ifndef pg_noreturn
#define pg_noreturn pg_attribute_noreturn()
#endif

/*
 * A GUC check hook's "extra" is freed by guc.c: with free() before 16, with
 * guc_free() (a GUC memory context) since.
 */
#if PG_VERSION_NUM >= 160000
#define courier_guc_malloc(size)	guc_malloc(LOG, (size))
#define courier_guc_free(ptr)		guc_free(ptr)
#else
#define courier_guc_malloc(size)	malloc(size)
#define courier_guc_free(ptr)		free(ptr)
#endif

/*
 * JSON semantic-action callbacks return a status since 16 (before: void);
 * write them as  static COURIER_JSON_CB_TYPE cb(...) { ...; COURIER_JSON_CB_RETURN; }
 */
#if PG_VERSION_NUM >= 160000
#define COURIER_JSON_CB_TYPE	JsonParseErrorType
#define COURIER_JSON_CB_RETURN	return JSON_SUCCESS
#else
#define COURIER_JSON_CB_TYPE	void
#define COURIER_JSON_CB_RETURN	return
#endif

/* 17's JSON lexer takes a context to fill (NULL: allocate) and a const input. */
#if PG_VERSION_NUM >= 170000
#define courier_json_lexer(json, len) \
	makeJsonLexContextCstringLen(NULL, (json), (len), PG_UTF8, true)
#else
#define courier_json_lexer(json, len) \
	makeJsonLexContextCstringLen(unconstify(char *, (json)), (len), PG_UTF8, true)
#endif

/*
 * The definition of a GUC by name, for files that include utils/guc_tables.h
 * before this header: 16 exports find_option(); before, the table is
 * searched.
 */
#if PG_VERSION_NUM >= 160000
#define courier_find_guc(name)	find_option((name), false, true, ERROR)
#elif defined(GUC_TABLES_H)
static inline struct config_generic *
courier_find_guc(const char *name)
{
	struct config_generic **vars = get_guc_variables();
	int			n = GetNumConfigOptions();

	for (int i = 0; i < n; i++)
		if (strcmp(vars[i]->name, name) == 0)
			return vars[i];
	return NULL;
}
#endif

/* 18 made base64's byte arguments uint8. */
#if PG_VERSION_NUM >= 180000
#define courier_b64_encode(src, len, dst, dstlen) \
	pg_b64_encode((const uint8 *) (src), (len), (dst), (dstlen))
#else
#define courier_b64_encode(src, len, dst, dstlen) \
	pg_b64_encode((src), (len), (dst), (dstlen))
#endif

#endif							/* COURIER_COMPAT_H */
