#!/usr/bin/env node
// Judge Kafka records with the official CloudEvents SDK's Kafka protocol binding, as a Kafka
// consumer would: reads the test sink's records (GET /_sink/events, each with its `kafka` part:
// key_bytes base64, headers [{name, value}], value) as a JSON array on stdin, runs Kafka.toEvent
// and validate() on each, and prints {checked, structured, valid, errors} (the first 5 errors).
// Exits 1 unless every record is a valid structured-mode CloudEvent.
'use strict';
const { Kafka, CloudEvent } = require('cloudevents');

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (c) => { input += c; });
process.stdin.on('end', () => {
  const records = JSON.parse(input);
  const out = { checked: 0, structured: 0, valid: 0, errors: [] };
  for (const r of records) {
    out.checked++;
    const k = r.kafka || {};
    const headers = {};
    for (const h of k.headers || []) headers[h.name.toLowerCase()] = h.value;
    const message = {
      key: k.key_bytes === null || k.key_bytes === undefined ? undefined : Buffer.from(k.key_bytes, 'base64').toString('utf8'),
      value: typeof k.value === 'string' ? k.value : JSON.stringify(k.value),
      headers,
      timestamp: String(Math.floor(r.t)),
    };
    try {
      if (!Kafka.isEvent(message)) throw new Error('No CloudEvent detected');
      const ev = Kafka.toEvent(message);
      if (!(ev instanceof CloudEvent)) throw new Error('not a single structured event');
      if ((headers['content-type'] || '').startsWith('application/cloudevents+json')) out.structured++;
      ev.validate();
      out.valid++;
    } catch (e) {
      if (out.errors.length < 5) out.errors.push(`${r.id}: ${e.message}${e.errors ? ' ' + JSON.stringify(e.errors) : ''}`);
    }
  }
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exit(out.valid === out.checked && out.structured === out.checked ? 0 : 1);
});
