/*-------------------------------------------------------------------------
 *
 * outbox_pending.c
 *	  courier._outbox_pending(outbox): the pending count and oldest event
 *	  of one outbox, for courier.outbox_stats and courier.metrics().
 *
 * Trust rules.  The reader (anyone reading the stats, superusers and
 * monitoring roles included) must never run another role's relation-level
 * code in its own identity: the registered relation may be a view, or a
 * table whose row-level security policies call its owner's functions.  So:
 *	- only a plain table that is registered (and visible to the reader in
 *	  courier.outboxes) and that the reader may SELECT is counted; anything
 *	  else shows NULLs;
 *	- when row-level security does not apply to the reader (none on the
 *	  table, or the reader bypasses it), the rows are counted by a heap scan
 *	  under the reader's snapshot: what count(*) would see, without running
 *	  a single function of the owner's;
 *	- when it applies, counting means running the table's policies: that is
 *	  done only when the reader owns the table (its own code, still run
 *	  restricted and without leftovers through owner_exec.c); any other
 *	  reader gets NULLs rather than running the owner's policies.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/tableam.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "pg_courier.h"
#include "owner_exec.h"

PG_FUNCTION_INFO_V1(courier_outbox_pending);

/* What was found: pending count and oldest created_at, each maybe unknown. */
typedef struct Pending
{
	Relation	rel;
	bool		counted;
	int64		count;
	bool		has_oldest;
	TimestampTz oldest;
} Pending;

/*
 * registered_for_reader
 *		Does courier.outboxes list relid, as the reader may see it?
 */
static bool
registered_for_reader(Oid relid)
{
	Oid			types[1] = {OIDOID};
	Datum		args[1] = {ObjectIdGetDatum(relid)};
	bool		found;

	SPI_connect();
	if (SPI_execute_with_args(psprintf("SELECT 1 FROM %s.outboxes o"
									   " WHERE o.outbox::pg_catalog.oid OPERATOR(pg_catalog.=) $1",
									   courier_schema_name()),
							  1, types, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "pg_courier: could not read the outbox catalog");
	found = (SPI_processed == 1);
	SPI_finish();
	return found;
}

/*
 * created_at_attnum
 *		The column created_at when it is (still) a timestamptz, else 0.
 */
static AttrNumber
created_at_attnum(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);

	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped && strcmp(NameStr(att->attname), "created_at") == 0)
			return att->atttypid == TIMESTAMPTZOID ? att->attnum : 0;
	}
	return 0;
}

/*
 * count_by_scan
 *		Count the rows the active snapshot sees, and find the oldest
 *		created_at, by a plain heap scan: no function of the table's owner
 *		runs (no policies apply to this reader, there are no others on a
 *		read).
 */
static void
count_by_scan(Pending *p)
{
	AttrNumber	attnum = created_at_attnum(p->rel);
	TableScanDesc scan;
	TupleTableSlot *slot;

	slot = table_slot_create(p->rel, NULL);
	scan = table_beginscan(p->rel, GetActiveSnapshot(), 0, NULL);
	while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
	{
		CHECK_FOR_INTERRUPTS();
		p->count++;
		if (attnum > 0)
		{
			bool		isnull;
			Datum		d = slot_getattr(slot, attnum, &isnull);

			if (!isnull && (!p->has_oldest || DatumGetTimestampTz(d) < p->oldest))
			{
				p->oldest = DatumGetTimestampTz(d);
				p->has_oldest = true;
			}
		}
	}
	table_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	p->counted = true;
}

/*
 * count_own_table
 *		The reader owns the table and its policies apply to it: count with
 *		SQL, which runs the reader's own policies, restricted and in a GUC
 *		nest level (courier_run_as_owner).
 */
static void
count_own_table(void *arg)
{
	Pending    *p = arg;
	AttrNumber	attnum = created_at_attnum(p->rel);
	bool		isnull;
	Datum		d;

	SPI_connect();
	if (SPI_execute(psprintf("SELECT pg_catalog.count(*), %s FROM %s",
							 attnum > 0 ? "pg_catalog.min(created_at)" : "NULL::pg_catalog.timestamptz",
							 quote_qualified_identifier(get_namespace_name(RelationGetNamespace(p->rel)),
														RelationGetRelationName(p->rel))),
					true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "pg_courier: could not count the rows of outbox %s", RelationGetRelationName(p->rel));
	p->count = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	p->has_oldest = !isnull;
	if (!isnull)
		p->oldest = DatumGetTimestampTz(d);
	p->counted = true;
	SPI_finish();
}

/*
 * count_pending
 *		Fill p for relid as the trust rules above allow.
 */
static void
count_pending(Oid relid, Pending *p)
{
	Oid			reader = GetUserId();

	if (!registered_for_reader(relid))
		return;
	p->rel = try_relation_open(relid, AccessShareLock);
	if (p->rel == NULL)
		return;
	if (p->rel->rd_rel->relkind != RELKIND_RELATION ||
		pg_class_aclcheck(relid, reader, ACL_SELECT) != ACLCHECK_OK)
		return;
	if (check_enable_rls(relid, InvalidOid, true) != RLS_ENABLED)
		count_by_scan(p);
	else if (p->rel->rd_rel->relowner == reader)
		courier_run_as_owner(reader, count_own_table, p);
}

/*
 * courier_outbox_pending
 *		courier._outbox_pending(outbox regclass, OUT pending bigint,
 *		OUT oldest_created_at timestamptz): NULLs where the trust rules do
 *		not allow a count.
 */
Datum
courier_outbox_pending(PG_FUNCTION_ARGS)
{
	Pending		p = {0};
	TupleDesc	desc;
	Datum		values[2];
	bool		nulls[2];

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "pg_courier: _outbox_pending must return a record");
	count_pending(PG_GETARG_OID(0), &p);
	if (p.rel != NULL)
		relation_close(p.rel, AccessShareLock);
	values[0] = Int64GetDatum(p.count);
	nulls[0] = !p.counted;
	values[1] = TimestampTzGetDatum(p.oldest);
	nulls[1] = !p.has_oldest;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}
