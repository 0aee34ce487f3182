// Command http1-client is the Go HTTP/1.0 and HTTP/1.1 keep-alive target
// client. It plays the seeded plan of scenarios/plan.md over raw TCP
// connections (so conn_seq and the local port are exact and nothing follows
// redirects), verifies every response and writes workload.jsonl, like
// scenarios/py/http1_client.py. With --proto h2c it plays the plan over
// net/http's own HTTP/2 instead (h2c.go). Control protocol: scenarios/README.md.
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"probebench/scenarios/http1/monoclock"
	"probebench/scenarios/http1/plan"
	"probebench/scenarios/http1/tlsconf"
)

type record struct {
	ID           int    `json:"id"`
	Protocol     string `json:"protocol"`
	ClientIP     string `json:"client_ip"`
	ClientPort   int    `json:"client_port"`
	ServerIP     string `json:"server_ip"`
	ServerPort   int    `json:"server_port"`
	ConnSeq      int    `json:"conn_seq"`
	Method       string `json:"method"`
	Path         string `json:"path"`
	Status       int    `json:"status"`
	ReqBytes     int    `json:"req_bytes"`
	RespBytes    int    `json:"resp_bytes"`
	ReqMessages  *int   `json:"req_messages"`
	RespMessages *int   `json:"resp_messages"`
	GrpcStatus   *int   `json:"grpc_status"`
	TStartNs     int64  `json:"t_start_ns"`
	TEndNs       int64  `json:"t_end_ns"`
	Phase        string `json:"phase"`
}

type client struct {
	proto      string
	addr       string
	hostHeader string
	tls        *tls.Config // nil: plain TCP
	deadline   time.Time
	clock      *monoclock.Clock
	pipeline   int // requests per write (http11); 1 is no pipelining
	// Open-loop pacing of the main phase (--rate): exchange k of the phase is
	// due at start + k/rate, whatever the previous ones took; zero: closed loop.
	rate  float64
	start time.Time
	first int // id of the main phase's first exchange
}

// pace waits until the exchange with this id is due (open loop, --rate).
func (c *client) pace(id int, phase string) {
	if c.rate <= 0 || phase != "main" {
		return
	}
	due := c.start.Add(time.Duration(float64(id-c.first) / c.rate * float64(time.Second)))
	if d := time.Until(due); d > 0 {
		time.Sleep(d)
	}
}

// lane is one persistent connection (http11) or the one sequential lane (http10).
type lane struct {
	conn    net.Conn
	br      *bufio.Reader
	connSeq int
	records []record
	h2      *http.Transport // h2c: the lane's own transport, so its own connection
}

func (c *client) dial() (net.Conn, *bufio.Reader, error) {
	d := net.Dialer{Deadline: c.deadline}
	conn, err := d.Dial("tcp", c.addr)
	if err != nil {
		return nil, nil, err
	}
	if c.tls != nil {
		tc := tls.Client(conn, c.tls)
		// The handshake before the first request: a request's start time is
		// then its own write, as on a plain connection.
		if err := tc.SetDeadline(c.deadline); err == nil {
			err = tc.Handshake()
		}
		if err != nil {
			conn.Close()
			return nil, nil, fmt.Errorf("TLS handshake: %w", err)
		}
		conn = tc
	}
	// The overall deadline bounds every read and write on this connection.
	if err := conn.SetDeadline(c.deadline); err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, bufio.NewReaderSize(conn, 64*1024), nil
}

// requestHead is the request line and header block.
func (c *client) requestHead(req plan.Request) []byte {
	vsn := "HTTP/1.1"
	if c.proto == "http10" {
		vsn = "HTTP/1.0"
	}
	var head bytes.Buffer
	fmt.Fprintf(&head, "%s %s %s\r\n", req.Method, req.Path, vsn)
	fmt.Fprintf(&head, "Host: %s\r\n", c.hostHeader)
	fmt.Fprintf(&head, "x-probebench-id: %d\r\n", req.ID)
	for _, h := range req.Headers {
		fmt.Fprintf(&head, "%s: %s\r\n", h[0], h[1])
	}
	hasBody := plan.HasBody(req.Method)
	if hasBody && req.ReqChunked {
		head.WriteString("Transfer-Encoding: chunked\r\n")
	} else if hasBody {
		fmt.Fprintf(&head, "Content-Length: %d\r\n", req.ReqBytes)
	}
	head.WriteString("\r\n")
	return head.Bytes()
}

// bodyWrites is the request body as the writes that send it: one, or one per
// chunk plus the last chunk.
func bodyWrites(req plan.Request) [][]byte {
	if !plan.HasBody(req.Method) {
		return nil
	}
	body := plan.Body(req.ReqBytes)
	if !req.ReqChunked {
		if len(body) == 0 {
			return nil
		}
		return [][]byte{body}
	}
	var out [][]byte
	for k := 0; k < len(body); k += plan.Chunk {
		piece := body[k:min(k+plan.Chunk, len(body))]
		chunk := make([]byte, 0, len(piece)+16)
		chunk = fmt.Appendf(chunk, "%X\r\n", len(piece))
		chunk = append(chunk, piece...)
		chunk = append(chunk, "\r\n"...)
		out = append(out, chunk)
	}
	return append(out, []byte("0\r\n\r\n"))
}

func expectsContinue(req plan.Request) bool {
	for _, h := range req.Headers {
		if strings.EqualFold(h[0], "Expect") && strings.EqualFold(h[1], "100-continue") {
			return true
		}
	}
	return false
}

// writeRequest sends the head in one write and the body in one write (or one
// per chunk), the same send pattern as Python's http.client. With
// "Expect: 100-continue" the body waits for the server's 100 Continue.
func (c *client) writeRequest(conn net.Conn, br *bufio.Reader, req plan.Request) error {
	if _, err := conn.Write(c.requestHead(req)); err != nil {
		return err
	}
	if expectsContinue(req) {
		interim, err := http.ReadResponse(br, &http.Request{Method: req.Method})
		if err != nil {
			return fmt.Errorf("waiting for 100 Continue: %w", err)
		}
		interim.Body.Close()
		if interim.StatusCode != http.StatusContinue {
			return fmt.Errorf("status %d instead of 100 Continue", interim.StatusCode)
		}
	}
	for _, w := range bodyWrites(req) {
		if _, err := conn.Write(w); err != nil {
			return err
		}
	}
	return nil
}

func (c *client) verify(req plan.Request, resp *http.Response, body []byte) error {
	var problems []string
	wantMajor, wantMinor := 1, 1
	if c.proto == "http10" {
		wantMinor = 0
	} else if c.proto == "h2c" {
		wantMajor, wantMinor = 2, 0
	}
	if resp.ProtoMajor != wantMajor || resp.ProtoMinor != wantMinor {
		problems = append(problems, fmt.Sprintf("response version %s", resp.Proto))
	}
	if resp.StatusCode != req.Status {
		problems = append(problems, fmt.Sprintf("status %d != %d", resp.StatusCode, req.Status))
	}
	if !bytes.Equal(body, plan.Body(req.RespBytes)) {
		problems = append(problems,
			fmt.Sprintf("body of %d bytes != pattern of %d", len(body), req.RespBytes))
	}
	if got := resp.Header.Get("X-Req-Bytes"); got != strconv.Itoa(req.ReqBytes) {
		problems = append(problems, fmt.Sprintf("x-req-bytes %q != %d", got, req.ReqBytes))
	}
	if resp.Header.Get("X-Probebench-Id") != strconv.Itoa(req.ID) {
		problems = append(problems, "x-probebench-id not echoed")
	}
	if req.Status == 301 && resp.Header.Get("Location") != plan.Location {
		problems = append(problems, "301 without the expected Location")
	}
	if c.proto == "http11" && resp.Close {
		problems = append(problems, "server closed a keep-alive connection")
	}
	if len(problems) > 0 {
		p := req.Path
		if len(p) > 60 {
			p = p[:60]
		}
		return fmt.Errorf("id %d %s %s: %s", req.ID, req.Method, p, strings.Join(problems, "; "))
	}
	return nil
}

func (c *client) exchange(conn net.Conn, br *bufio.Reader, req plan.Request, connSeq int,
	tStart int64, phase string) (record, error) {
	if err := c.writeRequest(conn, br, req); err != nil {
		return record{}, fmt.Errorf("id %d: write: %w", req.ID, err)
	}
	return c.readExchange(conn, br, req, connSeq, tStart, phase)
}

// readExchange reads and checks the response to req.
func (c *client) readExchange(conn net.Conn, br *bufio.Reader, req plan.Request, connSeq int,
	tStart int64, phase string) (record, error) {
	resp, err := http.ReadResponse(br, &http.Request{Method: req.Method})
	if err != nil {
		return record{}, fmt.Errorf("id %d: read response: %w", req.ID, err)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, plan.MaxBody+1))
	resp.Body.Close()
	if err != nil {
		return record{}, fmt.Errorf("id %d: read body: %w", req.ID, err)
	}
	tEnd := c.clock.Now()
	if err := c.verify(req, resp, body); err != nil {
		return record{}, err
	}
	local := conn.LocalAddr().(*net.TCPAddr)
	remote := conn.RemoteAddr().(*net.TCPAddr)
	protocol := "http/1.1"
	if c.proto == "http10" {
		protocol = "http/1.0"
	}
	return record{
		ID: req.ID, Protocol: protocol,
		ClientIP: local.IP.String(), ClientPort: local.Port,
		ServerIP: remote.IP.String(), ServerPort: remote.Port,
		ConnSeq: connSeq, Method: req.Method, Path: req.Path, Status: resp.StatusCode,
		ReqBytes: req.ReqBytes, RespBytes: len(body),
		TStartNs: tStart, TEndNs: tEnd, Phase: phase,
	}, nil
}

func (c *client) runHTTP11(l *lane, reqs []plan.Request, phase string) error {
	if l.conn == nil {
		conn, br, err := c.dial()
		if err != nil {
			return err
		}
		l.conn, l.br = conn, br
	}
	if c.pipeline > 1 {
		return c.runPipelined(l, reqs, phase)
	}
	for _, req := range reqs {
		c.pace(req.ID, phase)
		tStart := c.clock.Now()
		rec, err := c.exchange(l.conn, l.br, req, l.connSeq, tStart, phase)
		if err != nil {
			return err
		}
		l.records = append(l.records, rec)
		l.connSeq++
	}
	return nil
}

// runPipelined sends up to c.pipeline requests in one write, then reads their
// responses in order.
func (c *client) runPipelined(l *lane, reqs []plan.Request, phase string) error {
	for k := 0; k < len(reqs); k += c.pipeline {
		batch := reqs[k:min(k+c.pipeline, len(reqs))]
		c.pace(batch[0].ID, phase)
		var buf bytes.Buffer
		for _, req := range batch {
			buf.Write(c.requestHead(req))
			for _, w := range bodyWrites(req) {
				buf.Write(w)
			}
		}
		tStart := c.clock.Now()
		if _, err := l.conn.Write(buf.Bytes()); err != nil {
			return fmt.Errorf("id %d: write: %w", batch[0].ID, err)
		}
		for _, req := range batch {
			rec, err := c.readExchange(l.conn, l.br, req, l.connSeq, tStart, phase)
			if err != nil {
				return err
			}
			l.records = append(l.records, rec)
			l.connSeq++
		}
	}
	return nil
}

func (c *client) runHTTP10(l *lane, reqs []plan.Request, phase string) error {
	for _, req := range reqs {
		c.pace(req.ID, phase)
		// The exchange includes the connect: that is what HTTP/1.0 costs.
		tStart := c.clock.Now()
		conn, br, err := c.dial()
		if err != nil {
			return err
		}
		rec, err := c.exchange(conn, br, req, 0, tStart, phase)
		conn.Close()
		if err != nil {
			return err
		}
		l.records = append(l.records, rec)
	}
	return nil
}

func (c *client) runPhase(lanes []*lane, lists [][]plan.Request, phase string) error {
	errs := make([]error, len(lanes))
	var wg sync.WaitGroup
	for k := range lanes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if c.proto == "http10" {
				errs[k] = c.runHTTP10(lanes[k], lists[k], phase)
			} else if c.proto == "h2c" {
				errs[k] = c.runH2C(lanes[k], lists[k], phase)
			} else {
				errs[k] = c.runHTTP11(lanes[k], lists[k], phase)
			}
		}()
	}
	// Every conn has the overall deadline set, so the goroutines end by then.
	wg.Wait()
	for k, err := range errs {
		if err != nil {
			return fmt.Errorf("connection %d: %w", k, err)
		}
	}
	return nil
}

// waitGo blocks until a line "GO" on stdin, stdin's EOF, or the deadline.
func (c *client) waitGo() error {
	got := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			if strings.TrimSpace(sc.Text()) == "GO" {
				got <- nil
				return
			}
		}
		got <- errors.New("stdin closed before GO")
	}()
	timer := time.NewTimer(time.Until(c.deadline))
	defer timer.Stop()
	select {
	case err := <-got:
		return err
	case <-timer.C:
		return errors.New("deadline passed while waiting for GO")
	}
}

// split deals the plan round-robin by id over the lanes; the first
// warmup*lanes ids are the warm-up.
func split(p []plan.Request, lanes, warmup int) (warm, main [][]plan.Request) {
	nWarm := min(len(p), warmup*lanes)
	warm = make([][]plan.Request, lanes)
	main = make([][]plan.Request, lanes)
	for _, r := range p {
		if r.ID < nWarm {
			warm[r.ID%lanes] = append(warm[r.ID%lanes], r)
		} else {
			main[r.ID%lanes] = append(main[r.ID%lanes], r)
		}
	}
	return warm, main
}

func die(code int, format string, a ...any) {
	fmt.Fprintf(os.Stderr, "http1-client: "+format+"\n", a...)
	os.Exit(code)
}

func main() {
	proto := flag.String("proto", "", "http10, http11 or h2c")
	host := flag.String("host", "127.0.0.1", "server address")
	port := flag.Int("port", 0, "server port")
	exchanges := flag.Int("exchanges", -1, "number of exchanges, warm-up included")
	seed := flag.Int64("seed", 1, "plan seed")
	connections := flag.Int("connections", 1, "persistent connections (http11)")
	warmup := flag.Int("warmup", 0, "warm-up exchanges per connection before WARM/GO")
	workload := flag.String("workload", "", "workload.jsonl to append to")
	deadlineS := flag.Float64("deadline", 120, "never run longer than this many seconds")
	planOnly := flag.Bool("plan-only", false, "print the plan as JSON lines and exit")
	tlsDir := flag.String("tls-dir", "", "speak TLS, trusting DIR/ca.pem (scenarios/README.md)")
	tlsVersion := flag.String("tls-version", "1.3", "1.2 or 1.3")
	keylog := flag.String("keylog", "", "append TLS secrets here (NSS key log format)")
	pipeline := flag.Int("pipeline", 1, "requests sent in one write before their responses (http11)")
	mixed := flag.Bool("mixed", false, "the mixed plan: HEAD, 304, 204, 100-continue uploads")
	rate := flag.Float64("rate", 0, "main phase: exchanges per second in all, open loop (0: as fast as it goes)")
	flag.Parse()

	if *proto != "http10" && *proto != "http11" && *proto != "h2c" {
		die(2, "--proto must be http10, http11 or h2c")
	}
	if *proto == "h2c" && *tlsDir != "" {
		die(2, "--proto h2c is cleartext HTTP/2: no --tls-dir")
	}
	if *exchanges < 0 || *connections < 1 || *warmup < 0 || *deadlineS <= 0 || *pipeline < 1 ||
		*rate < 0 {
		die(2, "--exchanges/--warmup/--rate must be >= 0, --connections/--pipeline >= 1, --deadline > 0")
	}
	if *pipeline > 1 && (*mixed || *proto != "http11") {
		die(2, "--pipeline is for the http11 plan, without --mixed (100-continue waits)")
	}
	p, err := plan.Make(*exchanges, uint64(*seed), *proto, *mixed, *pipeline > 1)
	if err != nil {
		die(2, "%v", err)
	}
	if *planOnly {
		out := bufio.NewWriter(os.Stdout)
		for _, r := range p {
			line, err := r.JSON()
			if err != nil {
				die(1, "%v", err)
			}
			out.Write(line)
			out.WriteString("\n")
		}
		if err := out.Flush(); err != nil {
			die(1, "%v", err)
		}
		return
	}
	if *port <= 0 || *workload == "" {
		die(2, "--port and --workload are required")
	}
	clock, err := monoclock.New()
	if err != nil {
		die(1, "clock_gettime: %v", err)
	}
	addr := net.JoinHostPort(*host, strconv.Itoa(*port))
	c := &client{
		proto: *proto, addr: addr, hostHeader: addr, clock: clock, pipeline: *pipeline,
		deadline: time.Now().Add(time.Duration(*deadlineS * float64(time.Second))),
		rate:     *rate,
	}
	if *tlsDir != "" {
		cfg, closer, err := tlsconf.Config(*tlsDir, *tlsVersion, *keylog, false, *host)
		if err != nil {
			die(2, "TLS: %v", err)
		}
		defer closer.Close()
		cfg.NextProtos = []string{"http/1.1"}
		c.tls = cfg
	}
	nLanes := *connections
	if *proto == "http10" {
		nLanes = 1
	}
	warm, mainLists := split(p, nLanes, *warmup)
	lanes := make([]*lane, nLanes)
	for k := range lanes {
		lanes[k] = &lane{}
	}
	defer func() {
		for _, l := range lanes {
			if l.conn != nil {
				l.conn.Close()
			}
			if l.h2 != nil {
				l.h2.CloseIdleConnections()
			}
		}
	}()
	run := func() error {
		if *warmup > 0 {
			if err := c.runPhase(lanes, warm, "warmup"); err != nil {
				return err
			}
			fmt.Println("WARM")
			if err := c.waitGo(); err != nil {
				return err
			}
		}
		c.first = min(len(p), *warmup*nLanes)
		c.start = time.Now()
		return c.runPhase(lanes, mainLists, "main")
	}
	if err := run(); err != nil {
		die(1, "%v", err)
	}
	var records []record
	for _, l := range lanes {
		records = append(records, l.records...)
	}
	sort.Slice(records, func(i, j int) bool { return records[i].ID < records[j].ID })
	if len(records) != len(p) {
		die(1, "%d records for %d exchanges", len(records), len(p))
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // paths carry '&'; keep them as the Python client writes them
	for _, r := range records {
		if err := enc.Encode(r); err != nil {
			die(1, "%v", err)
		}
	}
	f, err := os.OpenFile(*workload, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		die(1, "%v", err)
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		f.Close()
		die(1, "%v", err)
	}
	if err := f.Close(); err != nil {
		die(1, "%v", err)
	}
	fmt.Printf("DONE %d\n", len(records))
}
