package bench

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io/ioutil"
	"os"
	"path/filepath"

	"google.golang.org/grpc/credentials"
)

// tlsFlags are the TLS options both targets take (scenarios/README.md, "TLS").
type tlsFlags struct {
	dir, version, keylog string
}

func (t *tlsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&t.dir, "tls-dir", "", "speak TLS with the files in DIR (ca.pem, server.pem, server.key)")
	fs.StringVar(&t.version, "tls-version", "1.3", "1.2 or 1.3")
	fs.StringVar(&t.keylog, "keylog", "", "append TLS secrets here (NSS key log format)")
}

// creds returns nil when TLS is off. The key log file stays open for the
// process's life: crypto/tls writes each secret to it unbuffered.
func (t *tlsFlags) creds(server bool, serverName string) (credentials.TransportCredentials, error) {
	if t.dir == "" {
		return nil, nil
	}
	var ver uint16
	switch t.version {
	case "1.2":
		ver = tls.VersionTLS12
	case "1.3", "":
		ver = tls.VersionTLS13
	default:
		return nil, fmt.Errorf("--tls-version must be 1.2 or 1.3, not %q", t.version)
	}
	cfg := &tls.Config{MinVersion: ver, MaxVersion: ver}
	if server {
		cert, err := tls.LoadX509KeyPair(filepath.Join(t.dir, "server.pem"), filepath.Join(t.dir, "server.key"))
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{cert}
	} else {
		pem, err := ioutil.ReadFile(filepath.Join(t.dir, "ca.pem"))
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.New("ca.pem holds no certificate")
		}
		cfg.RootCAs = pool
		cfg.ServerName = serverName
	}
	if t.keylog != "" {
		f, err := os.OpenFile(t.keylog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return nil, err
		}
		cfg.KeyLogWriter = f
	}
	return credentials.NewTLS(cfg), nil
}
