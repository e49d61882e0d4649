package store

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/ztrade/pyrunner/pkg/backoff"
)

// TLSFiles are the files of a TLS connection to Redis (a rediss:// URL):
// the CA that signed Redis's certificate (PYRUNNER_REDIS_CA_FILE; empty:
// the system's roots) and an optional client certificate and its key
// (PYRUNNER_REDIS_CERT_FILE, PYRUNNER_REDIS_KEY_FILE), for a Redis that
// asks for one.
type TLSFiles struct{ CA, Cert, Key string }

func (f TLSFiles) empty() bool { return f == TLSFiles{} }

// WithTLSFiles is r with f's CA and client certificate. They need a
// rediss:// URL: a plain one would silently ignore them.
func (r Redis) WithTLSFiles(f TLSFiles) (Redis, error) {
	if f.empty() {
		return r, nil
	}
	if r.opt.TLSConfig == nil {
		return Redis{}, errors.New("PYRUNNER_REDIS_CA_FILE, _CERT_FILE or _KEY_FILE is set but PYRUNNER_REDIS_URL is not rediss:// (TLS)")
	}
	c := r.opt.TLSConfig.Clone()
	c.MinVersion = tls.VersionTLS12
	if f.CA != "" {
		pem, err := os.ReadFile(f.CA)
		if err != nil {
			return Redis{}, fmt.Errorf("PYRUNNER_REDIS_CA_FILE: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return Redis{}, fmt.Errorf("PYRUNNER_REDIS_CA_FILE: %s holds no PEM certificate", f.CA)
		}
	}
	if (f.Cert == "") != (f.Key == "") {
		return Redis{}, errors.New("PYRUNNER_REDIS_CERT_FILE and PYRUNNER_REDIS_KEY_FILE go together: set both or neither")
	}
	if f.Cert != "" {
		pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return Redis{}, fmt.Errorf("PYRUNNER_REDIS_CERT_FILE/_KEY_FILE: %w", err)
		}
		c.Certificates = []tls.Certificate{pair}
	}
	o := *r.opt
	o.TLSConfig = c
	return Redis{opt: &o}, nil
}

// misconfigured turns a failed first connection that no retry can mend
// into a permanent error naming the setting to fix: a certificate the CA
// does not vouch for, a rediss:// URL against a plain port, a redis://
// URL against a TLS port. Anything else (Redis still starting, a network
// blip) is returned as it was, to be retried.
func (r Redis) misconfigured(err error) error {
	var (
		verify   *tls.CertificateVerificationError
		hostname x509.HostnameError
		record   tls.RecordHeaderError
	)
	switch {
	case r.opt.TLSConfig != nil && (errors.As(err, &verify) || errors.As(err, &hostname)):
		return backoff.Permanent(fmt.Errorf("redis's TLS certificate is not one PYRUNNER_REDIS_CA_FILE vouches for "+
			"(or not for the URL's host): %w", err))
	case r.opt.TLSConfig != nil && errors.As(err, &record):
		return backoff.Permanent(fmt.Errorf("PYRUNNER_REDIS_URL is rediss:// but redis at %s does not speak TLS "+
			"(a plain port? use redis:// there): %w", r.opt.Addrs[0], err))
	case r.opt.TLSConfig == nil && r.opt.MasterName == "" && closedOnUs(err) && speaksTLS(r.opt.Addrs[0]):
		return backoff.Permanent(fmt.Errorf("PYRUNNER_REDIS_URL is redis:// (plain) but redis at %s speaks TLS: "+
			"use rediss:// and PYRUNNER_REDIS_CA_FILE: %w", r.opt.Addrs[0], err))
	}
	return err
}

// checkTLS shakes hands with a rediss:// URL's Redis before anything else
// is sent: a plain port would otherwise wait for the rest of a request
// that never comes, and a client would hang instead of saying why. A
// certificate the CA does not vouch for, or a port that answers as plain
// Redis, is a permanent error; anything else is retried.
func (r Redis) checkTLS() error {
	if r.opt.TLSConfig == nil || r.opt.MasterName != "" {
		return nil
	}
	addr := r.opt.Addrs[0]
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", addr, r.opt.TLSConfig)
	if err == nil {
		return conn.Close()
	}
	if speaksPlainRedis(addr) {
		return backoff.Permanent(fmt.Errorf("PYRUNNER_REDIS_URL is rediss:// but redis at %s answers plain text "+
			"(a plain port? use redis:// there): %w", addr, err))
	}
	return r.misconfigured(fmt.Errorf("store: TLS handshake with %s: %w", addr, err))
}

// speaksPlainRedis reports whether addr answers a plain PING as Redis
// does (+PONG, or -NOAUTH without the password).
func speaksPlainRedis(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(3 * time.Second)); err != nil {
		return false
	}
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	b := make([]byte, 1)
	_, err = io.ReadFull(conn, b)
	return err == nil && (b[0] == '+' || b[0] == '-')
}

// closedOnUs: the server hung up on what it was sent, as a TLS port does
// with plain text.
func closedOnUs(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}

// speaksTLS reports whether addr completes a TLS handshake (whoever signed
// its certificate).
func speaksTLS(addr string) bool {
	d := &net.Dialer{Timeout: 3 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // a probe: nothing is sent
	if err != nil {
		return false
	}
	_ = conn.Close()
	return true
}
