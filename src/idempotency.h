/*-------------------------------------------------------------------------
 *
 * idempotency.h
 *	  Declarations shared by the idempotency-key modules (idempotency.c,
 *	  idempotency_finish.c, idempotency_sweep.c, idempotency_fingerprint.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef COURIER_IDEMPOTENCY_H
#define COURIER_IDEMPOTENCY_H

#include "postgres.h"

#include "executor/spi.h"
#include "fmgr.h"
#include "storage/lock.h"
#include "utils/timestamp.h"

/*
 * The key functions run without a SET search_path (that costs a quarter of
 * a replay): every name and operator in their statements is qualified.
 */
#define EQ		" OPERATOR(pg_catalog.=) "
#define GT		" OPERATOR(pg_catalog.>) "
#define LE		" OPERATOR(pg_catalog.<=) "
#define PLUS	" OPERATOR(pg_catalog.+) "

/*
 * Every statement has 7 parameters: its own first, padded with NULLs, and
 * the key space (the owning role) always as $7, so that the plans shared by
 * several functions agree on it.
 */
#define IDEM_NARGS			7
#define ARG_OWNER			6

/* complete/abandon/extend's look at a key they could not act on. */
#define STATE_SQL \
	"SELECT state, expires_at " GT " $3 " \
	"  FROM courier.idempotency_keys " \
	" WHERE owner " EQ " $7 AND scope " EQ " $1 AND key " EQ " $2"

/* The caller's key space and identity, saved while acting as the owner. */
typedef struct IdemCall
{
	Oid			space;
	Oid			save_user;
	int			save_sec;
	Oid			relid;			/* courier.idempotency_keys */
} IdemCall;

/* ---- GUCs (idempotency_sweep.c) ---- */
extern int	courier_idempotency_sweep_ms;
extern int	courier_idempotency_sweep_batch;
extern int	courier_dedupe_retention_s;

/*
 * courier_idem_plan
 *		Prepare (once per backend) and keep a plan; *slot caches it.
 */
extern SPIPlanPtr courier_idem_plan(SPIPlanPtr *slot, const char *sql,
									int nargs, Oid *argtypes);

/* ---- idempotency.c, shared with idempotency_finish.c ---- */
extern void courier_idem_enter(IdemCall *c);
extern void courier_idem_leave(IdemCall *c);
extern text *courier_idem_check_name(FunctionCallInfo fcinfo, int argno, const char *what, bool empty_ok);
extern Interval *courier_idem_check_interval(FunctionCallInfo fcinfo, int argno, const char *what);
extern void courier_idem_locktag(LOCKTAG *tag, Oid space, text *scope, text *key);

#endif							/* COURIER_IDEMPOTENCY_H */
