#!/usr/bin/env node
// pg_courier test sink: a strict CloudEvents 1.0 webhook receiver and Kafka REST Proxy v2
// producer endpoint on loopback, with recording, ordering/dedup checks and fault injection.
// Core modules only (runs on Node 18 and 20). See README.md beside this file for the API.
'use strict';
const http = require('http');
const fs = require('fs');
const { performance } = require('perf_hooks');
const faults = require('./faults.js');
const { KAFKA_RECORD_TEXT } = faults;

// ---------------------------------------------------------------- command line
const opts = { port: 0, controlPort: 0, host: '127.0.0.1', partitions: 4, logFile: null,
  verbose: false, maxBody: 64 * 1024 * 1024, exitOnStdinEof: false };
{
  const a = process.argv.slice(2);
  const num = (i) => { const v = Number(a[i]); if (!Number.isInteger(v) || v < 0) die(`bad value for ${a[i - 1]}`); return v; };
  for (let i = 0; i < a.length; i++) {
    switch (a[i]) {
      case '--port': opts.port = num(++i); break;
      case '--control-port': opts.controlPort = num(++i); break;
      case '--host': opts.host = a[++i]; break;
      case '--partitions': opts.partitions = num(++i); if (opts.partitions < 1) die('--partitions must be >= 1'); break;
      case '--log-file': opts.logFile = a[++i]; break;
      case '--max-body': opts.maxBody = num(++i); break;
      case '--verbose': opts.verbose = true; break;
      // Lets a parent (CourierSink.pm) hand us a pipe as stdin so we die with it even on SIGKILL.
      case '--exit-on-stdin-eof': opts.exitOnStdinEof = true; break;
      case '-h': case '--help':
        process.stdout.write('usage: sink.js [--port N] [--control-port N] [--host 127.0.0.1] [--partitions 4]\n' +
          '               [--log-file path] [--max-body bytes] [--verbose] [--exit-on-stdin-eof]\n');
        process.exit(0);
      default: die(`unknown argument ${a[i]}`);
    }
  }
}
function die(msg) { process.stderr.write(`sink: ${msg}\n`); process.exit(2); }

const logFd = opts.logFile ? fs.openSync(opts.logFile, 'a') : null;
function log(msg) {
  const line = `${new Date().toISOString()} ${msg}\n`;
  if (logFd !== null) fs.writeSync(logFd, line);
  if (opts.verbose) process.stderr.write(line);
}
const now = () => performance.timeOrigin + performance.now();

// ---------------------------------------------------------------- state
const config = { record_data: true, order_field: null, id_field: null, latency_field: null,
  topics: null, ce_success_status: 200, require_headers: null,
  kafka_shape: 'confluent', cluster_id: 'sink-cluster-1',
  record_raw: false, max_body: null, reject_types: null };
// Raw requests (config record_raw): {t, method, url, raw_headers, body, status}, for receiver
// libraries to judge exactly what was sent (test/receivers).
const RAW_MAX = 20000;
let raw = [];
const FMT = ['ce', 'ce-batch', 'kafka'];
const FMT_CE = 0, FMT_BATCH = 1, FMT_KAFKA = 2;

// Records are columnar (typed arrays + plain arrays of strings) so a 1M-event run stays compact:
// no per-event object, and receipt time/partition/offset cost 20 bytes per event.
let rec, counters;
const topicIds = new Map(), topicNames = [];   // interned topic names; survive reset (harmless)
function internTopic(t) {
  let i = topicIds.get(t);
  if (i === undefined) { i = topicNames.length; topicNames.push(t); topicIds.set(t, i); }
  return i;
}
function newRecords() {
  const cap = 1024;
  return { n: 0, cap, t: new Float64Array(cap), off: new Float64Array(cap), part: new Int32Array(cap),
    topic: new Int32Array(cap), fmt: new Uint8Array(cap), req: new Float64Array(cap), id: [], key: [], data: [],
    kafka: [],            // Kafka records: {key_bytes (base64), headers, value}, while record_data
    seen: new Map(),      // id -> receipt count (dedup, /ids, /count)
    lastOrder: new Map(), // key -> highest order value among first receipts
    lat: new Float64Array(cap), latN: 0 };
}
function newCounters() {
  return { requests: 0, accepted: 0, duplicates: 0, order_violations: 0, violation_examples: [],
    status_counts: {}, faults_injected: {}, bytes: 0, last_receipt_t: null, internal_errors: 0,
    formats: { ce: 0, 'ce-batch': 0, kafka: 0 } };
}
rec = newRecords(); counters = newCounters();
function grow(r) {
  const cap = r.cap * 2;
  for (const f of ['t', 'off', 'part', 'topic', 'fmt', 'req']) { const a = new r[f].constructor(cap); a.set(r[f]); r[f] = a; }
  r.cap = cap;
}
// Protocol requests are numbered in the order their bodies were read (1, 2, ...; never reset), and
// every record carries the number of the request it came in (`req`): which events shared a request.
let reqCounter = 0, currentReq = 0;
// Kafka offsets per topic-partition and the round-robin cursor for null keys. Like a real broker
// they are not rewound by /_sink/reset, so offsets never repeat within one sink process.
const offsets = new Map(), rrCursor = new Map();

// Order values: numbers, or integer strings (bigint columns sent as JSON strings) compared as BigInt.
function orderValue(v) {
  if (typeof v === 'number') return v;
  if (typeof v === 'string') return /^-?\d+$/.test(v) ? BigInt(v) : v;
  return undefined;
}

// Append one accepted event. Hot path: keep it allocation-light.
function record(t, fmt, id, key, topic, data, part, off, ev, kafka) {
  const r = rec;
  if (r.n === r.cap) grow(r);
  const i = r.n++;
  r.t[i] = t; r.fmt[i] = fmt; r.part[i] = part; r.off[i] = off; r.topic[i] = internTopic(topic); r.req[i] = currentReq;
  r.id.push(id); r.key.push(key);
  if (config.record_data) r.data[i] = data;
  if (config.record_data && kafka !== undefined) r.kafka[i] = kafka;
  counters.accepted++; counters.formats[FMT[fmt]]++; counters.last_receipt_t = t;
  const c = r.seen.get(id);
  if (c !== undefined) { r.seen.set(id, c + 1); counters.duplicates++; return; } // redelivery: legal
  r.seen.set(id, 1);
  const of = config.order_field;
  if (of !== null && key !== null) {
    let v = data !== null && typeof data === 'object' ? data[of] : undefined;
    if (v === undefined && ev) v = ev[of]; // CE extension attribute (e.g. "sequence")
    v = orderValue(v);
    if (v !== undefined) {
      // order is per destination stream: CloudEvents (single or batched) and Kafka are separate
      const stream = (fmt === FMT_KAFKA ? 'kafka\0' : 'ce\0') + key;
      const prev = r.lastOrder.get(stream);
      if (prev === undefined || v > prev) r.lastOrder.set(stream, v);
      else {
        counters.order_violations++;
        if (counters.violation_examples.length < 20) {
          counters.violation_examples.push({ key, id, seq: i + 1, value: String(v), after: String(prev) });
        }
      }
    }
  }
  const lf = config.latency_field;
  if (lf !== null && data !== null && typeof data === 'object') {
    const ms = epochMs(data[lf]);
    if (ms !== undefined) {
      if (r.latN === r.lat.length) { const a = new Float64Array(r.lat.length * 2); a.set(r.lat); r.lat = a; }
      r.lat[r.latN++] = t - ms;
    }
  }
}
function epochMs(v) {
  if (typeof v === 'number') return Number.isFinite(v) ? v : undefined;
  if (typeof v === 'string') {
    if (/^-?\d+(\.\d+)?$/.test(v)) return Number(v);
    const d = Date.parse(v); return Number.isNaN(d) ? undefined : d;
  }
  return undefined;
}

// ---------------------------------------------------------------- fault plan (faults.js)
let plan = null, planSpec = null;
const countFault = (kind, n) => { counters.faults_injected[kind] = (counters.faults_injected[kind] || 0) + n; };
const fire = (f, ctx) => faults.fire(f, ctx, countFault);
const recordFailures = (kre, ctx, parts, ids, wholePartition) =>
  faults.recordFailures(kre, ctx, parts, ids, wholePartition, countFault);

// ---------------------------------------------------------------- responses
const recent = []; // last requests (headers etc.) for header assertions; a small ring
const RECENT_MAX = 32;
const KAFKA_CT = 'application/vnd.kafka.v2+json';
function send(res, code, body, ctype, extra) {
  counters.status_counts[code] = (counters.status_counts[code] || 0) + 1;
  if (res.recentEntry) res.recentEntry.status = code;
  const buf = body === null || body === undefined ? '' : typeof body === 'string' ? body : JSON.stringify(body);
  const h = { 'Content-Length': Buffer.byteLength(buf) };
  if (buf.length) h['Content-Type'] = ctype || 'application/json';
  if (extra) Object.assign(h, extra);
  res.writeHead(code, h);
  res.end(buf);
}
const ceError = (res, code, msg, extra) => send(res, code, { error: msg }, 'application/json', extra);
const kafkaError = (res, code, ec, msg, extra) => send(res, code, { error_code: ec, message: msg }, KAFKA_CT, extra);
function kafkaCodeFor(status) { // Confluent-style 5-digit error codes for injected statuses
  return status === 503 ? 50003 : status === 500 ? 50001 : status === 502 ? 50002 : status * 100 + 1;
}
function sendInjected(res, f, ctx) {
  const extra = f.retry_after !== null ? { 'Retry-After': f.retry_after } : null;
  if (f.body !== null) return send(res, f.code, f.body, typeof f.body === 'string' ? 'text/plain' : 'application/json', extra);
  if (ctx.format === 'kafka') return kafkaError(res, f.code, kafkaCodeFor(f.code), `injected fault (${f.kind})`, extra);
  return ceError(res, f.code, `injected fault (${f.kind})`, extra);
}

// ---------------------------------------------------------------- validation helpers
function mediaType(h) {
  if (!h) return { type: '', charset: null };
  const i = h.indexOf(';');
  const type = (i < 0 ? h : h.slice(0, i)).trim().toLowerCase();
  let charset = null;
  if (i >= 0) { const m = /charset\s*=\s*"?([^";\s]+)/i.exec(h.slice(i)); if (m) charset = m[1].toLowerCase(); }
  return { type, charset };
}
const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-](\d{2}):(\d{2}))$/;
function isRfc3339(s) {
  const m = RFC3339.exec(s);
  if (!m) return false;
  const y = +m[1], mo = +m[2], d = +m[3];
  const dim = [31, (y % 4 === 0 && (y % 100 !== 0 || y % 400 === 0)) ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
  return mo >= 1 && mo <= 12 && d >= 1 && d <= dim[mo - 1] && +m[4] <= 23 && +m[5] <= 59 && +m[6] <= 60 &&
    (m[9] === undefined || (+m[9] <= 23 && +m[10] <= 59));
}
const ATTR_NAME = /^[a-z0-9]+$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
// CloudEvents 1.0 JSON format. Returns an error string or null. JSON null means "absent" for
// optional attributes (JSON format: a null attribute MUST be decoded as unset).
function validateCE(ev) {
  if (ev === null || typeof ev !== 'object' || Array.isArray(ev)) return 'event must be a JSON object';
  if (ev.specversion !== '1.0') return 'specversion must be "1.0"';
  if (typeof ev.id !== 'string' || ev.id === '') return 'id must be a non-empty string';
  if (typeof ev.source !== 'string' || ev.source === '') return 'source must be a non-empty string';
  if (typeof ev.type !== 'string' || ev.type === '') return 'type must be a non-empty string';
  for (const k in ev) {
    const v = ev[k];
    if (k === 'data' || v === null) continue;
    switch (k) {
      case 'specversion': case 'id': case 'source': case 'type': break;
      case 'data_base64':
        if (typeof v !== 'string' || !BASE64.test(v)) return 'data_base64 must be a base64 string';
        if (ev.data !== undefined && ev.data !== null) return 'data and data_base64 are mutually exclusive';
        break;
      case 'time': if (typeof v !== 'string' || !isRfc3339(v)) return 'time must be an RFC 3339 timestamp'; break;
      case 'subject': case 'datacontenttype': case 'dataschema':
        if (typeof v !== 'string' || v === '') return `${k} must be a non-empty string`; break;
      default:
        if (!ATTR_NAME.test(k)) return `invalid attribute name "${k}" (lower-case a-z0-9 only)`;
        if (!(typeof v === 'string' || typeof v === 'boolean' ||
              (Number.isInteger(v) && v >= -2147483648 && v <= 2147483647)))
          return `extension attribute "${k}" must be a string, boolean or 32-bit integer`;
    }
  }
  return null;
}
// Idempotency-Key is an RFC 8941 sf-string: "..." with only \" and \\ escapes, printable ASCII.
function sfString(s) {
  s = s.trim();
  if (s.length < 2 || s.charCodeAt(0) !== 34 || s.charCodeAt(s.length - 1) !== 34) return null;
  let out = '';
  for (let i = 1; i < s.length - 1; i++) {
    const c = s.charCodeAt(i);
    if (c === 92) { const d = s[++i]; if (i >= s.length - 1 || (d !== '"' && d !== '\\')) return null; out += d; }
    else if (c === 34 || c < 0x20 || c > 0x7e) return null;
    else out += s[i];
  }
  return out;
}
function acceptsKafka(acc) {
  if (acc === undefined || acc.trim() === '') return true;
  for (const part of acc.split(',')) {
    const bits = part.split(';');
    const mt = bits[0].trim().toLowerCase();
    if (bits.slice(1).some((p) => /^\s*q\s*=\s*0(\.0*)?\s*$/i.test(p))) continue;
    if (mt === KAFKA_CT || mt === 'application/vnd.kafka+json' || mt === 'application/json' ||
        mt === '*/*' || mt === 'application/*') return true;
  }
  return false;
}
const TOPIC_NAME = /^[a-zA-Z0-9._-]{1,249}$/;
// FNV-1a over the JSON-serialised key: stable across runs; same key -> same partition.
function fnv1a(s) {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) { h ^= s.charCodeAt(i); h = Math.imul(h, 0x01000193); }
  return h >>> 0;
}

// A Kafka record value's CloudEvent (structured mode), and the id it is recorded under when it
// names one: the configured id_field, else the CloudEvent's id (vid null: its offset will do).
function valueIdentity(value) {
  const ce = value !== null && typeof value === 'object' && value.specversion === '1.0' &&
    typeof value.id === 'string' ? value : null;
  const f = config.id_field;
  if (f !== null && value !== null && typeof value === 'object' && value[f] !== undefined && value[f] !== null)
    return { ce, vid: String(value[f]) };
  return { ce, vid: ce !== null ? ce.id : null };
}
// The next offset of each of a topic's np partitions (made on first use; never rewound).
function topicOffsets(topic, np) {
  let offs = offsets.get(topic);
  if (offs === undefined) { offs = new Array(np).fill(0); offsets.set(topic, offs); rrCursor.set(topic, 0); }
  return offs;
}

// ---------------------------------------------------------------- protocol handlers
const KAFKA_ROUTE = /^(.*)\/topics\/([^/]+)$/;
function handleProtocol(req, res) {
  counters.requests++;
  const entry = { t: now(), method: req.method, url: req.url, headers: req.headers, status: null };
  recent.push(entry); if (recent.length > RECENT_MAX) recent.shift();
  res.recentEntry = entry;
  const chunks = [];
  let size = 0, tooBig = false;
  const maxBody = config.max_body !== null ? config.max_body : opts.maxBody;
  req.on('data', (c) => { size += c.length; if (size > maxBody) tooBig = true; else chunks.push(c); });
  req.on('end', () => {
    counters.bytes += size;
    try {
      if (config.record_raw && raw.length < RAW_MAX) {
        entry.raw_headers = req.rawHeaders; entry.body_bytes = size;
        entry.body = tooBig ? null : Buffer.concat(chunks).toString('utf8');
        raw.push(entry);
      }
      if (tooBig) return ceError(res, 413, `body larger than ${maxBody} bytes`, { Connection: 'close' });
      const body = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
      dispatch(req, res, body, entry);
    } catch (e) { internalError(res, e); }
  });
  req.on('error', () => {});
}
function internalError(res, e) {
  counters.internal_errors++;
  process.stderr.write(`sink: internal error: ${e && e.stack || e}\n`);
  if (!res.headersSent) { try { ceError(res, 500, 'sink internal error'); } catch (_) { /* socket gone */ } }
}

function dispatch(req, res, body, entry) {
  const q = req.url.indexOf('?');
  const path = q < 0 ? req.url : req.url.slice(0, q);
  const v3c = V3_CLUSTERS.exec(path), v3b = V3_BATCH.exec(path);
  const km = v3c || v3b ? null : KAFKA_ROUTE.exec(path);
  let topic = null;
  if (km) { try { topic = decodeURIComponent(km[2]); } catch (_) { topic = km[2]; } }
  if (v3b) topic = v3b[3];
  const ct = mediaType(req.headers['content-type']);
  const format = km || v3c || v3b ? 'kafka' : ct.type === 'application/cloudevents-batch+json' ? 'ce-batch' : 'ce';
  entry.format = format;
  entry.req = currentReq = ++reqCounter;

  // Parse once up front: fault matching by CE type needs the body, validation reuses it.
  let parsed, parseErr = null;
  if (body.length) { try { parsed = JSON.parse(body.toString('utf8')); } catch (e) { parseErr = e.message; } }
  else if (!v3c) parseErr = 'empty body';
  const ctx = { format, path, hasTopic: (t) => {
    if (format === 'kafka') return t === topic;
    if (Array.isArray(parsed)) return parsed.some((e) => e && e.type === t);
    return parsed !== null && typeof parsed === 'object' && parsed.type === t;
  } };

  const t = now();
  const p = plan;
  let delay = 0;
  let reply = null; // the response, run now or after an injected delay
  if (p !== null) {
    if (fire(p.delay_ms, ctx)) delay = p.delay_ms.ms;
    if (fire(p.down, ctx)) reply = () => sendInjected(res, p.down, ctx);
    else if (fire(p.reset, ctx)) reply = () => resetSocket(req.socket);
    else if (fire(p.status, ctx)) reply = () => sendInjected(res, p.status, ctx);
  }
  if (reply === null && v3c) reply = handleV3Clusters(req, res);
  if (reply === null && v3b) reply = handleV3Batch(req, res, ct, parsed, parseErr, v3b[2], topic, t, p, ctx);
  if (reply === null) reply = format === 'kafka'
    ? handleKafka(req, res, ct, parsed, parseErr, topic, t, p, ctx)
    : handleCE(req, res, ct, format, parsed, parseErr, t, p, ctx);
  if (delay > 0) setTimeout(() => { try { reply(); } catch (e) { internalError(res, e); } }, delay);
  else reply();
  if (opts.verbose) log(`${req.method} ${req.url} ${format} -> ${delay ? `(+${delay}ms) ` : ''}${entry.status}`);
}
function resetSocket(s) {
  if (typeof s.resetAndDestroy === 'function' && !s.destroyed) s.resetAndDestroy(); // RST, Node >= 18.3
  else s.destroy();
}
function checkRequiredHeaders(req) {
  const rh = config.require_headers;
  if (rh === null) return true;
  for (const k in rh) if (req.headers[k.toLowerCase()] !== rh[k]) return false;
  return true;
}

// config reject_types: the receiver refuses events of these types (400), like an invalid event.
function refusedType(ev) {
  return config.reject_types !== null && config.reject_types.includes(ev.type) ? `type "${ev.type}" refused` : null;
}

// Each handler validates + records now and returns the (possibly delayed) reply closure.
function handleCE(req, res, ct, format, parsed, parseErr, t, p, ctx) {
  if (req.method !== 'POST') return () => ceError(res, 405, 'only POST is allowed', { Allow: 'POST' });
  if ((ct.type !== 'application/cloudevents+json' && ct.type !== 'application/cloudevents-batch+json') ||
      (ct.charset !== null && ct.charset !== 'utf-8'))
    return () => ceError(res, 415, 'Content-Type must be application/cloudevents+json or application/cloudevents-batch+json');
  if (!checkRequiredHeaders(req)) return () => ceError(res, 401, 'required header missing or wrong');
  if (parseErr !== null) return () => ceError(res, 400, `invalid JSON: ${parseErr}`);
  let events;
  if (format === 'ce') {
    const err = validateCE(parsed) || refusedType(parsed);
    if (err) return () => ceError(res, 400, err);
    const ik = req.headers['idempotency-key'];
    if (ik === undefined) return () => ceError(res, 400, 'Idempotency-Key header required');
    if (ik !== `"${parsed.id}"` && sfString(ik) !== parsed.id)
      return () => ceError(res, 400, 'Idempotency-Key must be the event id as a quoted string');
    events = [parsed];
  } else {
    if (!Array.isArray(parsed)) return () => ceError(res, 400, 'batch body must be a JSON array');
    if (parsed.length === 0) return () => ceError(res, 400, 'batch must not be empty');
    for (let i = 0; i < parsed.length; i++) {
      const err = validateCE(parsed[i]) || refusedType(parsed[i]);
      if (err) return () => ceError(res, 400, `event ${i}: ${err}`);
    }
    events = parsed;
  }
  const fmt = format === 'ce' ? FMT_CE : FMT_BATCH;
  for (const ev of events) {
    const data = ev.data !== undefined ? ev.data : ev.data_base64 !== undefined ? ev.data_base64 : null;
    // Ordering key: subject (pg_courier puts the event key there), else the partitionkey extension.
    const key = typeof ev.subject === 'string' ? ev.subject : typeof ev.partitionkey === 'string' ? ev.partitionkey : null;
    record(t, fmt, ev.id, key, ev.type, data, -1, -1, ev);
  }
  if (p !== null && fire(p.accept_then_fail, ctx)) return () => sendInjected(res, p.accept_then_fail, ctx);
  return () => send(res, config.ce_success_status, null);
}

const KAFKA_BODY_KEYS = new Set(['records', 'key_schema', 'key_schema_id', 'value_schema', 'value_schema_id']);
const KAFKA_RECORD_KEYS = new Set(['key', 'value', 'partition']);
function handleKafka(req, res, ct, parsed, parseErr, topic, t, p, ctx) {
  if (req.method !== 'POST') return () => kafkaError(res, 405, 405, 'HTTP 405 Method Not Allowed', { Allow: 'POST' });
  const binary = ct.type === 'application/vnd.kafka.binary.v2+json';
  if ((ct.type !== 'application/vnd.kafka.json.v2+json' && !binary) || (ct.charset !== null && ct.charset !== 'utf-8'))
    return () => kafkaError(res, 415, 415, 'HTTP 415 Unsupported Media Type');
  if (!acceptsKafka(req.headers.accept)) return () => kafkaError(res, 406, 406, 'HTTP 406 Not Acceptable');
  if (!checkRequiredHeaders(req)) return () => kafkaError(res, 401, 40101, 'Unauthorized');
  // Malformed JSON: 400 like Confluent's JsonParseException mapper; well-formed but wrong shape: 422.
  if (parseErr !== null) return () => kafkaError(res, 400, 400, `Unexpected character: ${parseErr}`);
  const bad = (m) => () => kafkaError(res, 422, 42201, m);
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) return bad('body must be a JSON object');
  for (const k in parsed) if (!KAFKA_BODY_KEYS.has(k)) return bad(`unrecognized field "${k}"`);
  const records = parsed.records;
  if (!Array.isArray(records) || records.length === 0) return bad('records must be a non-empty array');
  const np = opts.partitions;
  for (let i = 0; i < records.length; i++) {
    const r = records[i];
    if (r === null || typeof r !== 'object' || Array.isArray(r)) return bad(`record ${i} must be an object`);
    for (const k in r) if (!KAFKA_RECORD_KEYS.has(k)) return bad(`record ${i}: unrecognized field "${k}"`);
    if (!('value' in r)) return bad(`record ${i}: value is required`);
    if (r.partition !== undefined && r.partition !== null && !(Number.isInteger(r.partition) && r.partition >= 0))
      return bad(`record ${i}: partition must be a non-negative integer`);
    if (binary) {
      for (const f of ['key', 'value']) {
        const v = r[f];
        if (v !== undefined && v !== null && (typeof v !== 'string' || !BASE64.test(v)))
          return bad(`record ${i}: ${f} must be base64 in binary mode`);
      }
    }
  }
  if (!TOPIC_NAME.test(topic) || (config.topics !== null && !config.topics.includes(topic)))
    return () => kafkaError(res, 404, 40401, 'Topic not found');
  for (const r of records) {
    if (r.partition !== undefined && r.partition !== null && r.partition >= np)
      return () => kafkaError(res, 404, 40402, 'Partition not found');
  }
  const offs = topicOffsets(topic, np);
  // First where each record goes and what it is, then which records fail (kafka_record_errors:
  // a failure takes the rest of its partition's batch with it), then the written ones are recorded.
  const n = records.length, prep = new Array(n), parts = new Array(n), vids = new Array(n);
  for (let i = 0; i < n; i++) {
    const r = records[i];
    let key = r.key === undefined ? null : r.key, value = r.value;
    if (binary) {
      if (key !== null) key = Buffer.from(key, 'base64').toString('utf8');
      if (value !== null) { value = Buffer.from(value, 'base64').toString('utf8'); try { value = JSON.parse(value); } catch (_) { /* keep text */ } }
    }
    const keyStr = key === null ? null : typeof key === 'string' ? key : JSON.stringify(key);
    let part;
    if (r.partition !== undefined && r.partition !== null) part = r.partition;
    else if (key === null) { part = rrCursor.get(topic); rrCursor.set(topic, (part + 1) % np); }
    else part = fnv1a(binary ? r.key : JSON.stringify(key)) % np;
    const { ce, vid } = valueIdentity(value);
    prep[i] = { keyStr, value, ce }; parts[i] = part; vids[i] = vid;
  }
  const kre = p !== null ? p.kafka_record_errors : undefined;
  const redpanda = config.kafka_shape === 'redpanda';
  const fails = recordFailures(kre, ctx, parts, vids, redpanda);
  const out = new Array(n);
  for (let i = 0; i < n; i++) {
    if (fails[i] !== 0) {
      out[i] = { partition: null, offset: null, error_code: fails[i], error: KAFKA_RECORD_TEXT[fails[i]] };
      continue;
    }
    const r = records[i], { keyStr, value, ce } = prep[i], part = parts[i];
    const off = offs[part]++;
    const id = vids[i] !== null ? vids[i] : `${topic}/${part}/${off}`;
    // the key's bytes as Kafka stores them: the JSON text in json mode, the decoded bytes in binary
    const keyBytes = r.key === undefined || r.key === null ? null
      : binary ? r.key : Buffer.from(JSON.stringify(r.key), 'utf8').toString('base64');
    record(t, FMT_KAFKA, id, keyStr, topic, ce !== null ? ce.data : value, part, off, ce,
      { key_bytes: keyBytes, headers: null, value });
    out[i] = { partition: part, offset: off, error_code: null, error: null };
  }
  if (p !== null && fire(p.accept_then_fail, ctx)) return () => sendInjected(res, p.accept_then_fail, ctx);
  if (redpanda) return () => send(res, 200, { offsets: redpandaOffsets(out, parts, kre) }, KAFKA_CT);
  return () => send(res, 200, { key_schema_id: null, value_schema_id: null, offsets: out }, KAFKA_CT);
}

// Redpanda's HTTP Proxy answers one entry per partition written (pandaproxy/rest/handlers.cc), not
// per record: {"partition":p,"offset":<first offset>}, and {"partition":p,"error_code":c,"offset":-1}
// for a partition whose batch failed. Entries come in the order of the partitions' first records
// (Redpanda's own order is a hash map's: one order it may have). With kafka_record_errors of
// scope "record" (records of one partition failing on their own, which Redpanda's proxy cannot
// answer) the failures are one {"partition":-1,"offset":-1,"error_code":c} entry at the end, as
// before scopes existed.
function redpandaOffsets(out, parts, kre) {
  const byPart = new Map();
  if (kre !== undefined && kre.scope === 'partition') {
    for (let i = 0; i < out.length; i++) {
      const o = out[i], pt = parts[i];
      if (byPart.has(pt)) continue;
      byPart.set(pt, o.error_code !== null ? { partition: pt, error_code: o.error_code, offset: -1 }
        : { partition: pt, offset: o.offset });
    }
    return [...byPart.values()];
  }
  let failed = null;
  for (const o of out) {
    if (o.error_code !== null) { if (failed === null) failed = o; continue; }
    if (!byPart.has(o.partition)) byPart.set(o.partition, { partition: o.partition, offset: o.offset });
  }
  const res = [...byPart.values()];
  if (failed !== null) res.push({ partition: -1, offset: -1, error_code: failed.error_code });
  return res;
}

// ---------------------------------------------------------------- Kafka REST v3
// GET <prefix>/v3/clusters, POST <prefix>/v3/clusters/<id>/topics/<topic>/records:batch
const V3_CLUSTERS = /^(.*)\/v3\/clusters$/;
const V3_BATCH = /^(.*)\/v3\/clusters\/([^/]+)\/topics\/([^/]+)\/records:batch$/;
const V3_ENTRY_KEYS = new Set(['id', 'key', 'value', 'headers', 'partition_id', 'timestamp']);
const v3Error = (res, code, ec, msg) => send(res, code, { error_code: ec, message: msg }, 'application/json');
function handleV3Clusters(req, res) {
  if (req.method !== 'GET') return () => v3Error(res, 405, 405, 'HTTP 405 Method Not Allowed');
  if (!checkRequiredHeaders(req)) return () => v3Error(res, 401, 40101, 'Unauthorized');
  return () => send(res, 200, { kind: 'KafkaClusterList', metadata: { self: req.url, next: null },
    data: [{ kind: 'KafkaCluster', cluster_id: config.cluster_id }] });
}
// A data object {type, data} of an entry: STRING (a string), JSON (any JSON), BINARY (base64).
function v3Data(d, what) {
  if (d === null || typeof d !== 'object' || Array.isArray(d)) return `${what} must be an object`;
  for (const k in d) if (k !== 'type' && k !== 'data' && k !== 'subject_name_strategy') return `${what}: unrecognized field "${k}"`;
  if (d.type === 'STRING') return typeof d.data === 'string' ? null : `${what}.data must be a string`;
  if (d.type === 'JSON') return 'data' in d ? null : `${what}.data is required`;
  if (d.type === 'BINARY') return typeof d.data === 'string' && BASE64.test(d.data) ? null : `${what}.data must be base64`;
  return `${what}.type must be STRING, JSON or BINARY`;
}
function v3Bytes(d) { // the bytes Kafka stores for a data object, as base64
  if (d === undefined || d === null) return null;
  if (d.type === 'BINARY') return d.data;
  return Buffer.from(d.type === 'STRING' ? d.data : JSON.stringify(d.data), 'utf8').toString('base64');
}
function handleV3Batch(req, res, ct, parsed, parseErr, cluster, topic, t, p, ctx) {
  if (req.method !== 'POST') return () => v3Error(res, 405, 405, 'HTTP 405 Method Not Allowed');
  if (ct.type !== 'application/json') return () => v3Error(res, 415, 415, 'HTTP 415 Unsupported Media Type');
  if (!checkRequiredHeaders(req)) return () => v3Error(res, 401, 40101, 'Unauthorized');
  if (cluster !== config.cluster_id) return () => v3Error(res, 404, 404, `Cluster ${cluster} not found`);
  if (parseErr !== null) return () => v3Error(res, 400, 400, `Unexpected character: ${parseErr}`);
  const bad = (m) => () => v3Error(res, 400, 400, m);
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) return bad('body must be a JSON object');
  for (const k in parsed) if (k !== 'entries') return bad(`unrecognized field "${k}"`);
  const entries = parsed.entries;
  if (!Array.isArray(entries) || entries.length === 0) return bad('entries must be a non-empty array');
  const ids = new Set();
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i];
    if (e === null || typeof e !== 'object' || Array.isArray(e)) return bad(`entry ${i} must be an object`);
    for (const k in e) if (!V3_ENTRY_KEYS.has(k)) return bad(`entry ${i}: unrecognized field "${k}"`);
    if (typeof e.id !== 'string' || e.id === '' || e.id.length > 80) return bad(`entry ${i}: id must be a string of 1 to 80 characters`);
    if (ids.has(e.id)) return bad(`entry ${i}: id "${e.id}" is not unique in the batch`);
    ids.add(e.id);
    for (const f of ['key', 'value']) {
      if (e[f] === undefined) { if (f === 'value') return bad(`entry ${i}: value is required`); continue; }
      const err = v3Data(e[f], `entry ${i}: ${f}`);
      if (err) return bad(err);
    }
    if (e.headers !== undefined) {
      if (!Array.isArray(e.headers)) return bad(`entry ${i}: headers must be an array`);
      for (const h of e.headers) {
        if (h === null || typeof h !== 'object' || typeof h.name !== 'string' || h.name === '' ||
            !(h.value === null || (typeof h.value === 'string' && BASE64.test(h.value))) ||
            Object.keys(h).some((k) => k !== 'name' && k !== 'value'))
          return bad(`entry ${i}: a header must be {name, value: base64}`);
      }
    }
  }
  if (!TOPIC_NAME.test(topic) || (config.topics !== null && !config.topics.includes(topic)))
    return () => v3Error(res, 404, 40403, `This server does not host this topic-partition.`);
  const np = opts.partitions;
  const offs = topicOffsets(topic, np);
  // As for v2: where each entry goes and what it is, then which fail, then record the written ones.
  const n = entries.length, prep = new Array(n), parts = new Array(n), vids = new Array(n);
  for (let i = 0; i < n; i++) {
    const e = entries[i];
    const keyBytes = v3Bytes(e.key);
    const keyStr = keyBytes === null ? null : Buffer.from(keyBytes, 'base64').toString('utf8');
    let part;
    if (Number.isInteger(e.partition_id)) part = e.partition_id % np;
    else if (keyBytes === null) { part = rrCursor.get(topic); rrCursor.set(topic, (part + 1) % np); }
    else part = fnv1a(keyBytes) % np;
    const value = e.value.type === 'JSON' ? e.value.data : Buffer.from(v3Bytes(e.value), 'base64').toString('utf8');
    const { ce, vid } = valueIdentity(value);
    prep[i] = { keyBytes, keyStr, value, ce }; parts[i] = part; vids[i] = vid;
  }
  const kre = p !== null ? p.kafka_record_errors : undefined;
  const fails = recordFailures(kre, ctx, parts, vids, false);
  const successes = [], failures = [];
  for (let i = 0; i < n; i++) {
    const e = entries[i];
    if (fails[i] !== 0) {
      failures.push({ id: e.id, error_code: fails[i], message: KAFKA_RECORD_TEXT[fails[i]] });
      continue;
    }
    const { keyBytes, keyStr, value, ce } = prep[i], part = parts[i];
    const off = offs[part]++;
    const headers = (e.headers || []).map((h) => ({ name: h.name,
      value: h.value === null ? null : Buffer.from(h.value, 'base64').toString('utf8') }));
    const id = vids[i] !== null ? vids[i] : `${topic}/${part}/${off}`;
    record(t, FMT_KAFKA, id, keyStr, topic, ce !== null ? ce.data : value, part, off, ce,
      { key_bytes: keyBytes, headers, value });
    successes.push({ id: e.id, cluster_id: cluster, topic_name: topic, partition_id: part, offset: off,
      timestamp: new Date(t).toISOString() });
  }
  if (p !== null && fire(p.accept_then_fail, ctx)) return () => sendInjected(res, p.accept_then_fail, ctx);
  return () => send(res, 207, { successes, failures }, 'application/json');
}

// ---------------------------------------------------------------- control API
function handleControl(req, res) {
  const chunks = [];
  let size = 0;
  req.on('data', (c) => { size += c.length; if (size <= 1 << 20) chunks.push(c); });
  req.on('end', () => {
    try { control(req, res, Buffer.concat(chunks).toString('utf8'), size > 1 << 20); }
    catch (e) { counters.internal_errors++; process.stderr.write(`sink: control error: ${e.stack}\n`); ctlSend(res, 500, { error: String(e.message) }); }
  });
}
function ctlSend(res, code, obj) {
  const buf = JSON.stringify(obj === undefined ? null : obj);
  res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(buf) });
  res.end(buf);
}
function control(req, res, bodyText, tooBig) {
  const u = new URL(req.url, 'http://sink');
  const route = `${req.method} ${u.pathname.replace(/\/+$/, '')}`;
  const q = u.searchParams;
  let body = null;
  if (tooBig) return ctlSend(res, 413, { error: 'control body too large' });
  if (bodyText.trim() !== '') { try { body = JSON.parse(bodyText); } catch (e) { return ctlSend(res, 400, { error: `invalid JSON: ${e.message}` }); } }
  switch (route) {
    case 'GET /_sink/health': return ctlSend(res, 200, { ok: true, listening: protoListening, port: opts.port, control_port: controlPort });
    case 'GET /_sink/stats': return ctlSend(res, 200, statsView());
    case 'GET /_sink/events': {
      const from = Math.max(1, parseInt(q.get('from') || '1', 10) || 1);
      const limit = Math.min(100000, Math.max(0, parseInt(q.get('limit') || '1000', 10) || 0));
      const out = [];
      for (let i = from - 1; i < rec.n && out.length < limit; i++) out.push(eventView(i));
      return ctlSend(res, 200, out);
    }
    case 'GET /_sink/ids': return ctlSend(res, 200, Array.from(rec.seen.keys()));
    case 'GET /_sink/count': {
      const id = q.get('id');
      if (id === null) return ctlSend(res, 400, { error: 'id parameter required' });
      return ctlSend(res, 200, { id, count: rec.seen.get(id) || 0 });
    }
    case 'GET /_sink/latency': return ctlSend(res, 200, latency(q.get('field')));
    case 'GET /_sink/requests': return ctlSend(res, 200, recent);
    case 'GET /_sink/raw': {
      const from = Math.max(1, parseInt(q.get('from') || '1', 10) || 1);
      return ctlSend(res, 200, raw.slice(from - 1));
    }
    case 'GET /_sink/config': return ctlSend(res, 200, config);
    case 'POST /_sink/config': {
      const err = applyConfig(body);
      return err ? ctlSend(res, 400, { error: err }) : ctlSend(res, 200, config);
    }
    case 'POST /_sink/reset':
      rec = newRecords(); counters = newCounters(); recent.length = 0; raw = [];
      log('reset');
      return ctlSend(res, 200, { ok: true });
    case 'GET /_sink/faults': return ctlSend(res, 200, faults.planView(plan, planSpec));
    case 'POST /_sink/faults':
      try { plan = faults.compilePlan(body); planSpec = body; } catch (e) { return ctlSend(res, 400, { error: e.message }); }
      log(`faults ${JSON.stringify(body)}`);
      return ctlSend(res, 200, faults.planView(plan, planSpec));
    case 'DELETE /_sink/faults': case 'POST /_sink/faults/clear':
      plan = null; planSpec = null; log('faults cleared');
      return ctlSend(res, 200, { ok: true });
    case 'POST /_sink/stop_listening': return stopListening(() => ctlSend(res, 200, { listening: false, port: opts.port }));
    case 'POST /_sink/start_listening':
      return startListening((err) => err ? ctlSend(res, 500, { error: err.message }) : ctlSend(res, 200, { listening: true, port: opts.port }));
    default: return ctlSend(res, 404, { error: `no such control route: ${route}` });
  }
}
function statsView() {
  return { requests: counters.requests, accepted: counters.accepted, unique: rec.seen.size,
    duplicates: counters.duplicates, order_violations: counters.order_violations,
    violation_examples: counters.violation_examples, status_counts: counters.status_counts,
    faults_injected: counters.faults_injected, last_receipt_t: counters.last_receipt_t,
    bytes: counters.bytes, formats: counters.formats, internal_errors: counters.internal_errors,
    listening: protoListening, rss_bytes: process.memoryUsage.rss() };
}
function eventView(i) {
  const e = { seq: i + 1, req: rec.req[i], id: rec.id[i], key: rec.key[i], topic: topicNames[rec.topic[i]], format: FMT[rec.fmt[i]], t: rec.t[i] };
  if (rec.fmt[i] === FMT_KAFKA) { e.partition = rec.part[i]; e.offset = rec.off[i]; }
  if (config.record_data || rec.data[i] !== undefined) e.data = rec.data[i] === undefined ? null : rec.data[i];
  if (rec.kafka[i] !== undefined) e.kafka = rec.kafka[i];
  return e;
}
function applyConfig(b) {
  if (b === null || typeof b !== 'object' || Array.isArray(b)) return 'config must be an object';
  const strOrNull = (v) => v === null || (typeof v === 'string' && v !== '');
  for (const k of Object.keys(b)) {
    const v = b[k];
    switch (k) {
      case 'record_data': config.record_data = !!v; break;
      case 'order_field': case 'id_field': case 'latency_field':
        if (!strOrNull(v)) return `${k} must be a non-empty string or null`;
        config[k] = v; break;
      case 'topics':
        if (v !== null && !(Array.isArray(v) && v.every((x) => typeof x === 'string'))) return 'topics must be an array of names or null';
        config.topics = v; break;
      case 'ce_success_status':
        if (!(Number.isInteger(v) && v >= 200 && v <= 299)) return 'ce_success_status must be 2xx';
        config.ce_success_status = v; break;
      case 'kafka_shape':
        if (v !== 'confluent' && v !== 'redpanda') return 'kafka_shape must be "confluent" or "redpanda"';
        config.kafka_shape = v; break;
      case 'cluster_id':
        if (typeof v !== 'string' || v === '') return 'cluster_id must be a non-empty string';
        config.cluster_id = v; break;
      case 'record_raw': config.record_raw = !!v; break;
      case 'max_body':
        if (v !== null && !(Number.isInteger(v) && v > 0)) return 'max_body must be a positive integer or null';
        config.max_body = v; break;
      case 'reject_types':
        if (v !== null && !(Array.isArray(v) && v.every((x) => typeof x === 'string'))) return 'reject_types must be an array of types or null';
        config.reject_types = v; break;
      case 'require_headers':
        if (v !== null && (typeof v !== 'object' || Array.isArray(v))) return 'require_headers must be an object or null';
        config.require_headers = v; break;
      default: return `unknown config key "${k}"`;
    }
  }
  log(`config ${JSON.stringify(config)}`);
  return null;
}
function latency(field) {
  let xs, n;
  if (field === null || field === config.latency_field) {
    if (config.latency_field === null) return { error: 'no field given and no latency_field configured', count: 0 };
    xs = rec.lat.slice(0, rec.latN); n = rec.latN;
  } else {
    // Ad-hoc field: needs the recorded data of first receipts.
    const seenFirst = new Set(); const tmp = [];
    for (let i = 0; i < rec.n; i++) {
      const id = rec.id[i];
      if (seenFirst.has(id)) continue;
      seenFirst.add(id);
      const d = rec.data[i];
      const ms = d !== null && typeof d === 'object' ? epochMs(d[field]) : undefined;
      if (ms !== undefined) tmp.push(rec.t[i] - ms);
    }
    xs = Float64Array.from(tmp); n = xs.length;
  }
  if (n === 0) return { field, count: 0, p50: null, p90: null, p99: null, max: null, mean: null };
  xs.sort();
  let sum = 0; for (let i = 0; i < n; i++) sum += xs[i];
  const pct = (p) => xs[Math.min(n - 1, Math.max(0, Math.ceil(p * n) - 1))]; // nearest rank
  return { field: field || config.latency_field, count: n, p50: pct(0.5), p90: pct(0.9), p99: pct(0.99), max: xs[n - 1], mean: sum / n };
}

// ---------------------------------------------------------------- servers
function tune(s) {
  s.keepAliveTimeout = 60000;
  s.headersTimeout = 65000; // must exceed keepAliveTimeout or idle keep-alive sockets get cut
  s.requestTimeout = 0;     // injected delays must not be cut short by the server itself
}
let protoServer = null, protoListening = false, controlPort = null;
const protoSockets = new Set();
function makeProtoServer() {
  const s = http.createServer((req, res) => {
    if (req.url.startsWith('/_sink/')) return handleControl(req, res); // convenience; control port is canonical
    handleProtocol(req, res);
  });
  tune(s);
  s.on('connection', (sock) => { protoSockets.add(sock); sock.on('close', () => protoSockets.delete(sock)); });
  return s;
}
function startListening(cb) {
  if (protoListening) return cb(null);
  const s = makeProtoServer();
  const onErr = (e) => { s.removeListener('listening', onOk); cb(e); };
  const onOk = () => {
    s.removeListener('error', onErr);
    protoServer = s; protoListening = true; opts.port = s.address().port;
    log(`protocol listener up on ${opts.host}:${opts.port}`);
    cb(null);
  };
  s.once('error', onErr); s.once('listening', onOk);
  s.listen(opts.port, opts.host);
}
// Really close the protocol port (connect() then fails with ECONNREFUSED) and cut open
// keep-alive connections, as a crashed receiver would.
function stopListening(cb) {
  if (!protoListening) return cb();
  protoListening = false;
  const s = protoServer; protoServer = null;
  let done = false;
  const finish = () => { if (!done) { done = true; log('protocol listener stopped'); cb(); } };
  s.close(finish);
  for (const sock of protoSockets) sock.destroy();
  setTimeout(finish, 2000).unref();
}

const controlServer = http.createServer(handleControl);
tune(controlServer);
controlServer.on('error', (e) => die(`control listener: ${e.message}`));
startListening((err) => {
  if (err) die(`cannot listen on ${opts.host}:${opts.port}: ${err.message}`);
  controlServer.listen(opts.controlPort, opts.host, () => {
    controlPort = controlServer.address().port;
    // Exactly these two lines on stdout; callers parse them to find the ports.
    process.stdout.write(`SINK LISTENING ${opts.port}\nSINK CONTROL ${controlPort}\n`);
    log(`control listener up on ${opts.host}:${controlPort}`);
  });
});

function shutdown(sig) {
  log(`shutdown on ${sig}`);
  try { if (protoServer) protoServer.close(); controlServer.close(); } catch (_) { /* exiting anyway */ }
  for (const sock of protoSockets) sock.destroy();
  if (logFd !== null) fs.closeSync(logFd);
  process.exit(0);
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
if (opts.exitOnStdinEof) { process.stdin.on('end', () => shutdown('stdin EOF')); process.stdin.on('error', () => shutdown('stdin error')); process.stdin.resume(); }
// Never die on a bug triggered by odd input; count it so tests can assert internal_errors == 0.
process.on('uncaughtException', (e) => { counters.internal_errors++; process.stderr.write(`sink: uncaught: ${e.stack || e}\n`); });
