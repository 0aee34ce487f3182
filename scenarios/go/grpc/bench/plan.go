// Package bench holds the grpc-go scenario targets shared by every grpc-go
// version module (scenarios/go/grpc-v*/): the seeded call plan, the Bench
// service glue written against grpc.ServiceDesc, the server and the client.
package bench

import (
	"fmt"
	"strconv"
	"strings"
)

// The plan below must stay identical to scenarios/py/grpc_plan in
// grpc_client.py; scenarios/plan-grpc.md is the specification of both.

// SplitMix64 is the generator both languages implement (Steele et al.).
type SplitMix64 struct{ state uint64 }

// NewSplitMix64 seeds the generator.
func NewSplitMix64(seed uint64) *SplitMix64 { return &SplitMix64{state: seed} }

// Next returns the next 64-bit value.
func (s *SplitMix64) Next() uint64 {
	s.state += 0x9E3779B97F4A7C15
	z := s.state
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

// Modes maps the --mode values to full method names.
var Modes = map[string]string{
	"unary":         "/probebench.Bench/Unary",
	"server-stream": "/probebench.Bench/ServerStream",
	"client-stream": "/probebench.Bench/ClientStream",
	"bidi":          "/probebench.Bench/Bidi",
}

// ErrCodes are the non-OK statuses the plan asks servers to return; codes a
// client library may synthesise itself (CANCELLED, DEADLINE_EXCEEDED) are left
// out so a mismatch always means a real failure.
var ErrCodes = []uint32{3, 5, 7, 9, 13, 14}

// ErrMessages carry spaces, '%' and non-ASCII so grpc-message percent-encoding shows.
var ErrMessages = []string{
	"quota exceeded for tenant acme (100% used)",
	"ressource introuvable : élément demandé",
	"ungültige Anfrage – bitte erneut versuchen",
	"権限がありません",
	"server busy; retry later ☕",
}

const (
	// TraceEvery is how many consecutive ids share one x-trace-context value.
	TraceEvery = 16
	// BigSize is the floor of the "big" messages (>= 1 MiB).
	BigSize = 1 << 20
	// ClientVersion is sent as x-client-version on every call, by both languages.
	ClientVersion = "probebench-grpc/0.1"
)

// Call is the plan of one call; Metadata is what the client sends.
type Call struct {
	ID                 uint64            `json:"id"`
	Method             string            `json:"method"`
	ReqCount           int               `json:"req_count"`
	RespCount          int               `json:"resp_count"`
	ReqSize            int               `json:"req_size"`
	RespSize           int               `json:"resp_size"`
	StatusCode         uint32            `json:"status_code"`
	StatusMessage      string            `json:"status_message"`
	ExpectRespMessages int               `json:"expect_resp_messages"`
	Metadata           map[string]string `json:"metadata"`
}

// MetadataKeys fixes the order in which metadata is sent.
var MetadataKeys = []string{
	"x-probebench-id", "x-tenant", "x-client-version", "x-trace-context", "x-request-nonce",
}

func count(d uint64, allowZero bool) int {
	b := d % 100
	switch {
	case b < 10:
		return 100 + int((d>>8)%41)
	case allowZero && b < 13:
		return 0
	default:
		return 1 + int((d>>8)%8)
	}
}

func size(d uint64, n int) int {
	b := d % 100
	switch {
	case n <= 4 && b < 5:
		return BigSize + int((d>>8)%65536)
	case b < 15:
		return 0
	default:
		return int((d >> 8) % 2048)
	}
}

func traceContext(t1, t2, t3 uint64) string {
	parts := make([]string, 7)
	for j := range parts {
		parts[j] = fmt.Sprintf("k%d=%016x", j, t1+uint64(j)*t3)
	}
	return fmt.Sprintf("00-%016x%016x-%016x-01;", t1, t2, t3) + strings.Join(parts, ",")
}

// MakePlan returns the n calls of one run; the same (mode, n, seed) gives the
// same plan in Go and Python.
func MakePlan(mode string, n int, seed uint64) ([]Call, error) {
	method, ok := Modes[mode]
	if !ok {
		return nil, fmt.Errorf("unknown mode %q", mode)
	}
	rng := NewSplitMix64(seed)
	calls := make([]Call, n)
	trace := ""
	for i := range calls {
		if i%TraceEvery == 0 {
			t1, t2, t3 := rng.Next(), rng.Next(), rng.Next()
			trace = traceContext(t1, t2, t3)
		}
		d := [7]uint64{}
		for k := range d {
			d[k] = rng.Next()
		}
		c := Call{ID: uint64(i), Method: method, ReqCount: 1, RespCount: 1}
		if d[0]%100 < 10 {
			c.StatusCode = ErrCodes[d[1]%uint64(len(ErrCodes))]
			c.StatusMessage = ErrMessages[(d[1]>>32)%uint64(len(ErrMessages))]
		}
		if mode == "client-stream" || mode == "bidi" {
			c.ReqCount = count(d[2], false)
		}
		if mode == "server-stream" || mode == "bidi" {
			c.RespCount = count(d[3], true)
		}
		c.ReqSize = size(d[4], c.ReqCount)
		c.RespSize = size(d[5], c.RespCount)
		c.ExpectRespMessages = c.RespCount
		if c.StatusCode != 0 && (mode == "unary" || mode == "client-stream") {
			c.ExpectRespMessages = 0
		}
		c.Metadata = map[string]string{
			"x-probebench-id":  strconv.FormatUint(c.ID, 10),
			"x-tenant":         "acme",
			"x-client-version": ClientVersion,
			"x-trace-context":  trace,
			"x-request-nonce":  fmt.Sprintf("%016x", d[6]),
		}
		calls[i] = c
	}
	return calls, nil
}

// BidiShare is how many responses the server sends in answer to request j of q
// when the call wants r in all: spread evenly, the remainder on later requests.
func BidiShare(j, q, r int) int {
	return (j+1)*r/q - j*r/q
}

// Payload returns n filler bytes; the content does not matter, only the size.
func Payload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return b
}
