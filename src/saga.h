/*-------------------------------------------------------------------------
 *
 * saga.h
 *	  Saga-step state: declarations shared by saga.c (SQL entry points,
 *	  timeout sweep), saga_catalog.c (definitions, instance rows) and
 *	  saga_machine.c (the state machine proper).
 *
 * A saga instance is ONE row of courier.saga_instances; every transition
 * locks that row, computes the new state in memory (saga_machine.c) and
 * writes it back with one UPDATE.  Step states live in that row as one
 * character per step (step_states), so a transition never touches more
 * than the saga's own row (plus, when the type names an outbox, one
 * command event).
 *
 *-------------------------------------------------------------------------
 */
#ifndef COURIER_SAGA_H
#define COURIER_SAGA_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "storage/itemptr.h"
#include "utils/uuid.h"

/* Limits enforced by courier.saga_define (see _saga_check_steps in SQL). */
#define SAGA_MAX_STEPS		100

/* Saga statuses, as stored in courier.saga_instances.status. */
typedef enum SagaStatus
{
	SAGA_RUNNING,
	SAGA_COMPENSATING,
	SAGA_COMPLETED,
	SAGA_COMPENSATED,
	SAGA_FAILED
} SagaStatus;

/*
 * Step states, one character each in courier.saga_instances.step_states.
 * STEP_TIMED_OUT is shown as 'failed' but remembers that the failure was
 * imposed by us (timeout or abort), not reported by the participant: a
 * success reported late for such a step is accepted, and the step is then
 * compensated like any other succeeded step.
 */
#define STEP_PENDING		'p'
#define STEP_RUNNING		'r'
#define STEP_SUCCEEDED		's'
#define STEP_FAILED			'f'
#define STEP_TIMED_OUT		't'
#define STEP_COMPENSATING	'c'
#define STEP_COMPENSATED	'x'
#define STEP_COMP_FAILED	'e'

/* What a transition asks of the engine. */
typedef enum SagaOp
{
	SAGA_OP_STARTED,
	SAGA_OP_SUCCEEDED,
	SAGA_OP_FAILED,
	SAGA_OP_COMPENSATED,
	SAGA_OP_COMPENSATION_FAILED,
	SAGA_OP_ABORT,
	SAGA_OP_TIMEOUT
} SagaOp;

/* One step of a definition (immutable once defined). */
typedef struct SagaStepDef
{
	char	   *name;
	char	   *compensation;	/* NULL: nothing to undo */
	int64		timeout_ms;		/* 0: no timeout */
	int32		max_retries;
} SagaStepDef;

/* One version of a saga type, cached per backend (versions never change). */
typedef struct SagaDef
{
	char		saga_type[NAMEDATALEN];
	int32		version;
	Oid			types_relid;	/* courier.saga_types when this was read */
	Oid			owner;			/* role whose members may drive its sagas */
	Oid			outbox;			/* InvalidOid: no command events */
	int			nsteps;
	SagaStepDef *steps;
} SagaDef;

/* The action saga_next() and every transition report. */
typedef enum SagaAction
{
	SAGA_ACTION_NONE,
	SAGA_ACTION_EXECUTE,
	SAGA_ACTION_WAIT,
	SAGA_ACTION_COMPENSATE
} SagaAction;

typedef struct SagaNext
{
	SagaStatus	status;
	SagaAction	action;
	int			step;			/* -1: none */
	int32		attempt;		/* 0: not applicable */
} SagaNext;

/*
 * An instance as loaded (locked) from its row, plus what a transition
 * changed: the engine fills in the pending result/error/command, saga.c
 * writes them.
 */
typedef struct SagaInstance
{
	pg_uuid_t	id;
	ItemPointerData tid;
	SagaDef    *def;
	SagaStatus	status;
	char		states[SAGA_MAX_STEPS + 1];
	int32		attempts[SAGA_MAX_STEPS];
	int			current;		/* -1: none */
	bool		has_deadline;
	TimestampTz deadline;

	/* set by a transition */
	bool		changed;		/* false: an exact repeat, nothing to write */
	int			result_step;	/* -1, or the step whose result is stored */
	int			error_step;		/* -1, or the step whose error is stored */
	Datum		error;			/* jsonb, when error_step >= 0 */
	bool		abort;			/* store abort_reason */
	int			command_step;	/* -1, or the step a command is sent for */
	bool		command_compensate;
} SagaInstance;

/* saga_machine.c */
extern const char *saga_status_name(SagaStatus status);
extern SagaStatus saga_status_from_name(const char *name);
extern const char *saga_action_name(SagaAction action);
extern void saga_init_instance(SagaInstance *inst, SagaDef *def, TimestampTz now);
extern void saga_apply(SagaInstance *inst, SagaOp op, int step, TimestampTz now);
extern SagaNext saga_next_action(const SagaInstance *inst);
extern int	saga_step_index(const SagaDef *def, const char *name);

/* saga_catalog.c */
extern void saga_catalog_init(void);

/* saga.c: the caller's identity while we act as the saga tables' owner */
typedef struct SagaIdentity
{
	Oid			caller;
	int			sec_context;
	int			nestlevel;		/* GUC nest level holding the safe search_path */
} SagaIdentity;

extern PGDLLIMPORT int saga_timeout_interval_ms;
extern void saga_become_owner(SagaIdentity *id);
extern void saga_become_caller(SagaIdentity *id);
extern Datum saga_make_jsonb(const char *json);
extern char *saga_uuid_text(pg_uuid_t *id);
extern Oid	saga_owner_role(void);
extern SagaDef *saga_def_lookup(const char *saga_type, int32 version);
extern int32 saga_latest_version(const char *saga_type);
extern bool saga_load(SagaInstance *inst, pg_uuid_t *id, bool lock, bool fresh);
extern void saga_store(SagaInstance *inst, Datum result, Datum abort_reason, bool has_abort_reason);
extern bool saga_insert(SagaInstance *inst, Datum data);
extern void saga_send_command(SagaInstance *inst);

#endif							/* COURIER_SAGA_H */
