// The seeded HTTP request plan of scenarios/plan.md, in Node.js, for the h2c-plain
// targets (proto "h2c"). Keep identical to scenarios/py/workload.py (make_plan) and
// scenarios/go/http1/plan/plan.go: `--plan-only` output is compared byte for byte.
'use strict';

const { SplitMix64 } = require('./plan');

const MAX_BODY = 256 * 1024;
const CHUNK = 8000; // piece size of bodies sent without a length
const LOCATION = '/r/200/0/cl';
const PATTERN_ALPHABET = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ';
const HEADER_ALPHABET = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_';
const METHOD_WEIGHTS = [['GET', 30], ['POST', 20], ['PUT', 10], ['DELETE', 10], ['PATCH', 10],
  ['HEAD', 10], ['OPTIONS', 10]];
const STATUS_WEIGHTS = [[200, 50], [201, 15], [204, 10], [301, 8], [404, 10], [500, 7]];
const BODY_METHODS = new Set(['POST', 'PUT', 'PATCH']);
const NO_BODY = new Set([204, 304]);
const STREAMED = new Set(['http11', 'h2c']); // protos whose bodies may go without a length
const PATTERN = Buffer.alloc(MAX_BODY);
for (let i = 0; i < MAX_BODY; i++) PATTERN[i] = PATTERN_ALPHABET.charCodeAt(i % 62);

const below = (rng, n) => Number(rng.next() % BigInt(n));

function pick(rng, table) {
  let r = below(rng, table.reduce((a, [, w]) => a + w, 0));
  for (const [v, w] of table) {
    if (r < w) return v;
    r -= w;
  }
  throw new Error('unreachable: weights cover the draw');
}

function size(rng) {
  const cls = below(rng, 100);
  if (cls < 70) return below(rng, 1025);
  if (cls < 95) return 1025 + below(rng, 15360);
  return 16385 + below(rng, MAX_BODY - 16385 + 1);
}

/** The n requests for seed (a BigInt) and proto; the draw order is scenarios/plan.md's.
 * Only the plain plan: --mixed and --pipeline are HTTP/1.1 variants. */
function makePlan(n, seed, proto) {
  if (!['http10', 'http11', 'h2c'].includes(proto)) throw new Error(`unknown proto ${proto}`);
  const rng = new SplitMix64(seed);
  const out = [];
  for (let i = 0; i < n; i++) {
    const method = pick(rng, METHOD_WEIGHTS);
    const status = pick(rng, STATUS_WEIGHTS);
    let respSize = size(rng);
    const chunkDraw = below(rng, 4);
    const qv = below(rng, 1000000);
    const padDraw = below(rng, 4);
    const padLen = below(rng, 200);
    const headers = [];
    const nh = below(rng, 9);
    for (let j = 0; j < nh; j++) {
      const vlen = 1 + (below(rng, 100) < 85 ? below(rng, 64) : below(rng, 1024));
      const off = below(rng, 64);
      let v = '';
      for (let k = 0; k < vlen; k++) v += HEADER_ALPHABET[(off + k * 7) % 64];
      headers.push([`x-pb-extra-${j}`, v]);
    }
    let body = size(rng);
    const bodyChunkDraw = below(rng, 3);
    if (NO_BODY.has(status)) respSize = 0;
    const mode = chunkDraw === 0 && STREAMED.has(proto) && !NO_BODY.has(status) &&
      method !== 'HEAD' ? 'ch' : 'cl';
    if (!BODY_METHODS.has(method)) body = 0;
    let path = `/r/${status}/${respSize}/${mode}?n=${i}&v=${qv}`;
    if (padDraw === 0) path += '&pad=' + 'p'.repeat(padLen);
    // key order is the JSON order of --plan-only
    out.push({
      id: i, method, path, status, resp_size: respSize, resp_mode: mode,
      resp_bytes: method === 'HEAD' ? 0 : respSize, req_bytes: body,
      req_chunked: bodyChunkDraw === 0 && STREAMED.has(proto) && BODY_METHODS.has(method),
      headers,
    });
  }
  return out;
}

/** The deterministic body of n bytes (a view: do not modify). */
function body(n) {
  if (!(n >= 0 && n <= MAX_BODY)) throw new Error(`body size ${n} out of 0..${MAX_BODY}`);
  return PATTERN.subarray(0, n);
}

/** Whether data is the pattern's slice from offset (beyond the plan's sizes: nothing to compare). */
function matchesPattern(data, offset) {
  if (offset + data.length > MAX_BODY) return true;
  return PATTERN.subarray(offset, offset + data.length).equals(data);
}

/** "/r/<status>/<size>/<mode>[?query]" decoded, or null. */
function parseRoute(path) {
  const parts = path.split('?')[0].split('/');
  if (parts.length !== 5 || parts[0] !== '' || parts[1] !== 'r') return null;
  const status = Number(parts[2]);
  const sz = Number(parts[3]);
  if (!/^\d+$/.test(parts[2]) || !/^\d+$/.test(parts[3]) || sz > MAX_BODY) return null;
  if (![200, 201, 204, 301, 304, 404, 500].includes(status)) return null;
  if (parts[4] !== 'cl' && parts[4] !== 'ch') return null;
  return { status, size: sz, mode: parts[4] };
}

module.exports = {
  MAX_BODY, CHUNK, LOCATION, BODY_METHODS, NO_BODY, makePlan, body, matchesPattern, parseRoute,
};
