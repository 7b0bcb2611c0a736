/*-------------------------------------------------------------------------
 *
 * key_space.c
 *	  Key spaces: idempotency keys, consume_once markers and cache entries
 *	  belong to a role.
 *
 * Every key lives in the key space of one role, which is part of the key:
 * the same key written by two roles is two keys.  A call uses the key space
 * of the current role (current_user: SET ROLE app_tenant makes the session
 * that tenant), unless the setting courier.key_space names another role; a
 * role may use the key space of a role it is a member of (directly or
 * through other roles, whether it may SET ROLE to it or inherits its
 * privileges), and of no other.  Sharing keys between roles is therefore a
 * deliberate act of the one who grants the membership: create a role for
 * the shared space (NOLOGIN), GRANT it to the roles that share, and have
 * them SET courier.key_space to it (or ALTER ROLE ... SET it).
 *
 * A superuser may instead turn key spaces off (courier.key_spaces = off,
 * for a database or the cluster): every call then uses the one shared key
 * space InvalidOid, as 0.1.0 did - for a database whose roles are all one
 * application.  The benchmarks use it as their same-run baseline.
 *
 * Trust: the setting is chosen by the caller and is never trusted; it is
 * resolved and checked on every call (a syscache lookup; membership lists
 * are cached by PostgreSQL).  Functions that run as the extension's owner
 * must call courier_key_space() before they change identity.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/guc.h"

#include "pg_courier.h"
#include "key_space.h"

/* courier.key_space: a role name, or '' for the current role */
char	   *courier_key_space_setting = NULL;

/* courier.key_spaces: off = one shared key space per database (superuser) */
bool		courier_key_spaces = true;

/*
 * courier_key_space_init
 *		Define courier.key_space (any role may set it; it is checked on use).
 */
void
courier_key_space_init(void)
{
	DefineCustomStringVariable("courier.key_space",
							   "Role whose idempotency keys, consume_once markers and cache entries this session uses.",
							   "Empty: the current role.  Only a role the current role is a member of can be named.",
							   &courier_key_space_setting,
							   "",
							   PGC_USERSET, 0,
							   NULL, NULL, NULL);
	DefineCustomBoolVariable("courier.key_spaces",
							 "Whether idempotency keys, consume_once markers and cache entries belong to roles.",
							 "Off: one key space per database, shared by every role (as in 0.1.0).",
							 &courier_key_spaces,
							 true,
							 PGC_SUSET, 0,
							 NULL, NULL, NULL);
}

/*
 * courier_key_space_of
 *		The key space of entries owned by a role (the cache invalidation of a
 *		table uses its owner's): the role, or the shared space when key spaces
 *		are off.
 */
Oid
courier_key_space_of(Oid role)
{
	return courier_key_spaces ? role : InvalidOid;
}

/*
 * courier_key_space_named
 *		The role owning the keys this call reads and writes (the slow path of
 *		courier_key_space(), key_space.h): the current role, or the role
 *		courier.key_space names if the current role is a member of it.
 *		Raises 42704 / 42501 otherwise.  InvalidOid (shared) when key spaces
 *		are off.
 */
Oid
courier_key_space_named(void)
{
	Oid			user = GetUserId();
	Oid			space;

	if (unlikely(!courier_key_spaces))
		return InvalidOid;
	if (likely(courier_key_space_setting == NULL || courier_key_space_setting[0] == '\0'))
		return user;
	space = get_role_oid(courier_key_space_setting, true);
	if (!OidIsValid(space))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("key space role \"%s\" does not exist", courier_key_space_setting),
				 errhint("courier.key_space names the role whose keys are shared; '' uses the current role's own.")));
	if (space != user && !is_member_of_role(user, space))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to use the key space of role \"%s\"", courier_key_space_setting),
				 errdetail("Only members of a role share its idempotency keys, consume_once markers and cache entries."),
				 errhint("A member of role \"%s\" with ADMIN OPTION (or a superuser) can GRANT it to this role.",
						 courier_key_space_setting)));
	return space;
}

PG_FUNCTION_INFO_V1(courier_key_space_current);

/*
 * courier_key_space_current
 *		courier.key_space(): the role whose keys this session uses now (an
 *		error when courier.key_space names a role it may not use).
 */
Datum
courier_key_space_current(PG_FUNCTION_ARGS)
{
	PG_RETURN_OID(courier_key_space());
}
