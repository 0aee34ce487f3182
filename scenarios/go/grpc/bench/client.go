package bench

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"probebench/grpcbench/benchpb"
)

// monoClock reads CLOCK_MONOTONIC (the BPF clock) without a syscall per read:
// one clock_gettime at start, then Go's own monotonic clock, which the runtime
// reads from CLOCK_MONOTONIC too.
type monoClock struct {
	base int64
	t0   time.Time
}

func newMonoClock() monoClock {
	var ts syscall.Timespec
	a := time.Now()
	const clockMonotonic = 1
	syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockMonotonic, uintptr(unsafe.Pointer(&ts)), 0)
	b := time.Now()
	return monoClock{base: ts.Nano(), t0: a.Add(b.Sub(a) / 2)}
}

func (m monoClock) now() int64 { return m.base + int64(time.Since(m.t0)) }

// conn is one ClientConn, hence one HTTP/2 connection, and its local port.
type conn struct {
	idx  int
	cc   *grpc.ClientConn
	mu   sync.Mutex
	port int // local port of the latest TCP connection the dialer made
	seq  int // next conn_seq on this connection
}

func (c *conn) dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if ta, ok := nc.LocalAddr().(*net.TCPAddr); ok {
		c.mu.Lock()
		c.port = ta.Port
		c.mu.Unlock()
	}
	return nc, nil
}

// peek returns the current conn_seq and local port without taking them.
func (c *conn) peek() (int, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seq, c.port
}

// start hands out the call's conn_seq and the local port it will use.
func (c *conn) start() (seq int, port int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	seq = c.seq
	c.seq++
	return seq, c.port
}

// Record is one workload.jsonl line (scenarios/README.md), plus the metadata
// sent, the grpc-message and the connection index for diagnostics.
type Record struct {
	ID           uint64            `json:"id"`
	Protocol     string            `json:"protocol"`
	ClientIP     string            `json:"client_ip"`
	ClientPort   *int              `json:"client_port"`
	ServerIP     string            `json:"server_ip"`
	ServerPort   int               `json:"server_port"`
	ConnSeq      int               `json:"conn_seq"`
	Conn         int               `json:"conn"`
	Method       string            `json:"method"`
	Path         string            `json:"path"`
	Status       *int              `json:"status"` // null: the call ended before the response headers
	GrpcStatus   uint32            `json:"grpc_status"`
	GrpcMessage  string            `json:"grpc_message"`
	ReqBytes     int               `json:"req_bytes"`
	RespBytes    int               `json:"resp_bytes"`
	ReqMessages  int               `json:"req_messages"`
	RespMessages int               `json:"resp_messages"`
	ReqHeaders   map[string]string `json:"req_headers"`
	TStartNs     int64             `json:"t_start_ns"`
	TEndNs       int64             `json:"t_end_ns"`
	Phase        string            `json:"phase"`
}

type clientOpts struct {
	mode, host, workload string
	port, n, conns       int
	warmup, inflight     int
	seed                 uint64
	deadline             time.Duration
	tls                  tlsFlags
	metadataFile         string
	cancelEvery          int
	compress             string
	rate                 float64 // main phase, calls/s in all, open loop; 0: closed loop
}

type client struct {
	opts  clientOpts
	plan  []Call
	extra []extraMD // --metadata-file: call i also sends extra[i % len]
	clock monoClock
	conns []*conn

	// main phase start and its first call's id, for --rate pacing
	start time.Time
	first int

	mu   sync.Mutex // guards next, out, err
	next int
	out  *bufio.Writer
	err  error
}

// ClientMain runs the client per scenarios/README.md and returns the exit code.
func ClientMain(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("grpc-client", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o clientOpts
	proto := fs.String("proto", "grpc", "only grpc")
	fs.StringVar(&o.mode, "mode", "unary", "unary|server-stream|client-stream|bidi")
	fs.StringVar(&o.host, "host", "127.0.0.1", "server address")
	fs.IntVar(&o.port, "port", 0, "server port")
	fs.IntVar(&o.n, "exchanges", 100, "calls in all, warm-up included")
	fs.Uint64Var(&o.seed, "seed", 1, "plan seed")
	fs.IntVar(&o.conns, "connections", 2, "HTTP/2 connections (one ClientConn each)")
	fs.IntVar(&o.warmup, "warmup", 0, "calls per connection before WARM/GO")
	fs.IntVar(&o.inflight, "inflight", 3, "concurrent calls per connection after GO")
	fs.StringVar(&o.workload, "workload", "", "workload.jsonl to append to")
	fs.IntVar(&o.cancelEvery, "cancel-every", 0,
		"every Nth call ends early: deadline expiry, cancel before the response headers, "+
			"cancel after the first response, in turn (0: none)")
	fs.StringVar(&o.compress, "compress", "", "gzip: send messages compressed (grpc-encoding)")
	fs.StringVar(&o.metadataFile, "metadata-file", "",
		"JSON lines of extra metadata; call i sends line i % lines (-bin values in base64)")
	deadline := fs.Float64("deadline", 120, "seconds the whole run may take")
	fs.Float64Var(&o.rate, "rate", 0, "main phase: calls per second in all, open loop (0: as fast as it goes)")
	printPlan := fs.Bool("print-plan", false, "print the plan as JSON lines and exit")
	o.tls.register(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(format string, a ...interface{}) int {
		fmt.Fprintf(stderr, "grpc-client: "+format+"\n", a...)
		return 1
	}
	if *proto != "grpc" {
		return fail("unsupported --proto %q", *proto)
	}
	plan, err := MakePlan(o.mode, o.n, o.seed)
	if err != nil {
		return fail("%v", err)
	}
	if *printPlan {
		enc := json.NewEncoder(stdout)
		for i := range plan {
			if err := enc.Encode(&plan[i]); err != nil {
				return fail("%v", err)
			}
		}
		return 0
	}
	if o.cancelEvery > 0 && o.mode != "unary" && o.mode != "server-stream" {
		return fail("--cancel-every needs --mode unary or server-stream (the server waits there)")
	}
	if o.compress != "" && o.compress != gzip.Name {
		return fail("unsupported --compress %q (gzip only)", o.compress)
	}
	if o.workload == "" || o.port <= 0 || o.conns < 1 || o.inflight < 1 || o.n < 0 || o.rate < 0 {
		return fail("need --workload, --port, --connections >= 1, --inflight >= 1")
	}
	// Keep a little of --deadline for teardown, so the process as a whole stays within it.
	o.deadline = time.Duration(*deadline * float64(time.Second))
	if reserve := o.deadline / 10; reserve < 500*time.Millisecond {
		o.deadline -= reserve
	} else {
		o.deadline -= 500 * time.Millisecond
	}
	cl := &client{opts: o, plan: plan, clock: newMonoClock()}
	if o.metadataFile != "" {
		if cl.extra, err = readExtra(o.metadataFile); err != nil {
			return fail("%v", err)
		}
	}
	if err := cl.run(stdin, stdout); err != nil {
		return fail("%v", err)
	}
	fmt.Fprintf(stdout, "DONE %d\n", o.n)
	return 0
}

func (cl *client) run(stdin io.Reader, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), cl.opts.deadline)
	defer cancel()
	f, err := os.OpenFile(cl.opts.workload, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	cl.out = bufio.NewWriter(f)
	defer cl.out.Flush()

	target := net.JoinHostPort(cl.opts.host, strconv.Itoa(cl.opts.port))
	security := grpc.WithInsecure()
	creds, err := cl.opts.tls.creds(false, cl.opts.host)
	if err != nil {
		return fmt.Errorf("TLS: %v", err)
	}
	if creds != nil {
		security = grpc.WithTransportCredentials(creds)
	}
	for i := 0; i < cl.opts.conns; i++ {
		c := &conn{idx: i}
		// WithInsecure/WithBlock/DialContext are deprecated in recent grpc-go
		// but exist in every version we build, unlike their replacements.
		cc, err := grpc.DialContext(ctx, target, security, grpc.WithBlock(),
			grpc.WithContextDialer(c.dial),
			grpc.WithDefaultCallOptions(cl.callOptions()...))
		if err != nil {
			return fmt.Errorf("connection %d to %s: %v", i, target, err)
		}
		defer cc.Close()
		c.cc = cc
		cl.conns = append(cl.conns, c)
	}

	// Warm-up: W calls on each connection in turn, one at a time.
	warm := cl.opts.warmup * cl.opts.conns
	if warm > cl.opts.n {
		warm = cl.opts.n
	}
	for i := 0; i < warm; i++ {
		if err := cl.call(ctx, cl.conns[i%cl.opts.conns], i, "warmup"); err != nil {
			return err
		}
	}
	cl.next = warm
	if cl.opts.warmup > 0 {
		if err := cl.out.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "WARM")
		if err := waitGo(ctx, stdin); err != nil {
			return err
		}
	}

	// Main phase: inflight workers per connection share one id counter, so ids
	// are handed out in the order calls start.
	cl.first, cl.start = warm, time.Now()
	var wg sync.WaitGroup
	for _, c := range cl.conns {
		for k := 0; k < cl.opts.inflight; k++ {
			wg.Add(1)
			go func(c *conn) {
				defer wg.Done()
				cl.worker(ctx, c)
			}(c)
		}
	}
	wg.Wait()
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.err
}

func (cl *client) callOptions() []grpc.CallOption {
	o := []grpc.CallOption{grpc.MaxCallRecvMsgSize(MaxMsgSize), grpc.MaxCallSendMsgSize(MaxMsgSize)}
	if cl.opts.compress != "" {
		o = append(o, grpc.UseCompressor(cl.opts.compress))
	}
	return o
}

// Shapes of the calls --cancel-every ends early.
const (
	shapeNone = iota
	shapeDeadline
	shapeCancelBeforeHeaders
	shapeCancelAfterResponse
)

func (cl *client) shape(id int) int {
	k := cl.opts.cancelEvery
	if k <= 0 || id%k != k-1 {
		return shapeNone
	}
	s := shapeDeadline + (id/k)%3
	if s == shapeCancelAfterResponse && cl.opts.mode == "unary" {
		s = shapeCancelBeforeHeaders // a unary response's headers come with its message
	}
	return s
}

func waitGo(ctx context.Context, stdin io.Reader) error {
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdin).ReadString('\n')
		line <- s
	}()
	select {
	case s := <-line:
		if strings.TrimSpace(s) != "GO" {
			return fmt.Errorf("expected GO on stdin, got %q", s)
		}
		return nil
	case <-ctx.Done():
		return errors.New("deadline reached waiting for GO")
	}
}

func (cl *client) worker(ctx context.Context, c *conn) {
	for range cl.plan { // at most one turn per call: bounded even if take misbehaves
		cl.mu.Lock()
		id := cl.next
		stop := id >= len(cl.plan) || cl.err != nil
		cl.next++
		cl.mu.Unlock()
		if stop {
			return
		}
		if cl.opts.rate > 0 {
			// open loop: call k of the phase is due at start + k/rate; the
			// inflight workers are the most calls that can be late at once
			due := cl.start.Add(time.Duration(float64(id-cl.first) / cl.opts.rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
		}
		if err := cl.call(ctx, c, id, "main"); err != nil {
			cl.mu.Lock()
			if cl.err == nil {
				cl.err = err
			}
			cl.mu.Unlock()
			return
		}
	}
}

// call makes one planned call, checks its outcome and appends its record.
func (cl *client) call(ctx context.Context, c *conn, id int, phase string) error {
	p := &cl.plan[id]
	if ctx.Err() != nil {
		return fmt.Errorf("deadline reached before call %d", id)
	}
	kv := make([]string, 0, 2*len(MetadataKeys))
	for _, k := range MetadataKeys {
		kv = append(kv, k, p.Metadata[k])
	}
	sent := p.Metadata
	if len(cl.extra) > 0 {
		x := cl.extra[id%len(cl.extra)]
		sent = make(map[string]string, len(p.Metadata)+len(x.pairs)/2)
		for k, v := range p.Metadata {
			sent[k] = v
		}
		kv = append(kv, x.pairs...)
		for k, v := range x.wire {
			sent[k] = v
		}
	}
	shape := cl.shape(id)
	if shape == shapeCancelAfterResponse && p.ExpectRespMessages == 0 {
		shape = shapeCancelBeforeHeaders // no first response to cancel after
	}
	timeout := 30 * time.Second
	if shape != shapeNone {
		// the server waits (after its first response when streaming) long enough for the
		// client to give up first
		kv = append(kv, DelayHeader, "3000")
	}
	if shape == shapeDeadline {
		timeout = 100 * time.Millisecond
	}
	cctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(ctx, metadata.Pairs(kv...)),
		timeout)
	defer cancel()
	if shape == shapeCancelBeforeHeaders {
		t := time.AfterFunc(100*time.Millisecond, cancel)
		defer t.Stop()
	}
	if shape == shapeCancelAfterResponse {
		cctx = context.WithValue(cctx, cancelAfterFirstKey{}, context.CancelFunc(cancel))
	}
	seq, port := c.start()
	rec := Record{
		ID: p.ID, Protocol: "h2c-grpc", ClientIP: cl.opts.host, ServerIP: cl.opts.host,
		ServerPort: cl.opts.port, ConnSeq: seq, Conn: c.idx, Method: "POST", Path: p.Method,
		ReqHeaders: sent, Phase: phase,
	}
	if port > 0 {
		rec.ClientPort = &port
	}
	if shape == shapeNone || cl.opts.mode != "unary" {
		ok := 200 // a unary call ended early gave up before its response headers
		rec.Status = &ok
	}
	rec.TStartNs = cl.clock.now()
	err := cl.exchange(cctx, c.cc, p, &rec)
	rec.TEndNs = cl.clock.now()
	if _, now := c.peek(); now != port {
		rec.ClientPort = nil // reconnected (GOAWAY) during the call: which one it used is unknown
	}
	st, _ := status.FromError(err)
	rec.GrpcStatus = uint32(st.Code())
	rec.GrpcMessage = st.Message()
	if shape != shapeNone {
		// ended early by the client: its library's status, not one the server sent
		if st.Code() != codes.Canceled && st.Code() != codes.DeadlineExceeded {
			return fmt.Errorf("call %d: ended early, got status %d %q", id, rec.GrpcStatus,
				rec.GrpcMessage)
		}
		rec.Phase = phase + "-ended-early"
	} else if rec.GrpcStatus != p.StatusCode || rec.GrpcMessage != p.StatusMessage {
		return fmt.Errorf("call %d: got status %d %q, planned %d %q",
			id, rec.GrpcStatus, rec.GrpcMessage, p.StatusCode, p.StatusMessage)
	}
	if shape == shapeNone && (rec.RespMessages != p.ExpectRespMessages ||
		rec.ReqMessages != p.ReqCount) {
		return fmt.Errorf("call %d: %d/%d messages sent/received, planned %d/%d",
			id, rec.ReqMessages, rec.RespMessages, p.ReqCount, p.ExpectRespMessages)
	}
	line, err := json.Marshal(&rec)
	if err != nil {
		return err
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	_, err = cl.out.Write(append(line, '\n'))
	return err
}

// extraMD is one line of --metadata-file: the pairs to send, and the values as the wire
// carries them (grpc-go sends -bin values in unpadded base64).
type extraMD struct {
	pairs []string
	wire  map[string]string
}

func readExtra(path string) ([]extraMD, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []extraMD
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var m map[string]string
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return nil, fmt.Errorf("%s: %v", path, err)
		}
		x := extraMD{wire: map[string]string{}}
		for k, v := range m {
			if strings.HasSuffix(k, "-bin") {
				raw, err := base64.StdEncoding.DecodeString(v)
				if err != nil {
					return nil, fmt.Errorf("%s: %s: %v", path, k, err)
				}
				x.pairs = append(x.pairs, k, string(raw))
				x.wire[k] = base64.RawStdEncoding.EncodeToString(raw)
			} else {
				x.pairs = append(x.pairs, k, v)
				x.wire[k] = v
			}
		}
		out = append(out, x)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no metadata lines", path)
	}
	return out, nil
}

func request(p *Call, j int) *benchpb.Req {
	r := &benchpb.Req{
		Id: p.ID, Payload: Payload(p.ReqSize), RespCount: uint32(p.RespCount),
		RespSize: uint32(p.RespSize), StatusCode: p.StatusCode, StatusMessage: p.StatusMessage,
	}
	if p.Method == Modes["bidi"] {
		r.RespCount = uint32(BidiShare(j, p.ReqCount, p.RespCount))
	}
	return r
}

// cancelAfterFirstKey marks a call the client cancels once its first response arrived.
type cancelAfterFirstKey struct{}

// exchange runs the call's messages; it returns the call's final error (nil for OK).
func (cl *client) exchange(ctx context.Context, cc *grpc.ClientConn, p *Call, rec *Record) error {
	mode := cl.opts.mode
	if mode == "unary" {
		req, out := request(p, 0), new(benchpb.Resp)
		rec.ReqMessages, rec.ReqBytes = 1, proto.Size(req)
		if err := cc.Invoke(ctx, p.Method, req, out); err != nil {
			return err
		}
		rec.RespMessages, rec.RespBytes = 1, proto.Size(out)
		return nil
	}
	// Cancelling on a receive failure unblocks a bidi sender stuck on flow control.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cs, err := cc.NewStream(ctx, StreamDescs[mode], p.Method)
	if err != nil {
		return err
	}
	var mu sync.Mutex // the sender goroutine (bidi) and the receiver both update rec
	send := func() error {
		for j := 0; j < p.ReqCount; j++ {
			req := request(p, j)
			if err := cs.SendMsg(req); err != nil {
				// io.EOF: the server ended the call; RecvMsg reports the status.
				if err == io.EOF {
					return nil
				}
				return err
			}
			mu.Lock()
			rec.ReqMessages++
			rec.ReqBytes += proto.Size(req)
			mu.Unlock()
		}
		return cs.CloseSend()
	}
	sent := make(chan error, 1)
	if mode == "bidi" {
		go func() { sent <- send() }()
	} else {
		sent <- send()
	}
	var recvErr error
	for k := 0; k <= p.RespCount; k++ { // one more than planned, to read the end
		out := new(benchpb.Resp)
		if recvErr = cs.RecvMsg(out); recvErr != nil {
			break
		}
		mu.Lock()
		rec.RespMessages++
		rec.RespBytes += proto.Size(out)
		mu.Unlock()
		if c, ok := ctx.Value(cancelAfterFirstKey{}).(context.CancelFunc); ok && k == 0 {
			c() // the response headers and a message arrived: RST_STREAM after them
		}
		if mode == "client-stream" {
			break // RecvMsg on a non-server-streaming call already read the status
		}
	}
	if recvErr != nil && recvErr != io.EOF {
		cancel()
	}
	sendErr := <-sent
	if recvErr == io.EOF || (mode == "client-stream" && recvErr == nil) {
		recvErr = nil
	} else if recvErr == nil {
		return fmt.Errorf("call %d: more responses than the %d planned", p.ID, p.RespCount)
	}
	if recvErr == nil && sendErr != nil {
		return sendErr
	}
	return recvErr
}
