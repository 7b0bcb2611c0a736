// pg_courier test sink: the fault plan (POST /_sink/faults). A plan is compiled once from its JSON
// spec; its parts fire per request (down, status, delay_ms, reset, accept_then_fail) or per record
// (kafka_record_errors), each with its rate, count, match and the plan's seeded PRNG. See README.md.
'use strict';

// Per-record codes: Confluent's kafka-rest (50002 non-retriable, 50003 retriable, 40101
// authentication, 40301 authorization) and very old proxies' 1 (non-retriable) and 2 (retriable).
const KAFKA_RECORD_CODES = new Set([1, 2, 50002, 50003, 40101, 40301]);
const KAFKA_RECORD_TEXT = { 1: 'injected non-retriable error', 2: 'injected retriable error',
  50002: 'RecordTooLargeException: injected non-retriable error',
  50003: 'NotEnoughReplicasException: injected retriable error',
  40101: 'Authentication failed (injected)', 40301: 'Not authorized to access topics (injected)' };
const FAULT_KINDS = ['down', 'status', 'delay_ms', 'reset', 'accept_then_fail', 'kafka_record_errors'];
function mulberry32(a) { // seeded PRNG so a plan with "seed" injects a reproducible pattern
  return () => { a |= 0; a = a + 0x6D2B79F5 | 0; let t = Math.imul(a ^ a >>> 15, 1 | a);
    t = t + Math.imul(t ^ t >>> 7, 61 | t) ^ t; return ((t ^ t >>> 14) >>> 0) / 4294967296; };
}
function compilePlan(spec) {
  if (spec === null || typeof spec !== 'object' || Array.isArray(spec)) throw new Error('plan must be an object');
  const p = {};
  for (const k of Object.keys(spec)) {
    if (k === 'seed') continue;
    if (!FAULT_KINDS.includes(k)) throw new Error(`unknown fault kind "${k}" (known: ${FAULT_KINDS.join(', ')})`);
    let s = spec[k];
    if (s === false || s === null) continue;
    if (k === 'down' && s === true) s = {};
    if (k === 'delay_ms' && typeof s === 'number') s = { ms: s };
    if (typeof s !== 'object' || Array.isArray(s)) throw new Error(`${k} must be an object`);
    const rate = s.rate === undefined ? 1 : Number(s.rate);
    if (!(rate >= 0 && rate <= 1)) throw new Error(`${k}.rate must be within 0..1`);
    const count = s.count === undefined || s.count === null ? Infinity : Number(s.count);
    if (!(count >= 0)) throw new Error(`${k}.count must be >= 0`);
    const m = s.match || null;
    if (m !== null && (typeof m !== 'object' || (m.format !== undefined && !['ce', 'ce-batch', 'kafka'].includes(m.format))))
      throw new Error(`${k}.match must be {format: ce|ce-batch|kafka, topic, path_prefix}`);
    const f = { kind: k, rate, remaining: count, match: m };
    if (k === 'status' || k === 'down' || k === 'accept_then_fail') {
      f.code = Number(s.code || (k === 'accept_then_fail' ? 500 : 503));
      if (!(f.code >= 100 && f.code <= 599)) throw new Error(`${k}.code must be an HTTP status`);
      f.retry_after = s.retry_after === undefined || s.retry_after === null ? null : String(s.retry_after);
      f.body = s.body === undefined ? null : s.body;
    } else if (k === 'delay_ms') {
      f.ms = Number(s.ms);
      if (!(f.ms >= 0 && f.ms <= 600000)) throw new Error('delay_ms.ms must be within 0..600000');
    } else if (k === 'kafka_record_errors') {
      f.code = Number(s.code === undefined ? 2 : s.code);
      if (!KAFKA_RECORD_CODES.has(f.code))
        throw new Error(`kafka_record_errors.code must be one of ${[...KAFKA_RECORD_CODES].join(', ')}`);
      f.scope = s.scope === undefined ? 'partition' : s.scope;
      if (f.scope !== 'partition' && f.scope !== 'record')
        throw new Error('kafka_record_errors.scope must be "partition" or "record"');
      f.ids = null;
      if (s.ids !== undefined && s.ids !== null) {
        if (!Array.isArray(s.ids) || s.ids.length === 0 || !s.ids.every((x) => typeof x === 'string' && x !== ''))
          throw new Error('kafka_record_errors.ids must be a non-empty array of record ids');
        f.ids = new Set(s.ids);
      }
    }
    if (k !== 'kafka_record_errors' && (s.scope !== undefined || s.ids !== undefined))
      throw new Error(`${k}: scope and ids are options of kafka_record_errors only`);
    p[k] = f;
  }
  const rng = spec.seed === undefined ? Math.random : mulberry32(Number(spec.seed) | 0);
  for (const k in p) p[k].rng = rng;
  return p;
}
function matches(m, ctx) {
  if (m.format !== undefined && m.format !== ctx.format && !(m.format === 'ce' && ctx.format === 'ce-batch')) return false;
  if (m.path_prefix !== undefined && !ctx.path.startsWith(m.path_prefix)) return false;
  if (m.topic !== undefined && !ctx.hasTopic(m.topic)) return false;
  return true;
}
// Decide whether fault part f fires for this request (or record); consumes one from its count and
// tells count(kind, 1).
function fire(f, ctx, count) {
  if (f === undefined || f.remaining <= 0) return false;
  if (f.match !== null && !matches(f.match, ctx)) return false;
  if (f.rate < 1 && f.rng() >= f.rate) return false;
  f.remaining--;
  count(f.kind, 1);
  return true;
}
// What GET /_sink/faults shows: the plan as given and what is left of each part.
function planView(plan, planSpec) {
  if (!plan) return null;
  const out = { spec: planSpec, remaining: {} };
  for (const k in plan) out.remaining[k] = plan[k].remaining === Infinity ? null : plan[k].remaining;
  return out;
}

// kafka_record_errors over the records of one request (v2 and v3): codes[i] is the error code of
// record i, 0 when it is to be written. parts[i] is its partition, ids[i] its id as recorded (or
// null: no id the plan's "ids" could name).
// - scope "record": each record fails on its own (rate, count), the others are written.
// - scope "partition" (default): as in Kafka, where the records of one partition travel in one
//   producer batch that fails as a whole: once record k fails, every later record of its
//   partition in this request fails with the same code (without drawing on rate or count), and is
//   not written. Earlier records of the partition are written (Confluent's proxy: they may have
//   left in an earlier batch), except with wholePartition (Redpanda's proxy builds one batch per
//   partition, so the whole partition fails).
// count(kind, n) is told the records the plan hit (kafka_record_errors) and the records that
// failed with them (kafka_partition_failed).
function recordFailures(kre, ctx, parts, ids, wholePartition, count) {
  const n = parts.length, codes = new Array(n).fill(0);
  if (kre === undefined) return codes;
  const failed = new Map(); // partition -> code of its failed batch (scope partition)
  const partition = kre.scope === 'partition';
  let followers = 0;
  for (let i = 0; i < n; i++) {
    if (partition && failed.has(parts[i])) { codes[i] = failed.get(parts[i]); followers++; continue; }
    if (kre.ids !== null && (ids[i] === null || !kre.ids.has(ids[i]))) continue;
    if (fire(kre, ctx, count)) { codes[i] = kre.code; if (partition) failed.set(parts[i], kre.code); }
  }
  if (partition && wholePartition && failed.size > 0) {
    for (let i = 0; i < n; i++) if (codes[i] === 0 && failed.has(parts[i])) { codes[i] = failed.get(parts[i]); followers++; }
  }
  if (followers > 0) count('kafka_partition_failed', followers);
  return codes;
}

module.exports = { KAFKA_RECORD_TEXT, compilePlan, fire, planView, recordFailures };
