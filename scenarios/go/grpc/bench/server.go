package bench

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"google.golang.org/grpc"
	_ "google.golang.org/grpc/encoding/gzip" // serves clients that send grpc-encoding: gzip
	"google.golang.org/grpc/keepalive"
)

// MaxMsgSize is raised on both sides so the >= 1 MiB messages pass.
const MaxMsgSize = 8 << 20

// ServerMain runs the server per scenarios/README.md and returns the exit code.
func ServerMain(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("grpc-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	proto := fs.String("proto", "grpc", "only grpc")
	host := fs.String("host", "127.0.0.1", "address to bind")
	port := fs.Int("port", 0, "port to bind")
	fs.String("mode", "", "ignored: the server serves every mode")
	lifetime := fs.Duration("max-lifetime", time.Hour, "exit 0 after this long regardless")
	var tf tlsFlags
	tf.register(fs)
	connAge := fs.Duration("max-connection-age", 0,
		"send GOAWAY to each connection after this long (0: never); clients reconnect")
	maxStreams := fs.Uint("max-concurrent-streams", 0,
		"SETTINGS_MAX_CONCURRENT_STREAMS (0: grpc-go's default); a stream over it is refused")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *proto != "grpc" {
		fmt.Fprintf(stderr, "grpc-server: unsupported --proto %q\n", *proto)
		return 2
	}
	lis, err := net.Listen("tcp", net.JoinHostPort(*host, strconv.Itoa(*port)))
	if err != nil {
		fmt.Fprintf(stderr, "grpc-server: cannot bind %s:%d: %v\n", *host, *port, err)
		return 3
	}
	// Before READY: a runner may send SIGTERM as soon as it reads that line.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	creds, err := tf.creds(true, "")
	if err != nil {
		fmt.Fprintf(stderr, "grpc-server: TLS: %v\n", err)
		return 2
	}
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(MaxMsgSize), grpc.MaxSendMsgSize(MaxMsgSize)}
	if *connAge > 0 {
		opts = append(opts, grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionAge: *connAge, MaxConnectionAgeGrace: 5 * time.Second}))
	}
	if *maxStreams > 0 {
		opts = append(opts, grpc.MaxConcurrentStreams(uint32(*maxStreams)))
	}
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	srv := grpc.NewServer(opts...)
	srv.RegisterService(&ServiceDesc, Server{})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	fmt.Fprintf(stdout, "READY %d\n", lis.Addr().(*net.TCPAddr).Port)

	// Stop on stdin EOF, SIGTERM/SIGINT, a Serve failure or the lifetime cap.
	stdinClosed := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdin)
		for sc.Scan() {
		}
		close(stdinClosed)
	}()
	code := 0
	select {
	case <-stdinClosed:
	case <-sigs:
	case <-time.After(*lifetime):
		fmt.Fprintln(stderr, "grpc-server: --max-lifetime reached, exiting")
	case err := <-served:
		fmt.Fprintf(stderr, "grpc-server: serve failed: %v\n", err)
		code = 1
	}
	stopWithin(srv, 2*time.Second)
	return code
}

// stopWithin lets in-flight calls finish, but never waits longer than d.
func stopWithin(srv *grpc.Server, d time.Duration) {
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		srv.Stop()
		<-done
	}
}
