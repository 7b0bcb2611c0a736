/*-------------------------------------------------------------------------
 *
 * outbox_options.c
 *	  The bounds of per-outbox options that override a GUC.
 *
 * An outbox option such as {"max_inflight": 64} replaces a courier.* GUC for
 * one outbox; it must stay within the bounds a superuser could have set the
 * GUC to (one role's option must not exhaust the worker's descriptors or
 * memory, which serve every outbox of the database).  The bounds are read
 * from the GUC definitions in pg_courier.c, not repeated here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/guc_tables.h"

#include "compat.h"			/* after guc_tables.h: courier_find_guc */

PG_FUNCTION_INFO_V1(courier_option_bounds);

/* Outbox options that override an integer GUC. */
static const struct
{
	const char *option;
	const char *guc;
}			bounded_options[] =
{
	{"batch_size", "courier.batch_size"},
	{"max_inflight", "courier.max_inflight"},
	{"timeout_ms", "courier.http_timeout_ms"},
	{"retry_base_ms", "courier.retry_base_ms"},
	{"retry_max_ms", "courier.retry_max_ms"},
	{"max_attempts", "courier.max_attempts"},
	{"max_request_bytes", "courier.max_request_bytes"},
};

/*
 * find_int_guc
 *		The definition of an integer GUC, or NULL.
 */
static struct config_int *
find_int_guc(const char *name)
{
	struct config_generic *gen = courier_find_guc(name);

	if (gen == NULL || gen->vartype != PGC_INT)
		return NULL;
	return (struct config_int *) gen;
}

/*
 * courier_option_bounds
 *		courier._option_bounds(option text, OUT setting text, OUT min_val
 *		bigint, OUT max_val bigint): the GUC an outbox option overrides and
 *		its bounds; no row for an option without bounds.
 */
Datum
courier_option_bounds(PG_FUNCTION_ARGS)
{
	char	   *option = text_to_cstring(PG_GETARG_TEXT_PP(0));
	TupleDesc	desc;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "courier._option_bounds must return a record");
	for (int i = 0; i < lengthof(bounded_options); i++)
	{
		struct config_int *guc;

		if (strcmp(bounded_options[i].option, option) != 0)
			continue;
		guc = find_int_guc(bounded_options[i].guc);
		if (guc == NULL)
			elog(ERROR, "pg_courier: setting %s is not defined", bounded_options[i].guc);
		values[0] = CStringGetTextDatum(bounded_options[i].guc);
		values[1] = Int64GetDatum(guc->min);
		values[2] = Int64GetDatum(guc->max);
		PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
	}
	PG_RETURN_NULL();
}
