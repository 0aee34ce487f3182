// Command http1-server is the Go HTTP/1.0 and HTTP/1.1 keep-alive target
// server, and with --proto h2c the h2c-plain one: net/http's own HTTP/2 over
// cleartext with prior knowledge (no upgrade), the same handler. The request path says what to answer ("/r/<status>/<size>/<mode>",
// see scenarios/plan.md), so it behaves like scenarios/py/http1_server.py.
// Control protocol: scenarios/README.md.
package main

import (
	"bufio"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"probebench/scenarios/http1/plan"
	"probebench/scenarios/http1/tlsconf"
)

// idleTimeout must outlive the runner's late-attach pause between WARM and GO. In a guest
// kernel under QEMU's emulation that pause (a bcc compile) took 310 s, so the warm
// connections were closed before GO; it is scaled like the runner's own start-up waits
// (PROBEBENCH_SLOWDOWN, harness.model.waited).
func idleTimeout() time.Duration {
	d := 300 * time.Second
	if f, err := strconv.ParseFloat(os.Getenv("PROBEBENCH_SLOWDOWN"), 64); err == nil && f > 1 {
		d = time.Duration(float64(d) * f)
	}
	return d
}

// maxReqBody bounds what one request may make us read.
const maxReqBody = 4 * plan.MaxBody

type handler struct{ http10 bool }

func fail(w http.ResponseWriter, r *http.Request, reason string) {
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Content-Length", strconv.Itoa(len(reason)))
	w.Header().Set("Connection", "close")
	w.WriteHeader(http.StatusBadRequest)
	if r.Method != http.MethodHead {
		_, _ = io.WriteString(w, reason)
	}
}

// readBody reads the whole body (net/http de-chunks) and checks the pattern.
func readBody(r *http.Request) (int, error) {
	buf := make([]byte, 32*1024)
	total := 0
	body := io.LimitReader(r.Body, maxReqBody+1)
	for range maxReqBody/len(buf) + 2 { // bounded: each round reads >= 1 byte or ends
		n, err := body.Read(buf)
		if !plan.MatchesPattern(buf[:n], total) {
			return total, errors.New("request body differs from the pattern")
		}
		total += n
		if total > maxReqBody {
			return total, errors.New("request body too large")
		}
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
	return total, errors.New("request body read did not finish")
}

func (h handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	reqBytes, err := readBody(r)
	if err != nil {
		fail(w, r, err.Error())
		return
	}
	status, size, mode, ok := plan.ParseRoute(r.RequestURI)
	if !ok {
		fail(w, r, "bad route")
		return
	}
	if mode == "ch" && !r.ProtoAtLeast(1, 1) {
		fail(w, r, "chunked response needs HTTP/1.1")
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", "application/octet-stream")
	hd.Set("X-Req-Bytes", strconv.Itoa(reqBytes))
	if id := r.Header.Get("X-Probebench-Id"); id != "" {
		hd.Set("X-Probebench-Id", id)
	}
	if status == http.StatusMovedPermanently {
		hd.Set("Location", plan.Location)
	}
	if h.http10 {
		hd.Set("Connection", "close")
	}
	if plan.NoBody(status) {
		w.WriteHeader(status) // 204, 304: no length header, no body
		return
	}
	if mode == "cl" || r.Method == http.MethodHead {
		hd.Set("Content-Length", strconv.Itoa(size))
		w.WriteHeader(status)
		if r.Method != http.MethodHead && size > 0 {
			_, _ = w.Write(plan.Body(size))
		}
		return
	}
	// Chunked: flushing the header before any body byte makes net/http chunk
	// instead of computing a Content-Length; one flush per piece gives one
	// chunk per piece, like the Python server.
	w.WriteHeader(status)
	fl, _ := w.(http.Flusher)
	if fl == nil {
		return
	}
	fl.Flush()
	data := plan.Body(size)
	for k := 0; k < size; k += plan.Chunk {
		_, _ = w.Write(data[k:min(k+plan.Chunk, size)])
		fl.Flush()
	}
}

func main() {
	proto := flag.String("proto", "", "http10, http11 or h2c")
	host := flag.String("host", "127.0.0.1", "address to bind")
	port := flag.Int("port", 0, "port to bind")
	maxSeconds := flag.Float64("max-seconds", 3600, "exit by itself after this long")
	tlsDir := flag.String("tls-dir", "", "speak TLS with DIR/server.pem and DIR/server.key")
	tlsVersion := flag.String("tls-version", "1.3", "1.2 or 1.3")
	keylog := flag.String("keylog", "", "append TLS secrets here (NSS key log format)")
	flag.Parse()
	if *proto != "http10" && *proto != "http11" && *proto != "h2c" {
		fmt.Fprintln(os.Stderr, "--proto must be http10, http11 or h2c")
		os.Exit(2)
	}
	if *proto == "h2c" && *tlsDir != "" {
		fmt.Fprintln(os.Stderr, "--proto h2c is cleartext HTTP/2: no --tls-dir")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(*host, strconv.Itoa(*port)))
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot bind %s:%d: %v\n", *host, *port, err)
		os.Exit(3)
	}
	if *tlsDir != "" {
		cfg, closer, err := tlsconf.Config(*tlsDir, *tlsVersion, *keylog, true, "")
		if err != nil {
			fmt.Fprintf(os.Stderr, "TLS: %v\n", err)
			os.Exit(2)
		}
		defer closer.Close()
		cfg.NextProtos = []string{"http/1.1"} // never h2: this is the HTTP/1 target
		ln = tls.NewListener(ln, cfg)
	}
	srv := &http.Server{
		Handler:           handler{http10: *proto == "http10"},
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       idleTimeout(),
	}
	if *proto == "http10" {
		srv.SetKeepAlivesEnabled(false)
	}
	if *proto == "h2c" {
		// HTTP/2 only, prior knowledge: a client must open with the preface.
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		srv.Protocols = &p
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	eof := make(chan struct{})
	go func() {
		// Returns at EOF: the runner closing our stdin is the stop signal.
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
		}
		close(eof)
	}()
	fmt.Printf("READY %d\n", ln.Addr().(*net.TCPAddr).Port)

	code := 0
	select {
	case <-stop:
	case <-eof:
	case <-time.After(time.Duration(*maxSeconds * float64(time.Second))):
	case err := <-served:
		fmt.Fprintf(os.Stderr, "serve: %v\n", err)
		code = 1
	}
	_ = srv.Close()
	os.Exit(code)
}
