#!/usr/bin/env node
// gRPC scenario client in Node.js (@grpc/grpc-js).
//
// Plays the seeded call plan of scenarios/plan-grpc.md over C channels (one HTTP/2
// connection each), a few calls in flight per channel, checks every call's outcome
// against the plan and writes workload.jsonl. Control protocol: scenarios/README.md.
'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const { parseArgs } = require('util');
const { MODES, METADATA_KEYS, makePlan, callJson, bidiShare, canonical } = require('./plan');

const STARTED = process.hrtime.bigint();
const MAX_MSG_SIZE = 8 << 20; // the plan sends messages of >= 1 MiB
const CALL_TIMEOUT_MS = 30000; // per call; the overall --deadline is the real bound
const FILLER = Buffer.alloc(MAX_MSG_SIZE, 0);
for (let i = 0; i < FILLER.length; i++) FILLER[i] = 97 + (i % 26); // as the Python/Go targets

const WIRE_SIZE = Symbol('wire size');

class CallFailed extends Error {}

function fail(code, message) {
  process.stderr.write(`grpc_client.js: ${message}\n`);
  process.exit(code);
}

const monoNs = () => process.hrtime.bigint(); // CLOCK_MONOTONIC on Linux

/** Local ports of this process's established TCP connections to serverPort. grpc-js does
 * not expose a channel's socket: read the kernel's tables, keep our own sockets' inodes. */
function ownTcpPorts(serverPort) {
  const inodes = new Set();
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    let target;
    try {
      target = fs.readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // closed since readdir
    }
    if (target.startsWith('socket:[')) inodes.add(target.slice(8, -1));
  }
  const ports = new Set();
  for (const table of ['/proc/self/net/tcp', '/proc/self/net/tcp6']) {
    let lines;
    try {
      lines = fs.readFileSync(table, 'utf8').split('\n').slice(1);
    } catch {
      continue;
    }
    for (const line of lines) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10) continue;
      const remotePort = parseInt(f[2].split(':').pop(), 16);
      if (f[3] === '01' && remotePort === serverPort && inodes.has(f[9])) {
        ports.add(parseInt(f[1].split(':').pop(), 16));
      }
    }
  }
  return ports;
}

function loadService() {
  const grpc = require('@grpc/grpc-js');
  const protoLoader = require('@grpc/proto-loader');
  const proto = path.join(__dirname, '..', 'proto', 'bench.proto');
  const def = protoLoader.loadSync(proto, { keepCase: true, longs: Number, defaults: true });
  // Each response keeps its size on the wire: re-encoding a decoded message need not give it.
  const service = {};
  for (const [name, m] of Object.entries(def['probebench.Bench'])) {
    service[name] = {
      ...m,
      responseDeserialize: (buf) => {
        const o = m.responseDeserialize(buf);
        Object.defineProperty(o, WIRE_SIZE, { value: buf.length });
        return o;
      },
    };
  }
  return { grpc, service };
}

class Client {
  constructor(args, plan) {
    const { grpc, service } = loadService();
    this.grpc = grpc;
    this.service = service;
    this.Stub = grpc.makeGenericClientConstructor(service, 'Bench');
    this.args = args;
    this.plan = plan;
    // Keep a little of --deadline for teardown, so the process stays within it.
    const slackMs = Math.min(1000, 100 * args.deadline);
    this.deadlineNs = STARTED + BigInt(Math.round(args.deadline * 1e3 - slackMs)) * 1000000n;
    this.target = `${args.host}:${args.port}`;
    this.conns = [];
    this.nextId = 0;
    this.errors = [];
    this.lines = [];
  }

  remainingMs() {
    const left = Number(this.deadlineNs - monoNs()) / 1e6;
    if (left <= 0) throw new CallFailed('deadline passed');
    return left;
  }

  async openChannel(idx) {
    const stub = new this.Stub(this.target, this.grpc.credentials.createInsecure(), {
      // Its own subchannel, hence its own TCP connection (grpc-js shares one by default).
      'grpc.use_local_subchannel_pool': 1,
      'grpc.max_receive_message_length': MAX_MSG_SIZE,
      'grpc.max_send_message_length': MAX_MSG_SIZE,
    });
    const before = ownTcpPorts(this.args.port);
    await new Promise((resolve, reject) => {
      const until = Date.now() + Math.min(10000, this.remainingMs());
      stub.waitForReady(until, (err) => (err
        ? reject(new CallFailed(`connection ${idx} to ${this.target} not ready: ${err.message}`))
        : resolve()));
    });
    const fresh = [...ownTcpPorts(this.args.port)].filter((p) => !before.has(p));
    // Exactly one new connection is this channel's; anything else is unknown (null).
    return { idx, stub, port: fresh.length === 1 ? fresh[0] : null, seq: 0 };
  }

  request(call, j) {
    const respCount = this.args.mode === 'bidi' ? bidiShare(j, call.req_count, call.resp_count)
      : call.resp_count;
    return canonical({
      id: call.id,
      payload: FILLER.subarray(0, call.req_size),
      resp_count: respCount,
      resp_size: call.resp_size,
      status_code: call.status_code,
      status_message: call.status_message,
    });
  }

  /** Runs one call; resolves to its final [code, message] and its tally. */
  exchange(conn, call) {
    const md = new this.grpc.Metadata();
    for (const k of METADATA_KEYS) md.add(k, call.metadata[k]);
    const opts = { deadline: Date.now() + Math.min(CALL_TIMEOUT_MS, this.remainingMs()) };
    const svc = this.service;
    // Serialised sizes, as the wire carries them (what follows each 5-byte prefix).
    const tally = { reqMessages: 0, reqBytes: 0, respMessages: 0, respBytes: 0 };
    const sent = (m, method) => {
      tally.reqMessages += 1;
      tally.reqBytes += svc[method].requestSerialize(m).length;
    };
    const received = (m) => {
      tally.respMessages += 1;
      tally.respBytes += m[WIRE_SIZE];
    };
    const stub = conn.stub;
    const mode = this.args.mode;
    return new Promise((resolve) => {
      const done = (err) => resolve([err ? [err.code, err.details || ''] : [0, ''], tally]);
      if (mode === 'unary' || mode === 'client-stream') {
        const method = mode === 'unary' ? 'Unary' : 'ClientStream';
        const cb = (err, resp) => {
          if (!err) received(resp);
          done(err);
        };
        if (mode === 'unary') {
          const req = this.request(call, 0);
          sent(req, method);
          stub.Unary(req, md, opts, cb);
        } else {
          const stream = stub.ClientStream(md, opts, cb);
          for (let j = 0; j < call.req_count; j++) {
            const req = this.request(call, j);
            sent(req, method);
            stream.write(req);
          }
          stream.end();
        }
        return;
      }
      const method = mode === 'server-stream' ? 'ServerStream' : 'Bidi';
      let stream;
      if (mode === 'server-stream') {
        const req = this.request(call, 0);
        sent(req, method);
        stream = stub.ServerStream(req, md, opts);
      } else {
        stream = stub.Bidi(md, opts);
        for (let j = 0; j < call.req_count; j++) {
          const req = this.request(call, j);
          sent(req, method);
          stream.write(req);
        }
        stream.end();
      }
      let ended = false;
      stream.on('data', (resp) => {
        received(resp);
        if (tally.respMessages > call.resp_count) stream.cancel();
      });
      stream.on('error', (err) => {
        if (!ended) { ended = true; done(err); }
      });
      stream.on('status', (st) => {
        if (!ended && st.code === 0) { ended = true; done(null); }
      });
    });
  }

  async call(conn, callId, phase) {
    const call = this.plan[callId];
    const seq = conn.seq++;
    const tStart = monoNs();
    const [[code, message], tally] = await this.exchange(conn, call);
    const tEnd = monoNs();
    if (code !== call.status_code || message !== call.status_message) {
      throw new CallFailed(`call ${callId}: got status ${code} ${JSON.stringify(message)}, `
        + `planned ${call.status_code} ${JSON.stringify(call.status_message)}`);
    }
    if (tally.reqMessages !== call.req_count || tally.respMessages !== call.expect_resp_messages) {
      throw new CallFailed(`call ${callId}: ${tally.reqMessages}/${tally.respMessages} messages `
        + `sent/received, planned ${call.req_count}/${call.expect_resp_messages}`);
    }
    this.lines.push(JSON.stringify({
      id: call.id,
      protocol: 'h2c-grpc',
      client_ip: this.args.host,
      client_port: conn.port,
      server_ip: this.args.host,
      server_port: this.args.port,
      conn_seq: seq,
      conn: conn.idx,
      method: 'POST',
      path: call.method,
      status: 200,
      grpc_status: code,
      grpc_message: message,
      req_bytes: tally.reqBytes,
      resp_bytes: tally.respBytes,
      req_messages: tally.reqMessages,
      resp_messages: tally.respMessages,
      req_headers: call.metadata,
      // BigInt ns as JSON numbers (exact: the writer never goes through a double)
      t_start_ns: '@@' + tStart + '@@',
      t_end_ns: '@@' + tEnd + '@@',
      phase,
    }).replace(/"@@(\d+)@@"/g, '$1') + '\n');
  }

  flush() {
    if (this.lines.length) {
      fs.appendFileSync(this.args.workload, this.lines.join(''));
      this.lines = [];
    }
  }

  async worker(conn) {
    while (this.nextId < this.plan.length && this.errors.length === 0) {
      const id = this.nextId++;
      try {
        await this.call(conn, id, 'main');
      } catch (e) {
        this.errors.push(e.message || String(e));
        return;
      }
    }
  }

  async waitGo() {
    const rl = readline.createInterface({ input: process.stdin });
    try {
      const line = await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new CallFailed('deadline passed waiting for GO')),
          this.remainingMs());
        rl.once('line', (l) => { clearTimeout(timer); resolve(l); });
        rl.once('close', () => { clearTimeout(timer); reject(new CallFailed('stdin closed before GO')); });
      });
      if (line.trim() !== 'GO') throw new CallFailed(`expected GO on stdin, got ${JSON.stringify(line)}`);
    } finally {
      rl.close();
    }
  }

  async run() {
    const { args } = this;
    try {
      for (let i = 0; i < args.connections; i++) this.conns.push(await this.openChannel(i));
      const warm = Math.min(args.warmup * args.connections, this.plan.length);
      for (let i = 0; i < warm; i++) await this.call(this.conns[i % args.connections], i, 'warmup');
      this.nextId = warm;
      if (args.warmup > 0) {
        this.flush();
        process.stdout.write('WARM\n');
        await this.waitGo();
      }
      const workers = [];
      for (const c of this.conns) for (let k = 0; k < args.inflight; k++) workers.push(this.worker(c));
      let timer;
      const overtime = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new CallFailed('deadline passed with calls in flight')),
          this.remainingMs() + 1000);
      });
      try {
        await Promise.race([Promise.all(workers), overtime]);
      } finally {
        clearTimeout(timer);
      }
      if (this.errors.length) throw new CallFailed(this.errors[0]);
    } finally {
      this.flush();
      for (const c of this.conns) c.stub.close();
    }
  }
}

function parse(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      proto: { type: 'string', default: 'grpc' },
      mode: { type: 'string', default: 'unary' },
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '0' },
      exchanges: { type: 'string', default: '100' },
      seed: { type: 'string', default: '1' },
      connections: { type: 'string', default: '2' },
      warmup: { type: 'string', default: '0' },
      inflight: { type: 'string', default: '3' },
      workload: { type: 'string' },
      deadline: { type: 'string', default: '120' },
      'print-plan': { type: 'boolean', default: false },
    },
  });
  return {
    proto: values.proto,
    mode: values.mode,
    host: values.host,
    port: Number(values.port),
    exchanges: Number(values.exchanges),
    seed: BigInt(values.seed),
    connections: Number(values.connections),
    warmup: Number(values.warmup),
    inflight: Number(values.inflight),
    workload: values.workload,
    deadline: Number(values.deadline),
    printPlan: values['print-plan'],
  };
}

async function main() {
  let args;
  try {
    args = parse(process.argv.slice(2));
  } catch (e) {
    fail(2, e.message);
  }
  if (args.proto !== 'grpc') fail(2, `only --proto grpc is served by the Node targets, not ${args.proto}`);
  if (!(args.mode in MODES)) fail(2, `unknown mode ${JSON.stringify(args.mode)}`);
  const plan = makePlan(args.mode, args.exchanges, args.seed);
  if (args.printPlan) {
    process.stdout.write(plan.map((c) => callJson(c) + '\n').join(''));
    return;
  }
  if (!args.workload || !(args.port > 0) || args.connections < 1 || args.inflight < 1) {
    fail(2, 'need --workload, --port, --connections >= 1');
  }
  try {
    await new Client(args, plan).run();
  } catch (e) {
    fail(1, e.message || String(e));
  }
  process.stdout.write(`DONE ${args.exchanges}\n`);
  // grpc-js keeps timers of closed channels for a moment: leave now, as the other targets do.
  process.exit(0);
}

main();
