#!/usr/bin/env node
// gRPC scenario server in Node.js (@grpc/grpc-js).
//
// Serves probebench.Bench (scenarios/proto/bench.proto): every request says how many
// responses of what size to send and which status to end with. Control protocol:
// scenarios/README.md (READY <port>; exit 3 when the port cannot be bound; runs until
// stdin closes or SIGTERM).
'use strict';

const path = require('path');
const { parseArgs } = require('util');
const { canonical } = require('./plan');

const MAX_MSG_SIZE = 8 << 20;
const STOP_GRACE_MS = 2000;
const FILLER = Buffer.alloc(MAX_MSG_SIZE, 0);
for (let i = 0; i < FILLER.length; i++) FILLER[i] = 97 + (i % 26); // bench.Payload's pattern

function fail(code, message) {
  process.stderr.write(`grpc_server.js: ${message}\n`);
  process.exit(code);
}

function main() {
  let values;
  try {
    ({ values } = parseArgs({
      args: process.argv.slice(2),
      options: {
        proto: { type: 'string', default: 'grpc' },
        host: { type: 'string', default: '127.0.0.1' },
        port: { type: 'string' },
        mode: { type: 'string' }, // ignored: the server serves every mode
        'max-lifetime': { type: 'string', default: '3600' },
      },
    }));
  } catch (e) {
    fail(2, e.message);
  }
  if (values.proto !== 'grpc') fail(2, `only --proto grpc is served by the Node targets, not ${values.proto}`);
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0) fail(2, 'need --port');

  const grpc = require('@grpc/grpc-js');
  // grpc-js logs its own line for a failed bind; the contract allows one line, ours.
  grpc.setLogVerbosity(grpc.logVerbosity.NONE);
  const protoLoader = require('@grpc/proto-loader');
  const def = protoLoader.loadSync(path.join(__dirname, '..', 'proto', 'bench.proto'),
    { keepCase: true, longs: Number, defaults: true });
  const resp = (id, seq, size) => canonical({ id, seq, payload: FILLER.subarray(0, size) });
  const status = (req) => (req && req.status_code
    ? { code: req.status_code, details: req.status_message } : null);

  const handlers = {
    Unary(call, cb) {
      const err = status(call.request);
      if (err) cb(err);
      else cb(null, resp(call.request.id, 0, call.request.resp_size));
    },
    ServerStream(call) {
      const req = call.request;
      for (let seq = 0; seq < req.resp_count; seq++) call.write(resp(req.id, seq, req.resp_size));
      const err = status(req);
      if (err) call.emit('error', err); // grpc-js ends the call with this status
      else call.end();
    },
    ClientStream(call, cb) {
      let first = null;
      call.on('data', (req) => { if (first === null) first = req; });
      call.on('end', () => {
        const err = status(first);
        if (err) cb(err);
        else cb(null, first ? resp(first.id, 0, first.resp_size) : resp(0, 0, 0));
      });
    },
    Bidi(call) {
      let first = null;
      let seq = 0;
      call.on('data', (req) => {
        if (first === null) first = req;
        for (let k = 0; k < req.resp_count; k++) call.write(resp(req.id, seq++, req.resp_size));
      });
      call.on('end', () => {
        const err = status(first);
        if (err) call.emit('error', err);
        else call.end();
      });
    },
  };

  const server = new grpc.Server({
    'grpc.max_receive_message_length': MAX_MSG_SIZE,
    'grpc.max_send_message_length': MAX_MSG_SIZE,
  });
  server.addService(def['probebench.Bench'], handlers);
  const address = values.host.includes(':') ? `[${values.host}]:${port}` : `${values.host}:${port}`;
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    const force = setTimeout(() => { server.forceShutdown(); process.exit(0); }, STOP_GRACE_MS);
    server.tryShutdown(() => { clearTimeout(force); process.exit(0); });
  };
  // Before READY: a runner may send SIGTERM as soon as it reads that line.
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err, bound) => {
    if (err) fail(3, `cannot bind ${address}: ${err.message}`);
    process.stdout.write(`READY ${bound}\n`);
    process.stdin.on('data', () => {});
    process.stdin.on('end', stop); // the runner closed our stdin
    process.stdin.resume();
    setTimeout(() => {
      process.stderr.write('grpc_server.js: --max-lifetime reached, exiting\n');
      stop();
    }, Number(values['max-lifetime']) * 1000).unref();
  });
}

main();
