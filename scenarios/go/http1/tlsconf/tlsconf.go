// Package tlsconf builds the targets' TLS configuration from the files the
// runner makes per run (scenarios/README.md, "TLS"): ca.pem, server.pem and
// server.key in one directory, a pinned TLS version, and a key log.
package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Version maps "1.2"/"1.3" to crypto/tls's constant.
func Version(v string) (uint16, error) {
	switch v {
	case "1.2":
		return tls.VersionTLS12, nil
	case "1.3", "":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("--tls-version must be 1.2 or 1.3, not %q", v)
}

// Config returns the server's or the client's config; the key log (NSS
// format, for Wireshark) is appended to keylog when it is not empty. The
// returned closer closes the key log.
func Config(dir, version, keylog string, server bool, serverName string) (*tls.Config, io.Closer, error) {
	ver, err := Version(version)
	if err != nil {
		return nil, nil, err
	}
	cfg := &tls.Config{MinVersion: ver, MaxVersion: ver}
	if server {
		cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key"))
		if err != nil {
			return nil, nil, err
		}
		cfg.Certificates = []tls.Certificate{cert}
	} else {
		pem, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
		if err != nil {
			return nil, nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nil, errors.New("ca.pem holds no certificate")
		}
		cfg.RootCAs = pool
		cfg.ServerName = serverName
	}
	var closer io.Closer = io.NopCloser(nil)
	if keylog != "" {
		f, err := os.OpenFile(keylog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return nil, nil, err
		}
		cfg.KeyLogWriter = f
		closer = f
	}
	return cfg, closer, nil
}
