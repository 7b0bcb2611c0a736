#!/usr/bin/env node
// Judge what pg_courier sent with the official receiver libraries, over the raw requests the test
// sink recorded (config record_raw; GET /_sink/raw):
//   node judge.js cloudevents <sink control base URL>
//       every request must pass the CloudEvents SDK: HTTP.toEvent, then validate() on each event;
//       successful and refused requests alike (a refused request was sent all the same).
//   node judge.js webhooks <sink control base URL> <secret>
//       every request must verify with the Standard Webhooks package (Webhook.verify) and <secret>.
// Prints one JSON object: {requests, events, failures: [{i, url, status, error}], ids: [...]}
// (ids: each request's webhook-id, or its CloudEvents ids) and exits 0; 2 on usage errors.
'use strict';
const http = require('http');
const { HTTP } = require('cloudevents');
const { Webhook } = require('standardwebhooks');

const [mode, base, secret] = process.argv.slice(2);
if (!['cloudevents', 'webhooks'].includes(mode) || !base || (mode === 'webhooks' && !secret)) {
  process.stderr.write('usage: judge.js cloudevents|webhooks <control URL> [secret]\n');
  process.exit(2);
}

function get(url) {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        try { resolve(JSON.parse(Buffer.concat(chunks).toString('utf8'))); } catch (e) { reject(e); }
      });
    }).on('error', reject);
  });
}

// Headers as a receiver framework hands them over: lower-case names, repeated ones joined.
function headersOf(r) {
  const h = {};
  for (let i = 0; i + 1 < r.raw_headers.length; i += 2) {
    const k = r.raw_headers[i].toLowerCase();
    h[k] = h[k] === undefined ? r.raw_headers[i + 1] : `${h[k]}, ${r.raw_headers[i + 1]}`;
  }
  return h;
}

function judgeCloudEvents(r, out) {
  const got = HTTP.toEvent({ headers: headersOf(r), body: r.body });
  const events = Array.isArray(got) ? got : [got];
  for (const ev of events) { ev.validate(); out.events++; out.ids.push(ev.id); }
}

function judgeWebhook(r, out) {
  const h = headersOf(r);
  new Webhook(secret).verify(r.body, h);
  out.events++;
  out.ids.push(h['webhook-id']);
}

(async () => {
  const raw = await get(`${base.replace(/\/+$/, '')}/_sink/raw`);
  const out = { requests: raw.length, events: 0, failures: [], ids: [] };
  raw.forEach((r, i) => {
    try {
      if (r.body === null) throw new Error('body not recorded (over the sink\'s limit)');
      (mode === 'cloudevents' ? judgeCloudEvents : judgeWebhook)(r, out);
    } catch (e) {
      out.failures.push({ i, url: r.url, status: r.status, error: String(e && e.message || e),
        errors: e && e.errors ? JSON.stringify(e.errors).slice(0, 500) : undefined });
    }
  });
  process.stdout.write(JSON.stringify(out) + '\n');
})().catch((e) => { process.stderr.write(`judge: ${e.stack || e}\n`); process.exit(1); });
