// Command grpc-client is the grpc-go scenario client (scenarios/README.md).
package main

import (
	"os"

	"probebench/grpcbench/bench"
)

func main() {
	os.Exit(bench.ClientMain(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
