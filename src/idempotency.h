/*-------------------------------------------------------------------------
 *
 * idempotency.h
 *	  Declarations shared by the idempotency-key modules (idempotency.c,
 *	  idempotency_sweep.c, idempotency_fingerprint.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef COURIER_IDEMPOTENCY_H
#define COURIER_IDEMPOTENCY_H

#include "postgres.h"

#include "executor/spi.h"

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

#endif							/* COURIER_IDEMPOTENCY_H */
