/*-------------------------------------------------------------------------
 *
 * outbox_breaker.h
 *	  Per-endpoint circuit breakers in shared memory.
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_BREAKER_H
#define OUTBOX_BREAKER_H

#include "utils/timestamp.h"

typedef enum BreakerState
{
	BREAKER_CLOSED,
	BREAKER_OPEN,
	BREAKER_HALF_OPEN
} BreakerState;

typedef struct CourierBreaker CourierBreaker;

extern int	courier_breaker_failure_threshold;
extern int	courier_breaker_reset_ms;

extern void courier_breaker_define_gucs(void);
extern Size courier_breaker_shmem_size(void);
extern void courier_breaker_shmem_init(void);
extern char *courier_origin_text(const char *url);
extern char *courier_endpoint_identity(const char *url);
extern CourierBreaker *courier_breaker_for(const char *origin);
extern void courier_breaker_hold_origin(const char *origin, TimestampTz until);
extern TimestampTz courier_breaker_held_until(CourierBreaker *b);
extern int	courier_breaker_admit(CourierBreaker *b);
extern void courier_breaker_release_probe(CourierBreaker *b);
extern void courier_breaker_record(CourierBreaker *b, bool success, bool was_probe);
extern TimestampTz courier_breaker_next_change(CourierBreaker *b);

#endif							/* OUTBOX_BREAKER_H */
