#!/usr/bin/env node
// h2c-plain client in Node.js: the built-in http2 module, cleartext with prior knowledge.
// Plays the seeded plan of scenarios/plan.md (proto h2c) over C sessions, one TCP
// connection each, one request after another per session as on an HTTP/1.1 keep-alive
// connection; checks every response and writes workload.jsonl, as the Go client does.
// Control protocol: scenarios/README.md.
'use strict';

const fs = require('fs');
const http2 = require('http2');
const readline = require('readline');
const { parseArgs } = require('util');
const plan = require('./http_plan');

const monoNs = () => process.hrtime.bigint(); // CLOCK_MONOTONIC on Linux

function fail(code, message) {
  process.stderr.write(`h2c_client.js: ${message}\n`);
  process.exit(code);
}

function connect(authority) {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`http://${authority}`);
    session.once('connect', () => resolve(session));
    session.once('error', reject);
  });
}

/** One request on session; resolves with its status, response headers and body. */
function exchange(session, req, authority) {
  const hasBody = plan.BODY_METHODS.has(req.method);
  const headers = { ':method': req.method, ':path': req.path, ':scheme': 'http',
    ':authority': authority, 'x-probebench-id': String(req.id) };
  for (const [k, v] of req.headers) headers[k] = v;
  if (hasBody && !req.req_chunked) headers['content-length'] = String(req.req_bytes);
  return new Promise((resolve, reject) => {
    const s = session.request(headers, { endStream: !hasBody });
    let resp = null;
    const chunks = [];
    s.on('response', (h) => { resp = h; });
    s.on('data', (c) => chunks.push(c));
    s.on('error', reject);
    s.on('end', () => (resp === null ? reject(new Error('stream ended without a response'))
      : resolve({ headers: resp, body: Buffer.concat(chunks) })));
    if (!hasBody) return;
    const data = plan.body(req.req_bytes);
    if (req.req_chunked) {
      for (let k = 0; k < data.length; k += plan.CHUNK) s.write(data.subarray(k, k + plan.CHUNK));
      s.end();
    } else {
      s.end(data);
    }
  });
}

function verify(req, r) {
  const problems = [];
  const status = Number(r.headers[':status']);
  if (status !== req.status) problems.push(`status ${status} != ${req.status}`);
  if (!r.body.equals(plan.body(req.resp_bytes))) {
    problems.push(`body of ${r.body.length} bytes != pattern of ${req.resp_bytes}`);
  }
  if (r.headers['x-req-bytes'] !== String(req.req_bytes)) {
    problems.push(`x-req-bytes ${r.headers['x-req-bytes']} != ${req.req_bytes}`);
  }
  if (r.headers['x-probebench-id'] !== String(req.id)) problems.push('x-probebench-id not echoed');
  if (req.status === 301 && r.headers.location !== plan.LOCATION) {
    problems.push('301 without the expected Location');
  }
  if (problems.length) throw new Error(`id ${req.id} ${req.method}: ${problems.join('; ')}`);
}

class Lane {
  constructor() {
    this.session = null;
    this.connSeq = 0;
    this.records = [];
  }

  async run(args, reqs, phase) {
    const authority = `${args.host}:${args.port}`;
    if (this.session === null) this.session = await connect(authority);
    const sock = this.session.socket;
    for (const req of reqs) {
      const tStart = monoNs();
      const r = await exchange(this.session, req, authority);
      const tEnd = monoNs();
      verify(req, r);
      this.records.push({
        id: req.id, protocol: 'h2c', client_ip: sock.localAddress, client_port: sock.localPort,
        server_ip: sock.remoteAddress, server_port: sock.remotePort, conn_seq: this.connSeq,
        method: req.method, path: req.path, status: Number(r.headers[':status']),
        req_bytes: req.req_bytes, resp_bytes: r.body.length, req_messages: null,
        resp_messages: null, grpc_status: null, t_start_ns: Number(tStart),
        t_end_ns: Number(tEnd), phase,
      });
      this.connSeq += 1;
    }
  }
}

/** Resolves at a line "GO" on stdin, rejects at stdin's end before it. Listening from
 * the start: a GO written early (or stdin already at its end) is not missed. */
function goSignal() {
  let settle;
  const p = new Promise((resolve, reject) => { settle = { resolve, reject }; });
  p.catch(() => {}); // handled where awaited; not an unhandled rejection before then
  let seen = false;
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    if (!seen && line.trim() === 'GO') {
      seen = true;
      settle.resolve();
    }
  });
  rl.on('close', () => { if (!seen) settle.reject(new Error('stdin closed before GO')); });
  return p;
}

async function main() {
  // "--seed -3": parseArgs would take a negative seed for an option; join it as "--seed=-3"
  const argv = process.argv.slice(2).flatMap((a, i, all) => (a === '--seed' && i + 1 < all.length
    ? [`--seed=${all[i + 1]}`] : (all[i - 1] === '--seed' ? [] : [a])));
  const { values } = parseArgs({
    args: argv,
    options: {
      proto: { type: 'string', default: 'h2c' },
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '0' },
      exchanges: { type: 'string', default: '100' },
      seed: { type: 'string', default: '1' },
      connections: { type: 'string', default: '1' },
      warmup: { type: 'string', default: '0' },
      workload: { type: 'string' },
      deadline: { type: 'string', default: '120' },
      'plan-only': { type: 'boolean', default: false },
    },
  });
  if (values.proto !== 'h2c') fail(2, `the Node h2c client plays --proto h2c, not ${values.proto}`);
  const args = { ...values, port: Number(values.port), connections: Number(values.connections),
    warmup: Number(values.warmup), exchanges: Number(values.exchanges) };
  const p = plan.makePlan(args.exchanges, BigInt(values.seed), 'h2c');
  if (values['plan-only']) {
    process.stdout.write(p.map((r) => JSON.stringify(r) + '\n').join(''));
    return;
  }
  if (!args.workload || !(args.port > 0) || !(args.connections >= 1) || !(args.warmup >= 0)) {
    fail(2, 'need --workload, --port, --connections >= 1, --warmup >= 0');
  }
  setTimeout(() => fail(1, 'deadline passed'), Number(values.deadline) * 1000).unref();
  // dealt round-robin by id over the lanes; the first warmup*lanes ids are the warm-up
  const nWarm = Math.min(p.length, args.warmup * args.connections);
  const lanes = Array.from({ length: args.connections }, () => new Lane());
  const phase = (name, keep) => Promise.all(lanes.map((l, k) => l.run(args,
    p.filter((r) => r.id % args.connections === k && keep(r.id)), name)));
  const go = args.warmup > 0 ? goSignal() : null;
  try {
    if (go !== null) {
      await phase('warmup', (id) => id < nWarm);
      process.stdout.write('WARM\n');
      await go;
    }
    await phase('main', (id) => id >= nWarm);
  } catch (e) {
    fail(1, e.message || String(e));
  }
  const records = lanes.flatMap((l) => l.records).sort((a, b) => a.id - b.id);
  fs.appendFileSync(args.workload, records.map((r) => JSON.stringify(r) + '\n').join(''));
  for (const l of lanes) if (l.session) l.session.close();
  process.stdout.write(`DONE ${records.length}\n`);
  process.exit(0);
}

main();
