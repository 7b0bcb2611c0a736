/*-------------------------------------------------------------------------
 *
 * http.c
 *	  Concurrent HTTP POSTs for the delivery worker, on libcurl's multi
 *	  interface: one multi handle per process, keep-alive connections in its
 *	  connection cache, a free list of easy handles so that connection reuse
 *	  and TLS sessions survive from request to request.
 *
 * Security defaults: TLS peer and host verification on (turning it off is an
 * explicit per-outbox choice), redirects never followed (credentials must
 * not travel to another host), only http and https, no signals from libcurl
 * (they would interfere with PostgreSQL's), no proxy (not even one named by
 * the server's environment: it would connect on our behalf, past the
 * endpoint policy).  Every address is checked against the endpoint policy
 * (endpoint_policy.c) before a socket is opened to it, and a kept-alive
 * connection's peer again before each request on it (the policy may have
 * been tightened by a reload since it was opened).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/socket.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include <curl/curl.h>

#include "nodes/pg_list.h"
#include "utils/memutils.h"

#include "pg_courier.h"
#include "http.h"
#include "endpoint_policy.h"

static CURLM *multi = NULL;
static MemoryContext http_context = NULL;
/* easy handles whose requests are finished, ready for reuse */
static CURL *free_easy[64];
static int	nfree_easy = 0;
/* requests that failed before reaching libcurl, reported by next_done */
static List *failed_early = NIL;
/* every request handed to libcurl and not released yet */
static List *active = NIL;

/*
 * courier_http_init
 *		Process-wide setup; call once in the worker before any request.
 */
void
courier_http_init(void)
{
	if (multi != NULL)
		return;
	if (curl_global_init(CURL_GLOBAL_ALL) != CURLE_OK)
		elog(ERROR, "pg_courier: could not initialise libcurl");
	multi = curl_multi_init();
	if (multi == NULL)
		elog(ERROR, "pg_courier: could not create a libcurl multi handle");
	/* keep enough idle connections for max_inflight per outbox */
	curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, 256L);
	http_context = AllocSetContextCreate(TopMemoryContext, "pg_courier http", ALLOCSET_DEFAULT_SIZES);
}

/*
 * collect_body
 *		libcurl write callback: keep the response, up to a bound.
 */
static size_t
collect_body(char *data, size_t size, size_t nmemb, void *userdata)
{
	CourierHttpRequest *req = userdata;
	size_t		n = size * nmemb;

	if (req->response.len < req->max_response)
		appendBinaryStringInfo(&req->response, data, (int) Min(n, req->max_response - req->response.len));
	return n;
}

/*
 * parse_retry_after
 *		Retry-After is either delta-seconds or an HTTP-date; returns ms or -1.
 */
static long
parse_retry_after(const char *value)
{
	char	   *end;
	long		secs = strtol(value, &end, 10);
	time_t		when;

	while (*end == ' ' || *end == '\r' || *end == '\n')
		end++;
	if (end != value && *end == '\0' && secs >= 0)
		return Min(secs, (long) COURIER_RETRY_AFTER_MAX_S) * 1000L;
	when = curl_getdate(value, NULL);
	if (when == -1)
		return -1;
	return Max(0L, Min((long) (when - time(NULL)), (long) COURIER_RETRY_AFTER_MAX_S)) * 1000L;
}

/*
 * collect_header
 *		libcurl header callback: we only care about Retry-After.
 */
static size_t
collect_header(char *data, size_t size, size_t nmemb, void *userdata)
{
	CourierHttpRequest *req = userdata;
	size_t		n = size * nmemb;
	static const char name[] = "retry-after:";

	if (n > sizeof(name) && n < 200 && pg_strncasecmp(data, name, sizeof(name) - 1) == 0)
	{
		char		value[200];
		char	   *v = data + sizeof(name) - 1;

		while (*v == ' ')
			v++;
		memcpy(value, v, n - (v - data));
		value[n - (v - data)] = '\0';
		req->retry_after_ms = parse_retry_after(value);
	}
	return n;
}

/* What a request refused by the endpoint policy records: the same for every port and address. */
#define POLICY_REFUSED_TEXT \
	"the endpoint's address is refused by pg_courier's endpoint policy " \
	"(see courier.allowed_hosts and courier.allow_private_endpoints)"

/*
 * open_checked_socket
 *		libcurl open-socket callback: a socket only for addresses the endpoint
 *		policy allows.  Runs on the address actually connected to, after name
 *		resolution, so DNS rebinding cannot get past it.  No palloc/ereport.
 */
static curl_socket_t
open_checked_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *address)
{
	CourierHttpRequest *req = clientp;

	if (purpose != CURLSOCKTYPE_IPCXN ||
		!courier_endpoint_connect_allowed(req->host, &address->addr))
	{
		req->policy_refused = true;
		return CURL_SOCKET_BAD;
	}
	return socket(address->family, address->socktype, address->protocol);
}

#if LIBCURL_VERSION_NUM >= 0x075000
/*
 * check_connected_peer
 *		libcurl pre-request callback: the peer of the connection about to be
 *		used (possibly a kept-alive one opened under an older policy) must
 *		still be allowed.
 */
static int
check_connected_peer(void *clientp, char *primary_ip, char *local_ip, int primary_port, int local_port)
{
	CourierHttpRequest *req = clientp;
	struct sockaddr_storage ss;

	memset(&ss, 0, sizeof(ss));
	if (inet_pton(AF_INET, primary_ip, &((struct sockaddr_in *) &ss)->sin_addr) == 1)
		ss.ss_family = AF_INET;
	else if (inet_pton(AF_INET6, primary_ip, &((struct sockaddr_in6 *) &ss)->sin6_addr) == 1)
		ss.ss_family = AF_INET6;
	if (ss.ss_family == 0 || !courier_endpoint_connect_allowed(req->host, (struct sockaddr *) &ss))
	{
		req->policy_refused = true;
		return CURL_PREREQFUNC_ABORT;
	}
	return CURL_PREREQFUNC_OK;
}
#endif

/*
 * url_host
 *		The host part of a URL into buf ("" if it does not parse).
 */
static void
url_host(const char *url, char *buf, size_t len)
{
	CURLU	   *u = curl_url();
	char	   *host = NULL;

	buf[0] = '\0';
	if (u != NULL && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
		curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK)
		strlcpy(buf, host, len);
	curl_free(host);
	curl_url_cleanup(u);
}

/*
 * get_easy
 *		A fresh or recycled easy handle.
 */
static CURL *
get_easy(void)
{
	CURL	   *easy;

	if (nfree_easy > 0)
	{
		easy = free_easy[--nfree_easy];
		curl_easy_reset(easy);
		return easy;
	}
	easy = curl_easy_init();
	if (easy == NULL)
		elog(ERROR, "pg_courier: could not create a libcurl handle");
	return easy;
}

/*
 * courier_http_post
 *		Start a POST (or a GET, o->get: same policy, limits and callbacks);
 *		it runs while courier_http_poll() is called.
 */
CourierHttpRequest *
courier_http_post(const CourierHttpOptions *o, void *owner)
{
	MemoryContext old = MemoryContextSwitchTo(http_context);
	CourierHttpRequest *req = palloc0(sizeof(CourierHttpRequest));
	struct curl_slist *h = NULL;
	char		line[256];
	CURL	   *easy = get_easy();

	req->owner = owner;
	req->retry_after_ms = -1;
	req->max_response = o->max_response > 0 ? Min(o->max_response, COURIER_HTTP_MAX_RESPONSE) : COURIER_HTTP_MAX_RESPONSE;
	initStringInfo(&req->response);
	MemoryContextSwitchTo(old);

	if (o->content_type)
	{
		snprintf(line, sizeof(line), "Content-Type: %s", o->content_type);
		h = curl_slist_append(h, line);
	}
	if (o->accept)
	{
		snprintf(line, sizeof(line), "Accept: %s", o->accept);
		h = curl_slist_append(h, line);
	}
	/* no "Expect: 100-continue" round trip for larger bodies */
	h = curl_slist_append(h, "Expect:");
	for (int i = 0; i < o->nextra; i++)
		h = curl_slist_append(h, o->extra_headers[i]);
	req->headers = h;

	curl_easy_setopt(easy, CURLOPT_URL, o->url);
	if (o->get)
		curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
	else
	{
		curl_easy_setopt(easy, CURLOPT_POST, 1L);
		curl_easy_setopt(easy, CURLOPT_POSTFIELDS, o->body);
		curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) o->body_len);
	}
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long) o->timeout_ms);
	curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, (long) o->timeout_ms);
	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(easy, CURLOPT_PROXY, "");
	url_host(o->url, req->host, sizeof(req->host));
	curl_easy_setopt(easy, CURLOPT_OPENSOCKETFUNCTION, open_checked_socket);
	curl_easy_setopt(easy, CURLOPT_OPENSOCKETDATA, req);
#if LIBCURL_VERSION_NUM >= 0x075000
	curl_easy_setopt(easy, CURLOPT_PREREQFUNCTION, check_connected_peer);
	curl_easy_setopt(easy, CURLOPT_PREREQDATA, req);
#endif
	curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, o->tls_verify ? 1L : 0L);
	curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, o->tls_verify ? 2L : 0L);
	if (o->ca_file && o->ca_file[0])
		curl_easy_setopt(easy, CURLOPT_CAINFO, o->ca_file);
	curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(easy, CURLOPT_USERAGENT, "pg_courier/0.1.0");
	curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, collect_body);
	curl_easy_setopt(easy, CURLOPT_WRITEDATA, req);
	curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, collect_header);
	curl_easy_setopt(easy, CURLOPT_HEADERDATA, req);
	curl_easy_setopt(easy, CURLOPT_PRIVATE, req);
	curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, req->curl_detail);
	req->easy = easy;
	old = MemoryContextSwitchTo(http_context);
	active = lappend(active, req);
	MemoryContextSwitchTo(old);

	if (curl_multi_add_handle(multi, easy) != CURLM_OK)
	{
		/* report it as a failed request rather than throwing */
		strlcpy(req->error, "could not queue the request", sizeof(req->error));
		req->curl_result = CURLE_FAILED_INIT;
		req->done = true;
		old = MemoryContextSwitchTo(http_context);
		failed_early = lappend(failed_early, req);
		MemoryContextSwitchTo(old);
	}
	return req;
}

/*
 * courier_http_poll
 *		Drive transfers; waits up to timeout_ms for socket activity.
 *		Returns the number of running transfers.
 */
int
courier_http_poll(int timeout_ms)
{
	int			running = 0;

	curl_multi_perform(multi, &running);
	if (running > 0 && timeout_ms > 0)
	{
		curl_multi_poll(multi, NULL, 0, timeout_ms, NULL);
		curl_multi_perform(multi, &running);
	}
	return running;
}

/*
 * transfer_error
 *		Why a transfer failed.  TLS verification failures name the reason
 *		in our words where libcurl's detail (the TLS library's wording,
 *		which differs between versions) can be classified, and quote the
 *		detail otherwise; other failures use libcurl's text for the code.
 */
static void
transfer_error(CourierHttpRequest *req)
{
	const char *detail = req->curl_detail;
	const char *text = curl_easy_strerror(req->curl_result);
	bool		tls = (req->curl_result == CURLE_PEER_FAILED_VERIFICATION ||
					   req->curl_result == CURLE_SSL_CONNECT_ERROR);

	if (req->policy_refused)
		text = POLICY_REFUSED_TEXT;
	else if (tls && strstr(detail, "expired"))
		text = "TLS: the endpoint's certificate has expired";
	else if (tls && strstr(detail, "not yet valid"))
		text = "TLS: the endpoint's certificate is not yet valid";
	else if (tls && (strstr(detail, "issuer") || strstr(detail, "self-signed") ||
					 strstr(detail, "self signed") || strstr(detail, "unknown ca") ||
					 strstr(detail, "unable to get local")))
		text = "TLS: the endpoint's certificate is not signed by a trusted CA (see courier.ca_file)";
	else if (tls && (strstr(detail, "subject name") || strstr(detail, "does not match") ||
					 strstr(detail, "hostname")))
		text = "TLS: the endpoint's certificate does not name its host";
	else if (tls && detail[0] != '\0')
	{
		/* unclassified: the TLS library's own reason */
		snprintf(req->error, sizeof(req->error), "TLS: %s", detail);
		return;
	}
	strlcpy(req->error, text, sizeof(req->error));
}

/*
 * courier_http_next_done
 *		The next finished request, or NULL.
 */
CourierHttpRequest *
courier_http_next_done(void)
{
	CURLMsg    *msg;
	int			left;

	if (failed_early != NIL)
	{
		CourierHttpRequest *req = linitial(failed_early);

		failed_early = list_delete_first(failed_early);
		return req;
	}
	while ((msg = curl_multi_info_read(multi, &left)) != NULL)
	{
		CourierHttpRequest *req;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &req);
		req->curl_result = msg->data.result;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &req->status);
		if (req->curl_result != CURLE_OK)
		{
			req->status = 0;
			transfer_error(req);
		}
		req->done = true;
		return req;
	}
	return NULL;
}

/*
 * courier_http_release
 *		Free a finished request and recycle its easy handle.
 */
void
courier_http_release(CourierHttpRequest *req)
{
	CURL	   *easy = req->easy;

	active = list_delete_ptr(active, req);
	if (easy)
	{
		curl_multi_remove_handle(multi, easy);
		if (nfree_easy < lengthof(free_easy))
			free_easy[nfree_easy++] = easy;
		else
			curl_easy_cleanup(easy);
	}
	curl_slist_free_all(req->headers);
	pfree(req->response.data);
	pfree(req);
}

/*
 * courier_http_abandon_all
 *		Drop every request that is not released yet, finished or not (error
 *		recovery: their owners' memory is about to go).
 */
void
courier_http_abandon_all(void)
{
	while (active != NIL)
		courier_http_release(linitial(active));
	list_free(failed_early);
	failed_early = NIL;
}
