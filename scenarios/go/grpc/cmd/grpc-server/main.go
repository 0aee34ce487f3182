// Command grpc-server is the grpc-go scenario server (scenarios/README.md).
package main

import (
	"os"

	"probebench/grpcbench/bench"
)

func main() {
	os.Exit(bench.ServerMain(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
