/*-------------------------------------------------------------------------
 *
 * key_space.h
 *	  Whose idempotency keys, consume_once markers and cache entries a call
 *	  uses (key_space.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef COURIER_KEY_SPACE_H
#define COURIER_KEY_SPACE_H

#include "postgres.h"

#include "miscadmin.h"

extern char *courier_key_space_setting;
extern bool courier_key_spaces;

extern void courier_key_space_init(void);
extern Oid	courier_key_space_named(void);
extern Oid	courier_key_space_of(Oid role);

/*
 * courier_key_space
 *		The role owning the keys this call uses (key_space.c).  Inline: it is
 *		on the path of every cache_get; the usual case is the current role.
 */
static inline Oid
courier_key_space(void)
{
	if (likely(courier_key_spaces &&
			   (courier_key_space_setting == NULL || courier_key_space_setting[0] == '\0')))
		return GetUserId();
	return courier_key_space_named();
}

#endif							/* COURIER_KEY_SPACE_H */
