/*-------------------------------------------------------------------------
 *
 * http.h
 *	  Concurrent HTTP POSTs over libcurl's multi interface.
 *
 * Everything here is process-local (curl handles, sockets): it never goes
 * into shared memory.  Bodies are owned by the caller and must live until
 * the request completes.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COURIER_HTTP_H
#define COURIER_HTTP_H

#include "lib/stringinfo.h"

/* The largest response body we keep; the rest is discarded (bounded memory). */
#define COURIER_HTTP_MAX_RESPONSE	(4 * 1024 * 1024)
/* The longest Retry-After we honour (seconds): a longer one holds the origin this long. */
#define COURIER_RETRY_AFTER_MAX_S	3600
/* What callers that only quote the answer (in an error text) need of it. */
#define COURIER_HTTP_EXCERPT_RESPONSE	1024

typedef struct CourierHttpRequest
{
	void	   *easy;			/* CURL * */
	void	   *headers;		/* struct curl_slist * */
	void	   *owner;			/* caller's data */
	long		status;			/* HTTP status, 0 if none was received */
	int			curl_result;	/* CURLcode */
	char		error[256];		/* transport error text, "" when none */
	long		retry_after_ms; /* from Retry-After; -1 when absent */
	StringInfoData response;
	bool		done;
	char		host[256];		/* the URL's host, for the endpoint policy */
	size_t		max_response;	/* bytes of the answer kept */
	bool		policy_refused; /* the endpoint policy refused an address */
	char		curl_detail[256];	/* CURLOPT_ERRORBUFFER: libcurl's specific reason */
} CourierHttpRequest;

typedef struct CourierHttpOptions
{
	const char *url;
	const char *content_type;
	const char *accept;
	const char *const *extra_headers;	/* "Name: value" strings */
	int			nextra;
	const char *body;
	size_t		body_len;
	int			timeout_ms;
	bool		tls_verify;
	const char *ca_file;
	size_t		max_response;	/* bytes of the answer to keep; 0: COURIER_HTTP_MAX_RESPONSE */
	bool		get;			/* a GET (no body, no content_type) rather than a POST */
} CourierHttpOptions;

extern void courier_http_init(void);
extern CourierHttpRequest *courier_http_post(const CourierHttpOptions *opts, void *owner);
extern int	courier_http_poll(int timeout_ms);
extern CourierHttpRequest *courier_http_next_done(void);
extern void courier_http_release(CourierHttpRequest *req);
extern void courier_http_abandon_all(void);

#endif							/* COURIER_HTTP_H */
