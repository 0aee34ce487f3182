//go:build tools

// Package tools pins protoc-gen-go to this module's google.golang.org/protobuf
// version: scripts/build-grpc-targets builds the generator from here, so the
// generated messages always match the runtime they are compiled against.
package tools

import (
	_ "google.golang.org/protobuf/cmd/protoc-gen-go"
)
