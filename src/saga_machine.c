/*-------------------------------------------------------------------------
 *
 * saga_machine.c
 *	  The saga state machine: pure functions over an in-memory instance.
 *
 * Saga:  running -> completed
 *        running -> compensating -> compensated
 *                                -> failed (a compensation failed)
 * Step:  pending -> running -> succeeded -> compensating -> compensated
 *                           -> failed     (retried while retries remain)
 *                                            compensating -> compensation_failed
 *
 * Messages arrive at least once, so a transition that was already applied
 * is a no-op (inst->changed stays false); anything else that does not fit
 * the diagram is an error with SQLSTATE 55000 (object not in prerequisite
 * state).  Nothing here touches the database: saga.c loads and stores.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

#include "compat.h"
#include "saga.h"

static void dispatch(SagaInstance *inst, TimestampTz now);

static const char *const status_names[] = {
	"running", "compensating", "completed", "compensated", "failed"
};

static const char *const action_names[] = {
	"none", "execute", "wait", "compensate"
};

/*
 * saga_status_name / saga_status_from_name
 *		Map statuses to the text stored in the table and back.
 */
const char *
saga_status_name(SagaStatus status)
{
	return status_names[status];
}

SagaStatus
saga_status_from_name(const char *name)
{
	for (int i = 0; i < lengthof(status_names); i++)
		if (strcmp(name, status_names[i]) == 0)
			return (SagaStatus) i;
	elog(ERROR, "unknown saga status \"%s\"", name);
	return SAGA_FAILED;			/* keep compiler quiet */
}

const char *
saga_action_name(SagaAction action)
{
	return action_names[action];
}

/*
 * step_state_name
 *		How a step state is shown to users (same words as courier.saga_steps).
 */
static const char *
step_state_name(char c)
{
	switch (c)
	{
		case STEP_PENDING:
			return "pending";
		case STEP_RUNNING:
			return "running";
		case STEP_SUCCEEDED:
			return "succeeded";
		case STEP_FAILED:
		case STEP_TIMED_OUT:
			return "failed";
		case STEP_COMPENSATING:
			return "compensating";
		case STEP_COMPENSATED:
			return "compensated";
		case STEP_COMP_FAILED:
			return "compensation_failed";
	}
	return "unknown";
}

/*
 * saga_step_index
 *		Position of a step in its definition, -1 when there is no such step.
 */
int
saga_step_index(const SagaDef *def, const char *name)
{
	for (int i = 0; i < def->nsteps; i++)
		if (strcmp(def->steps[i].name, name) == 0)
			return i;
	return -1;
}

/*
 * saga_init_instance
 *		A new saga: running, first step pending (its execute command due).
 */
void
saga_init_instance(SagaInstance *inst, SagaDef *def, TimestampTz now)
{
	inst->def = def;
	inst->status = SAGA_RUNNING;
	memset(inst->states, STEP_PENDING, def->nsteps);
	inst->states[def->nsteps] = '\0';
	memset(inst->attempts, 0, sizeof(int32) * def->nsteps);
	inst->current = 0;
	inst->has_deadline = false;
	inst->changed = true;
	inst->result_step = inst->error_step = -1;
	inst->abort = false;
	inst->command_step = 0;
	inst->command_compensate = false;
	dispatch(inst, now);
}

/*
 * start_step
 *		Step k is now in flight: count the attempt and arm its deadline.
 */
static void
start_step(SagaInstance *inst, int k, TimestampTz now)
{
	inst->states[k] = STEP_RUNNING;
	inst->attempts[k]++;
	inst->has_deadline = inst->def->steps[k].timeout_ms > 0;
	if (inst->has_deadline)
		inst->deadline = now + inst->def->steps[k].timeout_ms * INT64CONST(1000);
}

/*
 * dispatch
 *		When the type names an outbox, the execute command written in this
 *		transaction is what starts the step: it is running (and its timeout
 *		counting) from the moment the command commits.  A participant may
 *		still report saga_step_started; that is then a repeat.
 */
static void
dispatch(SagaInstance *inst, TimestampTz now)
{
	if (inst->command_step >= 0 && !inst->command_compensate && OidIsValid(inst->def->outbox))
		start_step(inst, inst->command_step, now);
}

/*
 * illegal
 *		Raise the error of a transition that does not fit the state machine.
 */
pg_noreturn static void
illegal(const SagaInstance *inst, int step, const char *what, const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("cannot %s step \"%s\" of saga %s (step state: %s, saga status: %s)",
					what, inst->def->steps[step].name,
					DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&inst->id))),
					step_state_name(inst->states[step]), saga_status_name(inst->status)),
			 hint ? errhint("%s", hint) : 0));
}

/*
 * compensate_next
 *		Ask for the compensation of the last succeeded step that has one;
 *		when none is left the saga is compensated.  Succeeded steps without
 *		a compensation have nothing to undo and keep their state.
 */
static void
compensate_next(SagaInstance *inst)
{
	for (int i = inst->def->nsteps - 1; i >= 0; i--)
	{
		if (inst->states[i] == STEP_SUCCEEDED && inst->def->steps[i].compensation != NULL)
		{
			inst->states[i] = STEP_COMPENSATING;
			inst->current = i;
			inst->command_step = i;
			inst->command_compensate = true;
			inst->status = SAGA_COMPENSATING;
			return;
		}
	}
	inst->status = SAGA_COMPENSATED;
	inst->current = -1;
}

/*
 * advance
 *		Step k succeeded while the saga runs: the next step is due, or the
 *		saga is completed.
 */
static void
advance(SagaInstance *inst, int k)
{
	if (k + 1 < inst->def->nsteps)
	{
		inst->current = k + 1;
		inst->command_step = k + 1;
		inst->command_compensate = false;
	}
	else
	{
		inst->status = SAGA_COMPLETED;
		inst->current = -1;
	}
}

/*
 * fail_step
 *		The running step k failed (reported, timed out or aborted): retry it
 *		while retries remain, otherwise start compensating.
 */
static void
fail_step(SagaInstance *inst, int k, char how, bool may_retry)
{
	inst->states[k] = how;
	inst->has_deadline = false;
	inst->error_step = k;
	if (may_retry && inst->attempts[k] <= inst->def->steps[k].max_retries)
	{
		inst->command_step = k;
		inst->command_compensate = false;
	}
	else
		compensate_next(inst);
}

/*
 * apply_started
 */
static void
apply_started(SagaInstance *inst, int k, TimestampTz now)
{
	char		st = inst->states[k];
	bool		due = inst->status == SAGA_RUNNING && inst->current == k;

	if (st == STEP_PENDING || ((st == STEP_FAILED || st == STEP_TIMED_OUT) && due))
	{
		if (!due)
			illegal(inst, k, "start", inst->status == SAGA_RUNNING ?
					"Steps run in order: see courier.saga_next() for the step that is due." : NULL);
		start_step(inst, k, now);
		inst->changed = true;
	}
	/* running, or any later state: this start was applied already */
}

/*
 * apply_succeeded
 */
static void
apply_succeeded(SagaInstance *inst, int k)
{
	switch (inst->states[k])
	{
		case STEP_RUNNING:
			inst->states[k] = STEP_SUCCEEDED;
			inst->has_deadline = false;
			inst->result_step = k;
			advance(inst, k);
			break;
		case STEP_TIMED_OUT:
			/* a late success of a step we failed: accept it, then undo it */
			inst->states[k] = STEP_SUCCEEDED;
			inst->result_step = k;
			if (inst->status == SAGA_RUNNING)
				advance(inst, k);	/* it was waiting for a retry */
			else if (inst->status == SAGA_COMPENSATED)
				compensate_next(inst);
			/* compensating: picked up after the current compensation */
			break;
		case STEP_PENDING:
			illegal(inst, k, "succeed", "Report courier.saga_step_started() first.");
		case STEP_FAILED:
			illegal(inst, k, "succeed", inst->status == SAGA_RUNNING ?
					"Its last attempt failed; report courier.saga_step_started() for the retry first." : NULL);
		default:
			return;				/* succeeded or later: a repeat */
	}
	inst->changed = true;
}

/*
 * apply_failed
 */
static void
apply_failed(SagaInstance *inst, int k)
{
	switch (inst->states[k])
	{
		case STEP_RUNNING:
			fail_step(inst, k, STEP_FAILED, true);
			inst->changed = true;
			return;
		case STEP_FAILED:
		case STEP_TIMED_OUT:
			return;				/* a repeat */
		case STEP_PENDING:
			illegal(inst, k, "fail", "Report courier.saga_step_started() first.");
		default:
			illegal(inst, k, "fail",
					"A step that succeeded can only be compensated; report a failed compensation with courier.saga_compensation_failed().");
	}
}

/*
 * apply_compensated
 *		Also the way out of a failed saga: once an operator has undone the
 *		step by hand, reporting it compensated resumes the compensation.
 */
static void
apply_compensated(SagaInstance *inst, int k)
{
	switch (inst->states[k])
	{
		case STEP_COMPENSATING:
		case STEP_COMP_FAILED:
			inst->states[k] = STEP_COMPENSATED;
			compensate_next(inst);
			inst->changed = true;
			return;
		case STEP_COMPENSATED:
			return;				/* a repeat */
		default:
			illegal(inst, k, "compensate",
					"Only a step whose compensation was requested (see courier.saga_next()) can be compensated.");
	}
}

/*
 * apply_compensation_failed
 */
static void
apply_compensation_failed(SagaInstance *inst, int k)
{
	switch (inst->states[k])
	{
		case STEP_COMPENSATING:
			inst->states[k] = STEP_COMP_FAILED;
			inst->status = SAGA_FAILED;
			inst->current = k;
			inst->error_step = k;
			inst->changed = true;
			return;
		case STEP_COMP_FAILED:
			return;				/* a repeat */
		default:
			illegal(inst, k, "fail the compensation of",
					"Only a step whose compensation was requested (see courier.saga_next()) can fail to compensate.");
	}
}

/*
 * apply_abort
 *		Give up a running saga: its running step (if any) counts as failed
 *		by us, and the succeeded steps are compensated.  Aborting a saga
 *		that is already being (or was) undone changes nothing.
 */
static void
apply_abort(SagaInstance *inst)
{
	if (inst->status == SAGA_COMPLETED)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot abort saga %s: it is completed",
						DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&inst->id)))),
				 errhint("A completed saga is final; undo its effects with a new saga.")));
	if (inst->status != SAGA_RUNNING)
		return;
	if (inst->current >= 0 && inst->states[inst->current] == STEP_RUNNING)
		fail_step(inst, inst->current, STEP_TIMED_OUT, false);
	else
		compensate_next(inst);
	inst->abort = true;
	inst->changed = true;
}

/*
 * apply_timeout
 *		The sweep found step k past its deadline (the caller checked it).
 */
static void
apply_timeout(SagaInstance *inst, int k)
{
	if (inst->status != SAGA_RUNNING || inst->states[k] != STEP_RUNNING)
		return;
	fail_step(inst, k, STEP_TIMED_OUT, true);
	inst->changed = true;
}

/*
 * saga_apply
 *		Apply one transition to a loaded instance.  Errors leave the caller's
 *		row untouched (the transaction aborts).
 */
void
saga_apply(SagaInstance *inst, SagaOp op, int step, TimestampTz now)
{
	inst->changed = false;
	inst->result_step = inst->error_step = inst->command_step = -1;
	inst->abort = false;

	switch (op)
	{
		case SAGA_OP_STARTED:
			apply_started(inst, step, now);
			break;
		case SAGA_OP_SUCCEEDED:
			apply_succeeded(inst, step);
			break;
		case SAGA_OP_FAILED:
			apply_failed(inst, step);
			break;
		case SAGA_OP_COMPENSATED:
			apply_compensated(inst, step);
			break;
		case SAGA_OP_COMPENSATION_FAILED:
			apply_compensation_failed(inst, step);
			break;
		case SAGA_OP_ABORT:
			apply_abort(inst);
			break;
		case SAGA_OP_TIMEOUT:
			apply_timeout(inst, step);
			break;
	}
	dispatch(inst, now);
}

/*
 * saga_next_action
 *		What the orchestrator should do now.
 */
SagaNext
saga_next_action(const SagaInstance *inst)
{
	SagaNext	n = {inst->status, SAGA_ACTION_NONE, inst->current, 0};
	int			k = inst->current;

	if (k < 0)
		return n;
	switch (inst->status)
	{
		case SAGA_RUNNING:
			if (inst->states[k] == STEP_RUNNING)
			{
				n.action = SAGA_ACTION_WAIT;
				n.attempt = inst->attempts[k];
			}
			else
			{
				n.action = SAGA_ACTION_EXECUTE;
				n.attempt = inst->attempts[k] + 1;
			}
			break;
		case SAGA_COMPENSATING:
			n.action = SAGA_ACTION_COMPENSATE;
			break;
		default:
			break;				/* failed: current is the step to look at */
	}
	return n;
}
