/*-------------------------------------------------------------------------
 *
 * endpoint_policy.c
 *	  The endpoint (SSRF) policy: which addresses the delivery worker, a
 *	  superuser process, may send an outbox owner's events to.
 *
 * Trust.  Any role that can create a table can choose an endpoint, so an
 * endpoint is hostile input: without a policy the server would POST to its
 * own loopback services, private networks and cloud metadata services, and
 * tell the answers back in last_error.  Only superusers choose the policy
 * (both settings are PGC_SIGHUP: postgresql.conf or ALTER SYSTEM, then a
 * reload, which the worker applies at once).
 *
 * Where it is enforced.  The decision that counts is made on the address
 * the worker actually connects to (http.c calls courier_endpoint_connect_
 * allowed from libcurl's open-socket callback, and again before each request
 * on a kept-alive connection), so a name that resolves to a refused address
 * -- DNS rebinding included -- is refused whatever it resolved to when the
 * endpoint was stored.  create_outbox/alter_outbox additionally refuse a
 * host that is a literal address (in any spelling the resolver accepts:
 * 0x7f000001, 2130706433, 127.1, 0177.0.0.1, 0, [::ffff:7f00:1], a trailing
 * dot, ...) or localhost / *.localhost, so that the mistake is an error at
 * once rather than a delivery failure later.  Names are not resolved then.
 *
 * Refused by default (EndpointAddressClass): unspecified 0/8 and ::,
 * loopback 127/8 and ::1, private 10/8, 172.16/12, 192.168/16, site-local
 * fec0::/10 and local-use NAT64 64:ff9b:1::/48, link-local 169.254/16 and
 * fe80::/10, unique-local fc00::/7, carrier-grade NAT 100.64/10,
 * benchmarking 198.18/15, multicast 224/4 and ff00::/8, broadcast, reserved
 * (192.0.0/24, 240/4, 192.88.99/24, Teredo 2001::/32, discard 100::/64,
 * documentation 2001:db8::/32) and cloud metadata addresses (169.254.169.254,
 * 100.100.100.200, fd00:ec2::254).  IPv6 addresses that carry an IPv4
 * address (mapped ::ffff:a.b.c.d, compatible ::a.b.c.d, SIIT
 * ::ffff:0:a.b.c.d, NAT64 64:ff9b::/96, 6to4 2002::/16) are judged by the
 * IPv4 address they carry.
 *
 * How the settings combine.
 *	- courier.allowed_hosts empty: every public address is allowed.
 *	- courier.allowed_hosts not empty: only hosts named by an entry
 *	  (exact, or *.suffix) and addresses inside a CIDR entry are allowed.
 *	- A non-public address is allowed only when a CIDR entry covers it
 *	  explicitly, or when courier.allow_private_endpoints is on.  A name entry
 *	  never allows a non-public address by itself (a listed name that starts
 *	  resolving to 10.0.0.5 is refused), and allow_private_endpoints never
 *	  allows a metadata address (only an explicit CIDR entry does).
 *
 * Everything that runs inside libcurl's callbacks here is free of ereport
 * and palloc: an error must never unwind through libcurl.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include "utils/guc.h"
#include "utils/varlena.h"

#include "pg_courier.h"
#include "endpoint_policy.h"

bool		courier_allow_private_endpoints = false;
char	   *courier_allowed_hosts = NULL;

/* An address in network byte order: IPv4 in b[0..3]. */
typedef struct NetAddr
{
	int			family;			/* AF_INET or AF_INET6 */
	uint8		b[16];
} NetAddr;

/* One parsed entry of courier.allowed_hosts. */
typedef struct AllowedEntry
{
	char		kind;			/* 'n' name, 'w' *.suffix, 'c' CIDR */
	char		name[256];		/* lower case, no trailing dot; suffix without "*" */
	NetAddr		addr;
	int			bits;
} AllowedEntry;

typedef struct AllowedHosts
{
	int			n;
	AllowedEntry e[FLEXIBLE_ARRAY_MEMBER];
} AllowedHosts;

/* the list in force (the GUC's "extra", owned by guc.c) */
static const AllowedHosts *allowed_hosts = NULL;

static const char *const class_names[] = {
	"public", "unspecified", "loopback", "private", "link-local", "unique-local",
	"carrier-grade NAT", "benchmarking", "multicast", "broadcast", "reserved", "cloud metadata"
};

/*
 * in_v4
 *		Is IPv4 address x (host order) inside net/bits?
 */
static inline bool
in_v4(uint32 x, uint32 net, int bits)
{
	uint32		mask = bits == 0 ? 0 : ~(uint32) 0 << (32 - bits);

	return (x & mask) == (net & mask);
}

/*
 * classify_v4
 *		The class of an IPv4 address given in network byte order.
 */
static EndpointAddressClass
classify_v4(const uint8 *b)
{
	uint32		x = ((uint32) b[0] << 24) | ((uint32) b[1] << 16) | ((uint32) b[2] << 8) | b[3];

	if (x == 0xA9FEA9FE || x == 0x646464C8)	/* 169.254.169.254, 100.100.100.200 */
		return ADDR_METADATA;
	if (in_v4(x, 0x00000000, 8))
		return ADDR_UNSPECIFIED;
	if (in_v4(x, 0x7F000000, 8))
		return ADDR_LOOPBACK;
	if (in_v4(x, 0x0A000000, 8) || in_v4(x, 0xAC100000, 12) || in_v4(x, 0xC0A80000, 16))
		return ADDR_PRIVATE;
	if (in_v4(x, 0xA9FE0000, 16))
		return ADDR_LINK_LOCAL;
	if (in_v4(x, 0x64400000, 10))
		return ADDR_SHARED;
	if (in_v4(x, 0xC6120000, 15))
		return ADDR_BENCHMARK;
	if (in_v4(x, 0xE0000000, 4))
		return ADDR_MULTICAST;
	if (x == 0xFFFFFFFF)
		return ADDR_BROADCAST;
	if (in_v4(x, 0xF0000000, 4) || in_v4(x, 0xC0000000, 24) || in_v4(x, 0xC0586300, 24))
		return ADDR_RESERVED;
	return ADDR_PUBLIC;
}

/*
 * embedded_v4
 *		The IPv4 address an IPv6 address carries (mapped, compatible, SIIT,
 *		NAT64 well-known prefix, 6to4), into v4[4]; false if none.
 */
static bool
embedded_v4(const uint8 *b, uint8 *v4)
{
	static const uint8 zero[10] = {0};
	static const uint8 nat64[12] = {0x00, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};

	if (memcmp(b, zero, 10) == 0 &&
		((b[10] == 0xff && b[11] == 0xff) || (b[10] == 0 && b[11] == 0)))
	{
		memcpy(v4, b + 12, 4);	/* ::ffff:a.b.c.d and ::a.b.c.d */
		return true;
	}
	if (memcmp(b, zero, 8) == 0 && b[8] == 0xff && b[9] == 0xff && b[10] == 0 && b[11] == 0)
	{
		memcpy(v4, b + 12, 4);	/* ::ffff:0:a.b.c.d (SIIT) */
		return true;
	}
	if (memcmp(b, nat64, 12) == 0)
	{
		memcpy(v4, b + 12, 4);
		return true;
	}
	if (b[0] == 0x20 && b[1] == 0x02)
	{
		memcpy(v4, b + 2, 4);	/* 6to4 */
		return true;
	}
	return false;
}

/*
 * classify_v6
 *		The class of an IPv6 address (network byte order).
 */
static EndpointAddressClass
classify_v6(const uint8 *b)
{
	static const uint8 zero[16] = {0};
	static const uint8 aws_metadata[16] = {0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54};
	uint8		v4[4];

	if (memcmp(b, zero, 16) == 0)
		return ADDR_UNSPECIFIED;
	if (memcmp(b, zero, 15) == 0 && b[15] == 1)
		return ADDR_LOOPBACK;
	if (memcmp(b, aws_metadata, 16) == 0)
		return ADDR_METADATA;
	if (embedded_v4(b, v4))
	{
		EndpointAddressClass c = classify_v4(v4);

		/* IPv4-compatible addresses are deprecated: never public */
		if (c == ADDR_PUBLIC && memcmp(b, zero, 12) == 0)
			return ADDR_RESERVED;
		return c;
	}
	if (b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && b[4] == 0x00 && b[5] == 0x01)
		return ADDR_PRIVATE;	/* local-use NAT64 64:ff9b:1::/48 */
	if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80)
		return ADDR_LINK_LOCAL;
	if (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0)
		return ADDR_PRIVATE;	/* site-local, deprecated */
	if ((b[0] & 0xfe) == 0xfc)
		return ADDR_UNIQUE_LOCAL;
	if (b[0] == 0xff)
		return ADDR_MULTICAST;
	if ((b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x00 && b[3] == 0x00) ||	/* Teredo */
		(b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8) ||	/* documentation */
		(b[0] == 0x01 && memcmp(b + 1, zero, 7) == 0))	/* discard-only 100::/64 */
		return ADDR_RESERVED;
	return ADDR_PUBLIC;
}

static EndpointAddressClass
classify(const NetAddr *a)
{
	return a->family == AF_INET ? classify_v4(a->b) : classify_v6(a->b);
}

/*
 * netaddr_from_sockaddr
 *		Copy an IPv4 or IPv6 socket address; false for any other family.
 */
static bool
netaddr_from_sockaddr(const struct sockaddr *sa, NetAddr *a)
{
	memset(a, 0, sizeof(NetAddr));
	if (sa->sa_family == AF_INET)
	{
		a->family = AF_INET;
		memcpy(a->b, &((const struct sockaddr_in *) sa)->sin_addr, 4);
		return true;
	}
	if (sa->sa_family == AF_INET6)
	{
		a->family = AF_INET6;
		memcpy(a->b, &((const struct sockaddr_in6 *) sa)->sin6_addr, 16);
		return true;
	}
	return false;
}

/*
 * in_cidr
 *		Is a inside the CIDR entry?  IPv6 addresses carrying an IPv4 address
 *		also match IPv4 entries through it.
 */
static bool
in_cidr(const NetAddr *a, const AllowedEntry *e)
{
	const uint8 *b = a->b;
	uint8		v4[4];
	int			bytes = e->bits / 8;
	int			rest = e->bits % 8;

	if (a->family != e->addr.family)
	{
		if (a->family != AF_INET6 || e->addr.family != AF_INET || !embedded_v4(a->b, v4))
			return false;
		b = v4;
	}
	if (memcmp(b, e->addr.b, bytes) != 0)
		return false;
	return rest == 0 || ((b[bytes] ^ e->addr.b[bytes]) & (0xff << (8 - rest)) & 0xff) == 0;
}

/*
 * name_matches
 *		Does host (lower case, no trailing dot) match a name entry?
 */
static bool
name_matches(const char *host, const AllowedEntry *e)
{
	size_t		hl = strlen(host);
	size_t		sl = strlen(e->name);

	if (e->kind == 'n')
		return strcmp(host, e->name) == 0;
	/* "*.example.com" is stored as ".example.com": subdomains only */
	return e->kind == 'w' && hl > sl && strcmp(host + hl - sl, e->name) == 0;
}

/*
 * normalize_host
 *		Lower case, without [brackets], IPv6 zone id or trailing dots, into
 *		out (of outlen bytes).  Never allocates (runs inside libcurl).
 */
static void
normalize_host(const char *host, char *out, size_t outlen)
{
	size_t		n = 0;
	const char *p = host;

	if (*p == '[')
		p++;
	for (; *p && *p != ']' && *p != '%' && n + 1 < outlen; p++)
		out[n++] = pg_ascii_tolower((unsigned char) *p);
	while (n > 0 && out[n - 1] == '.')
		n--;
	out[n] = '\0';
}

/*
 * decide
 *		The policy for (normalized host, address): NULL if allowed, else why
 *		not, in our words.  host may be NULL (address alone) and addr NULL
 *		(a name not resolved yet).
 */
static const char *
decide(const char *host, const NetAddr *addr, EndpointAddressClass *cls_out)
{
	const AllowedHosts *list = allowed_hosts;
	bool		listed_name = false;
	bool		listed_addr = false;
	EndpointAddressClass cls = addr ? classify(addr) : ADDR_PUBLIC;

	*cls_out = cls;
	for (int i = 0; list != NULL && i < list->n; i++)
	{
		if (list->e[i].kind == 'c')
			listed_addr |= (addr != NULL && in_cidr(addr, &list->e[i]));
		else
			listed_name |= (host != NULL && name_matches(host, &list->e[i]));
	}
	if (list != NULL && list->n > 0 && !listed_name && !listed_addr)
		return "is not in courier.allowed_hosts";
	if (cls == ADDR_PUBLIC || listed_addr)
		return NULL;
	if (courier_allow_private_endpoints && cls != ADDR_METADATA)
		return NULL;
	return "is a non-public address";
}

/*
 * courier_endpoint_connect_allowed
 *		May the worker connect to sa for an endpoint whose URL names host?
 *		Called from libcurl's callbacks: no palloc, no ereport.
 */
bool
courier_endpoint_connect_allowed(const char *host, const struct sockaddr *sa)
{
	char		h[256];
	NetAddr		a;
	EndpointAddressClass cls;

	if (!netaddr_from_sockaddr(sa, &a))
		return false;
	normalize_host(host ? host : "", h, sizeof(h));
	return decide(h, &a, &cls) == NULL;
}

/*
 * literal_address
 *		Is the (normalized) host a literal address, in any spelling the
 *		resolver accepts (inet_aton takes 0x7f000001, 2130706433, 127.1,
 *		0177.0.0.1, 0)?  localhost and *.localhost count as 127.0.0.1: they
 *		never leave the machine (RFC 6761).
 */
static bool
literal_address(const char *h, NetAddr *a)
{
	struct in_addr v4;
	size_t		len = strlen(h);

	memset(a, 0, sizeof(NetAddr));
	if (inet_pton(AF_INET6, h, a->b) == 1)
	{
		a->family = AF_INET6;
		return true;
	}
	if (inet_aton(h, &v4) != 0)
	{
		a->family = AF_INET;
		memcpy(a->b, &v4, 4);
		return true;
	}
	if (strcmp(h, "localhost") == 0 || (len > 10 && strcmp(h + len - 10, ".localhost") == 0))
	{
		a->family = AF_INET;
		a->b[0] = 127;
		a->b[3] = 1;
		return true;
	}
	return false;
}

/*
 * courier_endpoint_check_host
 *		At create_outbox/alter_outbox: refuse a host that the policy refuses
 *		without resolving anything (literal addresses, localhost, names not in
 *		a non-empty courier.allowed_hosts).  Names are not resolved here; the
 *		final decision is made on every connection.
 */
void
courier_endpoint_check_host(const char *host, const char *url_shown)
{
	char		h[256];
	NetAddr		a;
	bool		literal;
	const char *why;
	EndpointAddressClass cls;

	normalize_host(host, h, sizeof(h));
	literal = literal_address(h, &a);
	why = decide(h, literal ? &a : NULL, &cls);
	if (why == NULL)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("endpoint \"%s\" is refused by pg_courier's endpoint policy", url_shown),
			 cls != ADDR_PUBLIC
			 ? errdetail("Its host %s (%s address).", why, class_names[cls])
			 : errdetail("Its host %s.", why),
			 errhint("A superuser can allow it in postgresql.conf (then reload) with "
					 "courier.allowed_hosts (host names and CIDRs) or courier.allow_private_endpoints.")));
}

/*
 * parse_cidr
 *		"a.b.c.d[/n]" or "x:y::z[/n]" (dotted decimal only: ambiguous legacy
 *		spellings are refused) into e; false if it is not one.
 */
static bool
parse_cidr(const char *item, AllowedEntry *e)
{
	char		buf[256];
	char	   *slash;
	int			max;

	strlcpy(buf, item, sizeof(buf));
	slash = strchr(buf, '/');
	if (slash)
		*slash = '\0';
	memset(&e->addr, 0, sizeof(NetAddr));
	if (inet_pton(AF_INET, buf, e->addr.b) == 1)
		e->addr.family = AF_INET;
	else if (inet_pton(AF_INET6, buf, e->addr.b) == 1)
		e->addr.family = AF_INET6;
	else
		return false;
	max = e->addr.family == AF_INET ? 32 : 128;
	e->kind = 'c';
	e->bits = max;
	if (slash)
	{
		char	   *end;
		long		bits = strtol(slash + 1, &end, 10);

		if (slash[1] == '\0' || *end != '\0' || bits < 0 || bits > max)
			return false;
		e->bits = (int) bits;
	}
	return true;
}

/*
 * parse_name
 *		"host.example.com" or "*.example.com" into e; false with a reason
 *		when it is not a plain DNS name.
 */
static bool
parse_name(const char *item, AllowedEntry *e, const char **why)
{
	const char *p = item;
	size_t		n = 0;
	const char *last_label;
	bool		numeric = true;

	e->kind = 'n';
	if (strncmp(p, "*.", 2) == 0)
	{
		e->kind = 'w';
		p++;					/* keep the dot */
	}
	if (strlen(p) == 0 || strlen(p) > 253)
	{
		*why = "is not a host name";
		return false;
	}
	for (; *p; p++)
	{
		char		c = pg_ascii_tolower((unsigned char) *p);

		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.'))
		{
			*why = "is neither a host name nor an address or CIDR (a.b.c.d/n, x:y::z/n)";
			return false;
		}
		e->name[n++] = c;
	}
	while (n > 0 && e->name[n - 1] == '.')
		n--;
	e->name[n] = '\0';
	last_label = strrchr(e->name, '.');
	last_label = last_label ? last_label + 1 : e->name;
	/* all digits, or 0x and hex digits: the resolver would read it as a number */
	if (strncmp(last_label, "0x", 2) == 0)
		numeric = strspn(last_label + 2, "0123456789abcdef") == strlen(last_label + 2);
	else
		numeric = strspn(last_label, "0123456789") == strlen(last_label);
	if (n == 0 || numeric || strstr(e->name, "..") != NULL || (e->kind == 'n' && e->name[0] == '.'))
	{
		*why = "is not a host name; write addresses in dotted-decimal or IPv6 form, e.g. 10.1.2.3/32";
		return false;
	}
	return true;
}

/*
 * courier_check_allowed_hosts
 *		GUC check hook of courier.allowed_hosts: a comma-separated list of
 *		host names (exact, or *.suffix for subdomains) and CIDRs.  Any bad
 *		entry refuses the whole value.
 */
bool
courier_check_allowed_hosts(char **newval, void **extra, GucSource source)
{
	char	   *raw = pstrdup(*newval ? *newval : "");
	List	   *items;
	ListCell   *lc;
	AllowedHosts *list;
	int			i = 0;

	if (!SplitGUCList(raw, ',', &items))
	{
		GUC_check_errdetail("List syntax is invalid.");
		return false;
	}
	list = courier_guc_malloc(offsetof(AllowedHosts, e) + Max(1, list_length(items)) * sizeof(AllowedEntry));
	if (list == NULL)
		return false;
	foreach(lc, items)
	{
		char	   *item = lfirst(lc);
		const char *why = NULL;
		AllowedEntry *e = &list->e[i];

		memset(e, 0, sizeof(AllowedEntry));
		if (item[0] == '\0')
			continue;
		if (!parse_cidr(item, e) &&
			(strchr(item, '/') != NULL || strchr(item, ':') != NULL || !parse_name(item, e, &why)))
		{
			GUC_check_errdetail("Entry \"%s\" %s.", item,
								why ? why : "is not a valid address or CIDR (a.b.c.d/n, x:y::z/n)");
			courier_guc_free(list);
			return false;
		}
		i++;
	}
	list->n = i;
	*extra = list;
	list_free(items);
	pfree(raw);
	return true;
}

/*
 * courier_assign_allowed_hosts
 *		GUC assign hook: the parsed list becomes the one in force.
 */
void
courier_assign_allowed_hosts(const char *newval, void *extra)
{
	allowed_hosts = extra;
}
