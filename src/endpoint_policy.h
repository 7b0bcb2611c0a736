/*-------------------------------------------------------------------------
 *
 * endpoint_policy.h
 *	  Which network addresses the delivery worker may connect to (SSRF
 *	  policy), decided on the address actually connected to and, for
 *	  literal addresses, already when an endpoint is stored.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COURIER_ENDPOINT_POLICY_H
#define COURIER_ENDPOINT_POLICY_H

#include <sys/socket.h>

#include "utils/guc.h"

/* What an address is, as far as the policy cares. */
typedef enum EndpointAddressClass
{
	ADDR_PUBLIC,
	ADDR_UNSPECIFIED,			/* 0.0.0.0/8, :: */
	ADDR_LOOPBACK,				/* 127/8, ::1, localhost */
	ADDR_PRIVATE,				/* 10/8, 172.16/12, 192.168/16, fec0::/10, 64:ff9b:1::/48 */
	ADDR_LINK_LOCAL,			/* 169.254/16, fe80::/10 */
	ADDR_UNIQUE_LOCAL,			/* fc00::/7 */
	ADDR_SHARED,				/* 100.64/10 (carrier-grade NAT) */
	ADDR_BENCHMARK,				/* 198.18/15 */
	ADDR_MULTICAST,				/* 224/4, ff00::/8 */
	ADDR_BROADCAST,				/* 255.255.255.255 */
	ADDR_RESERVED,				/* 192.0.0/24, 240/4, Teredo, discard-only, ... */
	ADDR_METADATA				/* cloud metadata services */
} EndpointAddressClass;

/* GUCs (defined in pg_courier.c) */
extern bool courier_allow_private_endpoints;
extern char *courier_allowed_hosts;

extern bool courier_check_allowed_hosts(char **newval, void **extra, GucSource source);
extern void courier_assign_allowed_hosts(const char *newval, void *extra);

extern bool courier_endpoint_connect_allowed(const char *host, const struct sockaddr *sa);
extern void courier_endpoint_check_host(const char *host, const char *url_shown);

#endif							/* COURIER_ENDPOINT_POLICY_H */
