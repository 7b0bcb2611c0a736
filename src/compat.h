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

/*
 * 18 replaced pg_attribute_noreturn() (after the declarator) with
 * pg_noreturn (before the return type).  Before 18, the GCC/Clang attribute
 * works in the leading position too.
 */
#ifndef pg_noreturn
#define pg_noreturn pg_attribute_noreturn()
#endif

#endif							/* COURIER_COMPAT_H */
