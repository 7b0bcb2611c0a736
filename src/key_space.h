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

extern char *courier_key_space_setting;
extern bool courier_key_spaces;

extern void courier_key_space_init(void);
extern Oid	courier_key_space(void);
extern Oid	courier_key_space_of(Oid role);

#endif							/* COURIER_KEY_SPACE_H */
