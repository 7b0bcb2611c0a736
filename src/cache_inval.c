/*-------------------------------------------------------------------------
 *
 * cache_inval.c
 *	  Invalidation of cache keys when a transaction that modified a table
 *	  commits (triggers installed by courier.cache_invalidate_on).
 *
 * The row trigger renders the key template ('order:{id}') from the old and
 * the new row and remembers the keys in backend-local memory; TRUNCATE
 * remembers the template's literal prefix.  Nothing touches the cache
 * before commit, so a rollback (of the transaction or of a subtransaction)
 * evicts nothing.  At XACT_EVENT_COMMIT, which runs after the transaction
 * became visible to other snapshots, the keys are deleted.
 *
 * The race this leaves and how it is closed.  A reader that missed before
 * the commit may have read the old row and still be about to store it:
 *	  reader: miss -> SELECT (old snapshot) ........... -> cache_set(old)
 *	  writer:              UPDATE -> COMMIT -> delete key
 * Its store would then outlive the invalidation.  courier.cache_get_or_load
 * closes this: its LOADING entry exists before the loader's snapshot is
 * taken, and the commit-time delete marks that entry invalidated, so the
 * stale result is never stored (see cache_load.c).  A plain SELECT followed
 * by courier.cache_set by the application is not protected; doc/cache.md
 * says so.
 *
 * Key space.  The keys deleted are those of the table owner's key space
 * (key_space.c), whoever modifies the table: the owner (or a role it let
 * create triggers on it) chose the template, and no role can reach another
 * role's entries by truncating a table of its own.
 *
 * PREPARE TRANSACTION is refused when keys are pending: the commit would
 * happen in another session that cannot know them.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "pg_courier.h"
#include "cache.h"
#include "key_space.h"

PG_FUNCTION_INFO_V1(courier_cache_invalidate_trigger);

/* A key (or prefix) to delete at commit, made by subtransaction level `level`. */
typedef struct PendingKey
{
	int			level;
	Oid			space;			/* key space: the table owner's */
	bool		prefix;
	int			len;
	char		key[FLEXIBLE_ARRAY_MEMBER];
} PendingKey;

/* in TopTransactionContext; NIL outside transactions that invalidate */
static List *pending = NIL;
static bool callbacks_registered = false;

/*
 * cache_inval_pending
 *		Does this transaction have keys to invalidate at commit?
 */
bool
cache_inval_pending(void)
{
	return pending != NIL;
}

/*
 * invalidate_pending
 *		Delete the pending keys from the cache.  Runs after commit, so it must
 *		not fail: only lock operations and lookups.
 */
static void
invalidate_pending(void)
{
	ListCell   *lc;

	if (cache_shared == NULL)
		return;
	foreach(lc, pending)
	{
		PendingKey *pk = (PendingKey *) lfirst(lc);

		cache_space = pk->space;
		if (pk->prefix)
			cache_delete_matching(pk->key, pk->len, CACHE_REACH_KEY_SPACE);
		else
			cache_delete_key(pk->key, pk->len);
	}
}

static void
cache_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			if (pending != NIL)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that modified a table with cache invalidation"),
						 errdetail("Cache keys are invalidated when the modifying session commits.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			invalidate_pending();
			pending = NIL;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			pending = NIL;		/* the memory goes with TopTransactionContext */
			break;
		default:
			break;
	}
}

/*
 * cache_subxact_callback
 *		Forget keys of a rolled-back subtransaction; hand those of a committed
 *		one to its parent.
 */
static void
cache_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	ListCell   *lc;

	if (pending == NIL)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		foreach(lc, pending)
		{
			if (((PendingKey *) lfirst(lc))->level >= level)
				pending = foreach_delete_current(pending, lc);
		}
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		foreach(lc, pending)
		{
			PendingKey *pk = (PendingKey *) lfirst(lc);

			if (pk->level >= level)
				pk->level = level - 1;
		}
	}
}

/*
 * add_pending
 *		Remember a key (or prefix) until the end of the transaction.
 */
static void
add_pending(const char *key, int len, bool prefix, Oid space)
{
	MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
	PendingKey *pk = palloc(offsetof(PendingKey, key) + len);

	pk->level = GetCurrentTransactionNestLevel();
	pk->space = space;
	pk->prefix = prefix;
	pk->len = len;
	memcpy(pk->key, key, len);
	pending = lappend(pending, pk);
	MemoryContextSwitchTo(old);
}

/*
 * render_key
 *		The key of a row: the template with each {column} replaced by the
 *		column's text.  Returns false when a column is NULL (no key).
 */
static bool
render_key(const char *tmpl, Relation rel, HeapTuple tuple, StringInfo out)
{
	TupleDesc	desc = RelationGetDescr(rel);
	const char *s = tmpl;

	resetStringInfo(out);
	while (*s)
	{
		const char *close;
		char	   *col;
		char	   *val;
		int			attnum;

		if (*s != '{')
		{
			appendStringInfoChar(out, *s++);
			continue;
		}
		close = strchr(s, '}');
		if (close == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("cache key template \"%s\" has an unclosed \"{\"", tmpl)));
		col = pnstrdup(s + 1, close - s - 1);
		attnum = SPI_fnumber(desc, col);
		if (attnum <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("cache key template \"%s\" names column \"%s\", which table \"%s\" does not have",
							tmpl, col, RelationGetRelationName(rel)),
					 errhint("Install the invalidation again with courier.cache_invalidate_on().")));
		val = SPI_getvalue(tuple, desc, attnum);
		if (val == NULL)
			return false;
		appendStringInfoString(out, val);
		s = close + 1;
	}
	return true;
}

/*
 * courier_cache_invalidate_trigger
 *		AFTER INSERT/UPDATE/DELETE row trigger and AFTER TRUNCATE statement
 *		trigger; argument: the key template.
 */
Datum
courier_cache_invalidate_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	const char *tmpl;
	StringInfoData key;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("courier._cache_invalidate() must be fired as an AFTER trigger"),
				 errhint("Install it with courier.cache_invalidate_on().")));
	if (td->tg_trigger->tgnargs != 1)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("courier._cache_invalidate() needs the key template as its only argument")));
	/* without a cache there is nothing to invalidate: never block writes */
	if (cache_shared == NULL)
		return PointerGetDatum(NULL);
	if (!callbacks_registered)
	{
		RegisterXactCallback(cache_xact_callback, NULL);
		RegisterSubXactCallback(cache_subxact_callback, NULL);
		callbacks_registered = true;
	}
	tmpl = td->tg_trigger->tgargs[0];
	initStringInfo(&key);

	if (TRIGGER_FIRED_BY_TRUNCATE(td->tg_event))
	{
		const char *brace = strchr(tmpl, '{');
		int			len = brace ? brace - tmpl : strlen(tmpl);

		add_pending(tmpl, len, true, courier_key_space_of(td->tg_relation->rd_rel->relowner));
	}
	else if (TRIGGER_FIRED_FOR_ROW(td->tg_event))
	{
		char	   *oldkey = NULL;

		if (render_key(tmpl, td->tg_relation, td->tg_trigtuple, &key) &&
			key.len <= CACHE_MAX_KEY_BYTES)
		{
			add_pending(key.data, key.len, false, courier_key_space_of(td->tg_relation->rd_rel->relowner));
			oldkey = pstrdup(key.data);
		}
		if (TRIGGER_FIRED_BY_UPDATE(td->tg_event) &&
			render_key(tmpl, td->tg_relation, td->tg_newtuple, &key) &&
			key.len <= CACHE_MAX_KEY_BYTES &&
			(oldkey == NULL || strcmp(oldkey, key.data) != 0))
			add_pending(key.data, key.len, false, courier_key_space_of(td->tg_relation->rd_rel->relowner));
	}
	return PointerGetDatum(NULL);
}
