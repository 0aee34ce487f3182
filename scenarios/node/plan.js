// The seeded gRPC call plan of scenarios/plan-grpc.md, in Node.js.
// Keep identical to scenarios/py/grpc_client.py (make_plan) and
// scenarios/go/grpc/bench/plan.go: `--print-plan` output is compared byte for byte.
'use strict';

const MASK64 = (1n << 64n) - 1n;

const MODES = {
  unary: '/probebench.Bench/Unary',
  'server-stream': '/probebench.Bench/ServerStream',
  'client-stream': '/probebench.Bench/ClientStream',
  bidi: '/probebench.Bench/Bidi',
};
// Codes a client library may synthesise itself (CANCELLED, DEADLINE_EXCEEDED) are left out.
const ERR_CODES = [3, 5, 7, 9, 13, 14];
const ERR_MESSAGES = [
  'quota exceeded for tenant acme (100% used)',
  'ressource introuvable : élément demandé',
  'ungültige Anfrage \u2013 bitte erneut versuchen',
  '権限がありません',
  'server busy; retry later ☕',
];
const TRACE_EVERY = 16;
const BIG_SIZE = 1 << 20;
const CLIENT_VERSION = 'probebench-grpc/0.1';
const METADATA_KEYS = [
  'x-probebench-id', 'x-tenant', 'x-client-version', 'x-trace-context', 'x-request-nonce',
];

/** splitmix64 on BigInt, as scenarios/py/workload.py's SplitMix64. */
class SplitMix64 {
  constructor(seed) {
    this.state = BigInt.asUintN(64, BigInt(seed));
  }

  next() {
    this.state = (this.state + 0x9E3779B97F4A7C15n) & MASK64;
    let z = this.state;
    z = ((z ^ (z >> 30n)) * 0xBF58476D1CE4E5B9n) & MASK64;
    z = ((z ^ (z >> 27n)) * 0x94D049BB133111EBn) & MASK64;
    return z ^ (z >> 31n);
  }
}

function count(d, allowZero) {
  const b = d % 100n;
  if (b < 10n) return 100 + Number((d >> 8n) % 41n);
  if (allowZero && b < 13n) return 0;
  return 1 + Number((d >> 8n) % 8n);
}

function size(d, n) {
  const b = d % 100n;
  if (n <= 4 && b < 5n) return BIG_SIZE + Number((d >> 8n) % 65536n);
  if (b < 15n) return 0;
  return Number((d >> 8n) % 2048n);
}

const hex16 = (v) => (v & MASK64).toString(16).padStart(16, '0');

function traceContext(t1, t2, t3) {
  const parts = [];
  for (let j = 0n; j < 7n; j++) parts.push(`k${j}=${hex16(t1 + j * t3)}`);
  return `00-${hex16(t1)}${hex16(t2)}-${hex16(t3)}-01;` + parts.join(',');
}

/** The n calls of one run (draw order and rules: scenarios/plan-grpc.md). */
function makePlan(mode, n, seed) {
  if (!(mode in MODES)) throw new Error(`unknown mode ${JSON.stringify(mode)}`);
  const rng = new SplitMix64(seed);
  const plan = [];
  let trace = '';
  for (let i = 0; i < n; i++) {
    if (i % TRACE_EVERY === 0) trace = traceContext(rng.next(), rng.next(), rng.next());
    const d = [];
    for (let k = 0; k < 7; k++) d.push(rng.next());
    let code = 0;
    let message = '';
    if (d[0] % 100n < 10n) {
      code = ERR_CODES[Number(d[1] % BigInt(ERR_CODES.length))];
      message = ERR_MESSAGES[Number((d[1] >> 32n) % BigInt(ERR_MESSAGES.length))];
    }
    const reqCount = mode === 'client-stream' || mode === 'bidi' ? count(d[2], false) : 1;
    const respCount = mode === 'server-stream' || mode === 'bidi' ? count(d[3], true) : 1;
    const expect = code && (mode === 'unary' || mode === 'client-stream') ? 0 : respCount;
    plan.push({
      id: i,
      method: MODES[mode],
      req_count: reqCount,
      resp_count: respCount,
      req_size: size(d[4], reqCount),
      resp_size: size(d[5], respCount),
      status_code: code,
      status_message: message,
      expect_resp_messages: expect,
      metadata: {
        'x-probebench-id': String(i),
        'x-tenant': 'acme',
        'x-client-version': CLIENT_VERSION,
        'x-trace-context': trace,
        'x-request-nonce': hex16(d[6]),
      },
    });
  }
  return plan;
}

/** The line Python's Call.to_json prints: compact, keys in that order, metadata sorted. */
function callJson(c) {
  const md = {};
  for (const k of Object.keys(c.metadata).sort()) md[k] = c.metadata[k];
  return JSON.stringify({ ...c, metadata: md });
}

/** Responses answering request j of q when r are wanted in all. */
function bidiShare(j, q, r) {
  return Math.floor(((j + 1) * r) / q) - Math.floor((j * r) / q);
}

/** A message without its zero-valued fields: protobufjs encodes a field that is set even
 * when it holds the default, proto3's other implementations leave it out. Sent this way,
 * the bytes on the wire are the ones the Python and Go targets send. */
function canonical(msg) {
  const out = {};
  for (const [k, v] of Object.entries(msg)) {
    if (v === 0 || v === '' || (Buffer.isBuffer(v) && v.length === 0)) continue;
    out[k] = v;
  }
  return out;
}

module.exports = { MODES, METADATA_KEYS, makePlan, callJson, bidiShare, canonical, SplitMix64 };
