#!/usr/bin/env node
// h2c-plain server in Node.js: the built-in http2 module, cleartext with prior knowledge.
// The request path says what to answer ("/r/<status>/<size>/<mode>", scenarios/plan.md),
// as the Go and Python HTTP/1 servers do; "ch" answers without content-length, in pieces.
// Control protocol: scenarios/README.md.
'use strict';

const http2 = require('http2');
const readline = require('readline');
const { parseArgs } = require('util');
const plan = require('./http_plan');

const MAX_REQ_BODY = 4 * plan.MAX_BODY;

function fail(code, message) {
  process.stderr.write(`h2c_server.js: ${message}\n`);
  process.exit(code);
}

function reject(stream, reason) {
  if (stream.destroyed) return;
  stream.respond({ ':status': 400, 'content-type': 'text/plain',
    'content-length': String(Buffer.byteLength(reason)) });
  stream.end(reason);
}

function answer(stream, headers, reqBytes) {
  const route = plan.parseRoute(headers[':path'] || '');
  if (route === null) return reject(stream, 'bad route');
  const head = headers[':method'] === 'HEAD';
  const out = { ':status': route.status, 'content-type': 'application/octet-stream',
    'x-req-bytes': String(reqBytes) };
  if (headers['x-probebench-id'] !== undefined) out['x-probebench-id'] = headers['x-probebench-id'];
  if (route.status === 301) out.location = plan.LOCATION;
  if (plan.NO_BODY.has(route.status)) {
    stream.respond(out, { endStream: true }); // 204, 304: no length header, no body
    return;
  }
  if (route.mode === 'cl' || head) {
    out['content-length'] = String(route.size);
    if (head || route.size === 0) {
      stream.respond(out, { endStream: true });
      return;
    }
    stream.respond(out);
    stream.end(plan.body(route.size));
    return;
  }
  stream.respond(out); // streamed: no content-length, one write per piece
  const data = plan.body(route.size);
  for (let k = 0; k < data.length; k += plan.CHUNK) stream.write(data.subarray(k, k + plan.CHUNK));
  stream.end();
}

function main() {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: {
      proto: { type: 'string', default: 'h2c' },
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '0' },
      'max-seconds': { type: 'string', default: '3600' },
    },
  });
  if (values.proto !== 'h2c') fail(2, `the Node h2c server serves --proto h2c, not ${values.proto}`);
  const server = http2.createServer();
  server.on('stream', (stream, headers) => {
    stream.on('error', () => {}); // a reset stream: nothing left to answer
    let total = 0;
    let bad = null;
    stream.on('data', (chunk) => {
      if (bad === null && !plan.matchesPattern(chunk, total)) bad = 'request body differs from the pattern';
      total += chunk.length;
      if (bad === null && total > MAX_REQ_BODY) bad = 'request body too large';
    });
    stream.on('end', () => (bad !== null ? reject(stream, bad) : answer(stream, headers, total)));
  });
  server.on('error', (e) => fail(e.code === 'EADDRINUSE' || e.code === 'EACCES' ? 3 : 1,
    `cannot bind ${values.host}:${values.port}: ${e.message}`));
  const stop = () => {
    server.close();
    process.exit(0);
  };
  server.listen(Number(values.port), values.host, () => {
    process.stdout.write(`READY ${server.address().port}\n`);
  });
  // The runner closing our stdin is the stop signal.
  readline.createInterface({ input: process.stdin }).on('close', stop);
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  setTimeout(stop, Number(values['max-seconds']) * 1000).unref();
}

main();
