// Package plan is the seeded HTTP/1.x request plan, identical to
// scenarios/py/workload.py. The algorithm, draw order and constants are
// specified in scenarios/plan.md; change both languages together.
package plan

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// MaxBody is the largest request or response body the plan asks for.
const MaxBody = 256 * 1024

// PipelinedMaxBody bounds bodies of the pipelined plan: pipelining clients
// send small requests.
const PipelinedMaxBody = 4096

// Chunk is the piece size of chunked bodies in both directions; not a power
// of two so chunk-size lines are not all alike.
const Chunk = 8000

// Location is what a 301 points to.
const Location = "/r/200/0/cl"

const patternAlphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
const headerAlphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"

type weighted[T any] struct {
	value  T
	weight uint64
}

var methodWeights = []weighted[string]{
	{"GET", 30}, {"POST", 20}, {"PUT", 10}, {"DELETE", 10},
	{"PATCH", 10}, {"HEAD", 10}, {"OPTIONS", 10},
}

var statusWeights = []weighted[int]{
	{200, 50}, {201, 15}, {204, 10}, {301, 8}, {404, 10}, {500, 7},
}

var pattern = func() []byte {
	b := make([]byte, MaxBody)
	for i := range b {
		b[i] = patternAlphabet[i%len(patternAlphabet)]
	}
	return b
}()

// SplitMix64 is the plan's PRNG (Steele, Lea, Flood 2014).
type SplitMix64 struct{ state uint64 }

// Next returns the next 64-bit output.
func (s *SplitMix64) Next() uint64 {
	s.state += 0x9E3779B97F4A7C15
	z := s.state
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

// Below returns 0..n-1 by plain modulo (bias irrelevant, trivial to mirror).
func (s *SplitMix64) Below(n uint64) uint64 { return s.Next() % n }

func pick[T any](s *SplitMix64, table []weighted[T]) T {
	var total uint64
	for _, w := range table {
		total += w.weight
	}
	r := s.Below(total)
	for _, w := range table {
		if r < w.weight {
			return w.value
		}
		r -= w.weight
	}
	panic("unreachable: weights cover the draw")
}

// size draws a body size 0..256 KiB: mostly small, some medium, a few large.
func (s *SplitMix64) size() int {
	cls := s.Below(100)
	switch {
	case cls < 70:
		return int(s.Below(1025))
	case cls < 95:
		return 1025 + int(s.Below(15360))
	default:
		return 16385 + int(s.Below(MaxBody-16385+1))
	}
}

// Header is one extra request header.
type Header [2]string

// Request is one planned exchange. Field order is the JSON order of
// --plan-only, which must match the Python client byte for byte.
type Request struct {
	ID         int      `json:"id"`
	Method     string   `json:"method"`
	Path       string   `json:"path"`
	Status     int      `json:"status"`
	RespSize   int      `json:"resp_size"`
	RespMode   string   `json:"resp_mode"`
	RespBytes  int      `json:"resp_bytes"`
	ReqBytes   int      `json:"req_bytes"`
	ReqChunked bool     `json:"req_chunked"`
	Headers    []Header `json:"headers"`
}

// HasBody reports whether the method carries a request body in the plan.
func HasBody(method string) bool {
	return method == "POST" || method == "PUT" || method == "PATCH"
}

// NoBody reports whether a status never carries a length header or a body
// in the plan (304 only comes from the mixed plan).
func NoBody(status int) bool { return status == 204 || status == 304 }

// streamed reports whether proto's bodies may go without a length: chunked in
// HTTP/1.1, DATA frames without content-length in h2c.
func streamed(proto string) bool { return proto == "http11" || proto == "h2c" }

// Make returns the n requests for seed and proto ("http10", "http11" or "h2c",
// the same plan over prior-knowledge HTTP/2).
// mixed (http11 only) turns request i into, by i mod 4: a HEAD, a conditional
// GET answered 304, a DELETE answered 204, and a POST uploaded after
// "Expect: 100-continue".
//
// pipelined sends GET where the plan drew HEAD (TShark 4.0.17 frames a
// pipelined response by the latest request's method, so the truth could not
// follow a HEAD's) and takes body sizes modulo PipelinedMaxBody+1.
func Make(n int, seed uint64, proto string, mixed, pipelined bool) ([]Request, error) {
	if proto != "http10" && proto != "http11" && proto != "h2c" {
		return nil, fmt.Errorf("unknown proto %q", proto)
	}
	if mixed && proto != "http11" {
		return nil, fmt.Errorf("the mixed plan is HTTP/1.1 only")
	}
	rng := &SplitMix64{state: seed}
	out := make([]Request, 0, n)
	for i := 0; i < n; i++ {
		method := pick(rng, methodWeights)
		status := pick(rng, statusWeights)
		respSize := rng.size()
		chunkDraw := rng.Below(4)
		qv := rng.Below(1_000_000)
		padDraw := rng.Below(4)
		padLen := rng.Below(200)
		nh := int(rng.Below(9))
		headers := make([]Header, 0, nh)
		for j := 0; j < nh; j++ {
			var vlen int
			if rng.Below(100) < 85 {
				vlen = 1 + int(rng.Below(64))
			} else {
				vlen = 1 + int(rng.Below(1024))
			}
			off := int(rng.Below(64))
			v := make([]byte, vlen)
			for k := range v {
				v[k] = headerAlphabet[(off+k*7)%len(headerAlphabet)]
			}
			headers = append(headers, Header{"x-pb-extra-" + strconv.Itoa(j), string(v)})
		}
		body := rng.size()
		bodyChunkDraw := rng.Below(3)

		if pipelined {
			if method == "HEAD" {
				method = "GET"
			}
			respSize %= PipelinedMaxBody + 1
			body %= PipelinedMaxBody + 1
		}
		if mixed {
			kind := i % 4
			method = [4]string{"HEAD", "GET", "DELETE", "POST"}[kind]
			switch {
			case kind == 0 || (kind == 3 && status == 204):
				status = 200
			case kind == 1:
				status = 304
				headers = append(headers, Header{"If-None-Match", fmt.Sprintf("\"pb-%d\"", qv)})
			case kind == 2:
				status = 204
			}
			if kind == 3 {
				body = max(body, 1)
				bodyChunkDraw = 1
				headers = append(headers, Header{"Expect", "100-continue"})
			}
		}
		if NoBody(status) {
			respSize = 0
		}
		mode := "cl"
		if chunkDraw == 0 && streamed(proto) && !NoBody(status) && method != "HEAD" {
			mode = "ch"
		}
		respBytes := respSize
		if method == "HEAD" {
			respBytes = 0
		}
		if !HasBody(method) {
			body = 0
		}
		reqChunked := bodyChunkDraw == 0 && streamed(proto) && HasBody(method)
		path := fmt.Sprintf("/r/%d/%d/%s?n=%d&v=%d", status, respSize, mode, i, qv)
		if padDraw == 0 {
			path += "&pad=" + strings.Repeat("p", int(padLen))
		}
		out = append(out, Request{
			ID: i, Method: method, Path: path, Status: status, RespSize: respSize,
			RespMode: mode, RespBytes: respBytes, ReqBytes: body, ReqChunked: reqChunked,
			Headers: headers,
		})
	}
	return out, nil
}

// JSON is the canonical one-line form (no HTML escaping: Python's json does none).
func (r Request) JSON() ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(r); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

// Body returns the deterministic body of n bytes (shared, do not modify).
func Body(n int) []byte {
	if n < 0 || n > MaxBody {
		panic(fmt.Sprintf("body size %d out of 0..%d", n, MaxBody))
	}
	return pattern[:n:n]
}

// MatchesPattern reports whether data is the pattern slice starting at offset.
func MatchesPattern(data []byte, offset int) bool {
	if offset+len(data) > MaxBody {
		return true // beyond what the plan produces; nothing to compare with
	}
	return bytes.Equal(data, pattern[offset:offset+len(data)])
}

// ParseRoute decodes "/r/<status>/<size>/<mode>[?query]".
func ParseRoute(path string) (status, size int, mode string, ok bool) {
	p, _, _ := strings.Cut(path, "?")
	parts := strings.Split(p, "/")
	if len(parts) != 5 || parts[0] != "" || parts[1] != "r" {
		return 0, 0, "", false
	}
	status, err1 := strconv.Atoi(parts[2])
	size, err2 := strconv.Atoi(parts[3])
	if err1 != nil || err2 != nil || size < 0 || size > MaxBody {
		return 0, 0, "", false
	}
	switch status {
	case 200, 201, 204, 301, 304, 404, 500:
	default:
		return 0, 0, "", false
	}
	if parts[4] != "cl" && parts[4] != "ch" {
		return 0, 0, "", false
	}
	return status, size, parts[4], true
}
