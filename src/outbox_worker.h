/*-------------------------------------------------------------------------
 *
 * outbox_worker.h
 *	  The delivery worker's in-memory state: registered outboxes, requests
 *	  in flight, and the rows they carry.
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_WORKER_H
#define OUTBOX_WORKER_H

#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#include "http.h"
#include "outbox_registry.h"
#include "outbox_breaker.h"

typedef enum CourierFormat
{
	COURIER_FORMAT_CLOUDEVENTS,
	COURIER_FORMAT_KAFKA_REST_V2,
	COURIER_FORMAT_KAFKA_REST_V3
} CourierFormat;

#define COURIER_FORMAT_IS_KAFKA(f) \
	((f) == COURIER_FORMAT_KAFKA_REST_V2 || (f) == COURIER_FORMAT_KAFKA_REST_V3)

/* What a Kafka REST error code asks of us (kafka_rest.c). */
typedef enum CourierKafkaClass
{
	COURIER_KAFKA_WRITTEN,		/* no error: the record was written */
	COURIER_KAFKA_RETRY,		/* not written; sending it again may succeed */
	COURIER_KAFKA_PERMANENT,	/* not written, and never will be: dead letter */
	COURIER_KAFKA_REFUSED		/* authentication or authorization: the endpoint's problem */
} CourierKafkaClass;

/* busy_keys entry: rows of a key in flight */
typedef struct BusyKey
{
	uint32		keyhash;		/* hash key */
	int			rows;
} BusyKey;

/*
 * One outbox row as read for delivery (strings in the fetch's context).
 * Every value comes from a table its owner controls: courier_decode_rest()
 * checks each one and says in unsendable why a row cannot be sent.
 */
typedef struct OutboxRow
{
	int64		id;
	char		event_id[37];	/* the uuid, canonical text */
	const char *topic;
	const char *key;			/* NULL: no ordering */
	uint32		keyhash;		/* courier_key_hash of key (0 without one) */
	const char *payload;		/* JSON text */
	const char *headers;		/* "Name: value" lines, or NULL */
	const char *time;			/* RFC 3339, UTC; NULL: not representable, omitted */
	int			attempts;		/* clamped to 0 .. INT_MAX - 1 */
	bool		blocked;		/* an earlier row of its key failed and waits */
	const char *unsendable;		/* why the row can never be sent ("payload is NULL"), or NULL */
	bool		decoded;		/* event_id, payload, headers, time, unsendable: filled in */
	HeapTuple	tup;			/* the row as read */
	TupleDesc	desc;
} OutboxRow;

/*
 * The health of one part of an outbox's work (delivery, or its
 * maintenance).  A failing part is reported once when it breaks and once
 * when it works again, and is retried with a backoff in between (see
 * outbox_health.c).
 */
typedef struct OutboxHealth
{
	bool		failing;
	int			failures;		/* consecutive failures */
	char		reason[256];
	TimestampTz since;
	TimestampTz retry_at;		/* not before this (0: now) */
	int			backoff_ms;
	uint32		signature;		/* of the registration when it broke (0: not taken yet) */
	bool		writes_failed;	/* it broke recording results: only a recorded result mends it */
} OutboxHealth;

/* A Standard Webhooks signing key: the decoded bytes of a "whsec_" secret (outbox_signing.c). */
typedef struct CourierSigningKey
{
	uint8		key[64];
	int			len;
} CourierSigningKey;

/* What the worker knows about one registered outbox. */
typedef struct OutboxState
{
	Oid			relid;
	bool		seen;			/* still registered at the last refresh */
	MemoryContext cxt;			/* what lives as long as the outbox's state */
	MemoryContext settings;		/* strings from courier.outboxes, renewed at each refresh */
	char	   *qname;			/* quoted, schema-qualified */
	char	   *endpoint;		/* may hold credentials: never logged */
	char	   *endpoint_shown; /* redacted */
	char	   *default_topic;
	char	   *source;			/* CloudEvents source */
	CourierFormat format;
	bool		ce_batch;
	bool		kafka_envelope; /* Kafka value is a CloudEvent (carries the id) */
	bool		kafka_binary;	/* v2: embedded_format 'binary' (base64 key and value bytes) */
	char	   *cluster_option; /* v3: the cluster_id option, or NULL (settings) */
	char	   *cluster_found;	/* v3: discovered with GET /v3/clusters, or NULL (cxt) */
	bool		discovering;	/* v3: that GET is in flight */
	TimestampTz discover_after; /* v3: not before this (after a failed discovery) */
	bool		enabled;
	int			batch_size;
	int			max_inflight;
	int			timeout_ms;
	int			retry_base_ms;	/* 0: the GUC */
	int			retry_max_ms;	/* 0: the GUC */
	int			max_attempts;	/* -1: the GUC; 0: forever */
	bool		block_on_dead;	/* on_dead_letter = 'block' */
	bool		plans_block;	/* the mode the fetch statement was made for */
	bool		retain;			/* option "retention": keep delivered rows */
	bool		plans_retain;	/* the mode the delete statement was made for */
	bool		tls_verify;
	const char **static_headers;	/* "Name: value", from the headers option */
	int			nstatic_headers;
	char	   *origin;			/* scheme://host:port: the breaker's identity */
	CourierBreaker *breaker;
	Oid			owner;			/* the table's owner: its statements run as this role */
	CourierSigningKey *signing_keys;	/* option signing_secret (in settings; never logged) */
	int			nsigning_keys;
	int			max_request_bytes;	/* option; 0: the GUC */

	int			inflight;		/* requests in flight */
	int64	   *acked;			/* acknowledged by the endpoint, deletion not yet recorded */
	int			nacked;
	int			acked_cap;
	TimestampTz acked_tried;	/* last try to record them */
	int64		cursor;			/* rows with id <= cursor were dealt with */
	bool		rescan;			/* read again from the start soon */
	TimestampTz rescan_at;
	TimestampTz last_full_scan;
	TimestampTz retry_at;		/* earliest next_attempt_at we set */
	HTAB	   *busy_keys;		/* key hash -> rows in flight */
	HTAB	   *inflight_ids;	/* ids in flight */
	HTAB	   *parked;			/* key hash -> ids waiting behind the key */
	HTAB	   *blocked;		/* key hash -> the failed row it waits for */
	uint32	   *ready;			/* keys whose first parked id is to be fetched */
	int			nready;
	int			ready_cap;
	int			nparked;
	TimestampTz last_fresh_rows;	/* last time the fresh read found rows */
	TimestampTz last_read;		/* last fresh read */
	uint64		seen_commits;	/* producers' commit count the last read covered */
	uint64		commits;		/* the count read before this round's snapshot */
	bool		more;			/* the last read left rows behind */
	bool		caught_up;		/* the last fresh read found fewer rows than it asked for */
	int			read_batches;	/* batches the next fresh read may take (doubling up to a cap) */
	bool		wanted;			/* read in this round (decided before its snapshot) */
	List	   *open;			/* requests being filled by the current dispatch */
	SPIPlanPtr	fetch_plans[2];	/* [1]: looks for earlier failed rows of each row's key; [0]: not */
	SPIPlanPtr	retry_plan;
	SPIPlanPtr	ids_plans[2];	/* (as fetch_plans) */
	SPIPlanPtr	failed_plan;	/* is there a failed row at all? */
	SPIPlanPtr	next_retry_plan;
	SPIPlanPtr	delete_plan;
	SPIPlanPtr	fail_plan;
	SPIPlanPtr	dead_plan;
	SPIPlanPtr	null_id_plan;
	CourierOutboxCounters *counters;
	OutboxHealth delivery;		/* reading and sending */
	OutboxHealth maintenance;	/* the retention purge */
	bool		shape_problem;	/* the last catalog refresh found the table unfit */
	bool		shape_checked;	/* shape_reason is current (reset when the table changes) */
	char		shape_reason[COURIER_ERRLEN];	/* what is wrong with it ("": nothing) */
	bool		plans_stale;	/* the table changed: prepare the statements again */
} OutboxState;

/* One HTTP request and the rows it carries. */
typedef struct Delivery
{
	OutboxState *ob;
	MemoryContext cxt;
	int			nrows;
	int			maxrows;
	int64	   *ids;
	int		   *attempts;		/* attempts before this one, per row */
	char	   *result;			/* per row, on completion: 'o'k, 'r'etry, 'd'ead, or
								 * 'u'nsent: behind an earlier failed row of its key */
	uint32	   *keyhashes;
	bool	   *haskey;
	const char *topic;			/* Kafka: the topic of every row */
	char	   *url;
	StringInfoData body;
	const char **extra;			/* extra header lines */
	int			nextra;
	CourierHttpRequest *req;
	int			lane;			/* which of the dispatch's open requests it is (by key hash) */
	bool		started;		/* handed to libcurl: no more rows join it */
	bool		probe;			/* the half-open breaker's probe */
	bool		discovery;		/* v3: GET /v3/clusters, carrying no rows */
	char	   *webhook_id;		/* signed requests: the event id, or the batch's id */
	/* splitting a refused batch (outbox_split.c) */
	int		   *span_start;		/* row i's text is body[span_start[i] .. span_end[i]) */
	int		   *span_end;
	char	  **event_ids;
	struct Delivery *then;		/* the next part of a split batch: sent after this one */
	uint32	   *failed_keys;	/* keys that must not go on in the next parts */
	int			nfailed_keys;
} Delivery;

/* outbox_worker.c: what lives as long as the worker (outbox states, deliveries) */
extern PGDLLIMPORT MemoryContext courier_worker_context;

/* effective settings: per-outbox options override the GUCs */
#define OB_BATCH(ob)	((ob)->batch_size > 0 ? (ob)->batch_size : courier_batch_size)
#define OB_INFLIGHT(ob) ((ob)->max_inflight > 0 ? (ob)->max_inflight : courier_max_inflight)
#define OB_TIMEOUT(ob)	((ob)->timeout_ms > 0 ? (ob)->timeout_ms : courier_http_timeout_ms)
#define OB_BATCHED(ob)	(COURIER_FORMAT_IS_KAFKA((ob)->format) || (ob)->ce_batch)
/* the option may lower the GUC, never raise it */
#define OB_MAX_REQUEST(ob)	((ob)->max_request_bytes > 0 ? \
							 Min((ob)->max_request_bytes, courier_max_request_bytes) : courier_max_request_bytes)

/* outbox_request.c */
extern Delivery *courier_delivery_new(OutboxState *ob, int maxrows, const char *topic);
extern void courier_delivery_add(Delivery *d, const OutboxRow *r, uint32 keyhash);
extern bool courier_delivery_has_room(const Delivery *d, const OutboxRow *r);
extern void courier_delivery_start(Delivery *d);
extern Delivery *courier_open_delivery_for(OutboxState *ob, List **open, const OutboxRow *r, int lane,
										   int *budget);

/* outbox_split.c */
extern bool courier_split_wanted(const Delivery *d);
extern void courier_split_delivery(Delivery *d);
extern void courier_split_continue(Delivery *d);

/* outbox_source.c */
extern char *courier_default_source(Oid relid, MemoryContext cxt);

/* outbox_signing.c */
extern void courier_signing_refresh(OutboxState *ob, char *lines);
extern int	courier_signing_headers(const OutboxState *ob, const char *msg_id, const char *body,
									size_t len, const char **headers);

/* outbox_format.c */
extern void courier_decode_row(HeapTuple tup, TupleDesc desc, OutboxRow *r);
extern void courier_decode_rest(const OutboxState *ob, OutboxRow *r);
extern void courier_format_cloudevent(StringInfo buf, const OutboxState *ob, const OutboxRow *r);

/* kafka_rest.c: what Kafka REST v2 and v3 share, and v2 itself */
extern bool courier_valid_kafka_topic(const char *topic);
extern char *courier_kafka_url(const char *endpoint, const char *suffix);
extern CourierKafkaClass courier_kafka_class(int code);
extern void courier_append_base64(StringInfo buf, const char *data, int len);
extern void courier_format_kafka_record(StringInfo buf, const OutboxState *ob, const OutboxRow *r);
extern bool courier_parse_kafka_offsets(const char *json, int len, int nrecords, int *codes,
										char *errbuf, int errlen);

/* kafka_rest_v3.c */
extern const char *courier_kafka_v3_cluster(const OutboxState *ob);
extern void courier_format_kafka_v3_entry(StringInfo buf, const OutboxState *ob, const OutboxRow *r, int index);
extern char *courier_kafka_v3_url(const OutboxState *ob, const char *topic);
extern bool courier_parse_kafka_v3_batch(const char *json, int len, int nrecords, int *codes,
										 char *errbuf, int errlen);
extern bool courier_parse_kafka_v3_clusters(const char *json, int len, char *id, int idlen);
extern bool courier_valid_cluster_id(const char *id);

/* outbox_statements.c */
extern void courier_make_plans(OutboxState *ob);
extern void courier_free_plans(OutboxState *ob);
extern void courier_check_row_shape(const OutboxState *ob, TupleDesc desc);
extern void courier_probe_statements(OutboxState *ob);
extern bool courier_has_failed_rows(OutboxState *ob);
extern uint64 courier_dead_letter_null_ids(OutboxState *ob);
extern bool courier_purge_orphaned_delivered(void);
extern bool courier_purge_delivered_of(const OutboxState *ob);

/* outbox_health.c */
extern void courier_health_watch(List **outboxes);
extern bool courier_health_resting(const OutboxHealth *h, TimestampTz now);
extern void courier_health_failed(OutboxState *ob, OutboxHealth *h, const ErrorData *error, bool writing);
extern void courier_health_problem(OutboxState *ob, OutboxHealth *h, const char *reason);
extern void courier_health_ok(OutboxState *ob, OutboxHealth *h, bool writing);
extern void courier_health_refreshed(OutboxState *ob, HeapTuple tup, TupleDesc desc);

/* outbox_parking.c */
extern void courier_parking_init(OutboxState *ob);
extern bool courier_park(OutboxState *ob, uint32 keyhash, int64 id);
extern bool courier_parked_before(OutboxState *ob, uint32 keyhash, int64 id);
extern void courier_key_ready(OutboxState *ob, uint32 keyhash);
extern int	courier_take_ready(OutboxState *ob, int64 *ids, uint32 *keys, int max, int per_key);
extern void courier_parking_clear(OutboxState *ob);
extern void courier_block_key(OutboxState *ob, uint32 keyhash, int64 head_id);
extern bool courier_blocked_for(OutboxState *ob, uint32 keyhash, int64 id);
extern void courier_unblock_key(OutboxState *ob, uint32 keyhash, int64 id);
extern bool courier_key_blocked(OutboxState *ob, uint32 keyhash);
extern void courier_key_busy(OutboxState *ob, uint32 keyhash);
extern bool courier_key_unbusy(OutboxState *ob, uint32 keyhash);

/* outbox_delivery.c */
extern void courier_refresh_outboxes(List **outboxes);
extern bool courier_dispatch_possible(OutboxState *ob);
extern bool courier_dispatch(OutboxState *ob, const CourierHoldSet *holds);
extern void courier_dispatch_abort(OutboxState *ob);
extern void courier_complete(List *finished);
extern void courier_record_acked(List *outboxes);
extern void courier_forget_outbox(OutboxState *ob);

/* shared_tables.c: never wait for another role's lock on a shared table */
extern bool courier_shared_tables_lock(bool report);

#endif							/* OUTBOX_WORKER_H */
