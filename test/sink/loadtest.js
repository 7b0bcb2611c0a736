#!/usr/bin/env node
// Bounded load generator for the test sink (loopback only): sends a fixed number of requests over
// keep-alive connections, then checks the sink's stats and prints throughput. Spawns its own sink
// (a separate process, so client and server get a core each) unless --port/--control-port are given.
//
//   node test/sink/loadtest.js --mode kafka --requests 200 --batch 500 --concurrency 4
//   node test/sink/loadtest.js --mode ce --requests 50000 --concurrency 16 [--client agent]
'use strict';
const http = require('http');
const net = require('net');
const path = require('path');
const { spawn } = require('child_process');

const o = { mode: 'kafka', requests: 0, batch: 500, concurrency: 8, client: 'raw', recordData: 1,
  port: 0, controlPort: 0, checks: 1 };
for (let i = 2; i < process.argv.length; i++) {
  const k = process.argv[i].replace(/^--/, '').replace(/-(.)/g, (_, c) => c.toUpperCase());
  const v = process.argv[++i];
  if (!(k in o)) { console.error(`unknown option --${k}`); process.exit(2); }
  o[k] = typeof o[k] === 'number' ? Number(v) : v;
}
if (!o.requests) o.requests = o.mode === 'ce' ? 50000 : 200;
if (o.mode === 'ce') o.batch = 1;
if (!['kafka', 'ce', 'ce-batch'].includes(o.mode)) { console.error('mode: kafka|ce|ce-batch'); process.exit(2); }
const HOST = '127.0.0.1';

function ctl(method, p, body) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? '' : JSON.stringify(body);
    const r = http.request({ host: HOST, port: o.controlPort, method, path: p,
      headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) } }, (res) => {
      let s = ''; res.setEncoding('utf8'); res.on('data', (c) => { s += c; }); res.on('end', () => resolve(JSON.parse(s)));
    });
    r.on('error', reject); r.end(data);
  });
}

// Request i on connection c: keys are private to a connection so per-key order holds under concurrency.
const KEYS = 50;
const seqByKey = new Map();
function makeRequest(c, i) {
  const ts = Date.now();
  const recs = [];
  for (let j = 0; j < o.batch; j++) {
    const key = `k${c}-${(i * o.batch + j) % KEYS}`;
    const n = (seqByKey.get(key) || 0) + 1; seqByKey.set(key, n);
    recs.push({ key, id: `c${c}-${i}-${j}`, n, ts });
  }
  if (o.mode === 'kafka') {
    const body = JSON.stringify({ records: recs.map((r) => ({ key: r.key, value: { event_id: r.id, n: r.n, ts: r.ts, payload: 'x'.repeat(40) } })) });
    return { path: '/kafka/topics/orders', body, headers: { 'Content-Type': 'application/vnd.kafka.json.v2+json', Accept: 'application/vnd.kafka.v2+json' } };
  }
  const evs = recs.map((r) => ({ specversion: '1.0', id: r.id, source: '/pg_courier/db/outbox', type: 'orders', subject: r.key,
    time: new Date(ts).toISOString(), datacontenttype: 'application/json', data: { n: r.n, ts: r.ts, payload: 'x'.repeat(40) } }));
  if (o.mode === 'ce') {
    return { path: '/hook', body: JSON.stringify(evs[0]), headers: { 'Content-Type': 'application/cloudevents+json', 'Idempotency-Key': `"${evs[0].id}"` } };
  }
  return { path: '/hook', body: JSON.stringify(evs), headers: { 'Content-Type': 'application/cloudevents-batch+json' } };
}

// Raw keep-alive client: one request in flight per connection, minimal response parsing, so the
// measurement reflects the sink rather than Node's client-side HTTP machinery.
function rawWorker(c, next, done) {
  const sock = net.connect(o.port, HOST);
  sock.setNoDelay(true);
  let buf = Buffer.alloc(0), i;
  const fire = () => {
    i = next();
    if (i < 0) { sock.end(); return done(null); }
    const r = makeRequest(c, i);
    let head = `POST ${r.path} HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: ${Buffer.byteLength(r.body)}\r\n`;
    for (const h in r.headers) head += `${h}: ${r.headers[h]}\r\n`;
    sock.write(head + '\r\n' + r.body);
  };
  sock.on('connect', fire);
  sock.on('data', (d) => {
    buf = buf.length ? Buffer.concat([buf, d]) : d;
    const he = buf.indexOf('\r\n\r\n');
    if (he < 0) return;
    const head = buf.toString('latin1', 0, he);
    const m = /content-length:\s*(\d+)/i.exec(head);
    const total = he + 4 + (m ? Number(m[1]) : 0);
    if (buf.length < total) return;
    const status = Number(head.slice(9, 12));
    if (status < 200 || status > 299) { sock.destroy(); return done(new Error(`status ${status}: ${buf.toString('utf8', he + 4, total)}`)); }
    buf = buf.subarray(total);
    fire();
  });
  sock.on('error', done);
}
function agentWorker(agent) {
  return (c, next, done) => {
    const fire = () => {
      const i = next();
      if (i < 0) return done(null);
      const r = makeRequest(c, i);
      const req = http.request({ host: HOST, port: o.port, method: 'POST', path: r.path, agent,
        headers: Object.assign({ 'Content-Length': Buffer.byteLength(r.body) }, r.headers) }, (res) => {
        res.resume();
        res.on('end', () => (res.statusCode >= 300 ? done(new Error(`status ${res.statusCode}`)) : fire()));
      });
      req.on('error', done); req.end(r.body);
    };
    fire();
  };
}

async function main() {
  let child = null;
  if (!o.port) {
    child = spawn(process.execPath, [path.join(__dirname, 'sink.js')], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error('sink did not start')), 10000);
      child.stdout.on('data', (d) => {
        out += d;
        const p = /SINK LISTENING (\d+)/.exec(out), c = /SINK CONTROL (\d+)/.exec(out);
        if (p && c) { o.port = +p[1]; o.controlPort = +c[1]; clearTimeout(timer); resolve(); }
      });
    });
  }
  await ctl('POST', '/_sink/reset');
  await ctl('POST', '/_sink/config', o.checks ? { record_data: !!o.recordData, order_field: 'n', id_field: 'event_id', latency_field: 'ts' }
    : { record_data: !!o.recordData, order_field: null, id_field: null, latency_field: null });
  let issued = 0;
  const next = () => (issued < o.requests ? issued++ : -1);
  const worker = o.client === 'agent' ? agentWorker(new http.Agent({ keepAlive: true, maxSockets: o.concurrency })) : rawWorker;
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: o.concurrency }, (_, c) =>
    new Promise((resolve, reject) => worker(c, next, (e) => (e ? reject(e) : resolve())))));
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  const st = await ctl('GET', '/_sink/stats');
  const expect = o.requests * o.batch;
  const ok = st.accepted === expect && st.duplicates === 0 && st.order_violations === 0 && st.internal_errors === 0;
  console.log(`mode=${o.mode} client=${o.client} requests=${o.requests} batch=${o.batch} concurrency=${o.concurrency} ` +
    `record_data=${o.recordData} checks=${o.checks}`);
  console.log(`  ${secs.toFixed(2)} s, ${(o.requests / secs).toFixed(0)} req/s, ${(expect / secs).toFixed(0)} records/s, ` +
    `client cpu ${((cpu.user + cpu.system) / 1e4 / secs).toFixed(0)}%`);
  console.log(`  sink: accepted=${st.accepted} unique=${st.unique} duplicates=${st.duplicates} order_violations=${st.order_violations} ` +
    `rss=${(st.rss_bytes / 1048576).toFixed(0)}MiB ${ok ? 'OK' : 'MISMATCH'}`);
  if (child) child.kill('SIGTERM');
  process.exit(ok ? 0 : 1);
}
main().catch((e) => { console.error(e); process.exit(1); });
