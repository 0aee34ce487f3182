// A TLS client built with Debian's Go 1.19 (scripts/build-grpc-targets): it dials the
// address given, writes its second argument, reads once and prints what it read. Its crypto/tls.(*Conn).Read is the
// older compiler's (frame allocated before the frame pointer is saved), which the Go TLS
// probes' spill-slot check (harness/collectors/gobin/spills.py) is tested on.
package main

import (
	"crypto/tls"
	"fmt"
	"os"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: tls-client-go1.19 HOST:PORT TEXT")
		os.Exit(2)
	}
	c, err := tls.Dial("tcp", os.Args[1], &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer c.Close()
	if _, err := c.Write([]byte(os.Args[2])); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	b := make([]byte, 4096)
	n, err := c.Read(b)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Stdout.Write(b[:n])
}
