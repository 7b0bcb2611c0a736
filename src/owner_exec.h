/*-------------------------------------------------------------------------
 *
 * owner_exec.h
 *	  Identity: running other roles' relation-level code as that role,
 *	  restricted and without side effects on the caller (owner_exec.c), and
 *	  finding the extension's own schema by the extension's OID
 *	  (extension_schema.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef OWNER_EXEC_H
#define OWNER_EXEC_H

#include "executor/spi.h"

/*
 * The search_path every statement run for pg_courier is analysed under.
 * (Qualified operators, OPERATOR(pg_catalog.x), all share one precedence and
 * associate left: parenthesize mixed expressions.)
 */
#define COURIER_SAFE_SEARCH_PATH	"pg_catalog, pg_temp"

/* ---- owner_exec.c ---- */
extern void courier_run_as_owner(Oid owner, void (*fn) (void *), void *arg);
extern int	courier_owner_execute_plan(Oid owner, SPIPlanPtr plan, Datum *args, const char *nulls,
									   bool read_only, long count);
extern void courier_owner_exec_worker_mode(void);

/* ---- extension_schema.c ---- */
extern Oid	courier_schema_oid(void);
extern const char *courier_schema_name(void);
extern bool courier_schema_trusted(void);
extern char *courier_qualified(const char *relname);

#endif							/* OWNER_EXEC_H */
