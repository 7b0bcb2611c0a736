/*-------------------------------------------------------------------------
 *
 * outbox_shape.h
 *	  What a relation must be to be registered (and served) as an outbox.
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_SHAPE_H
#define OUTBOX_SHAPE_H

#include "postgres.h"

/*
 * NULL when the relation is a real outbox; otherwise a palloc'd clause that
 * says what is wrong ("it is a view, not an ordinary table"), meant to follow
 * "relation X cannot be an outbox: ".  Catalog access only (no SPI, no lock,
 * no user code): cheap, and safe in the worker for any OID, dropped ones too.
 */
extern const char *courier_outbox_shape_problem(Oid relid);

/*
 * complete = false: the structure only (kind, columns), not the unique index
 * on id and the triggers (which pg_dump restores after the data, and
 * courier.adopt_outbox adds).
 */
extern const char *courier_outbox_shape_problem_ext(Oid relid, bool complete);

#endif							/* OUTBOX_SHAPE_H */
