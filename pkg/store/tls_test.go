package store

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TLS settings that cannot work are refused before anything connects,
// each error naming the setting to fix.
func TestWithTLSFilesRefusesWhatCannotWork(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	plain, err := ParseRedisURL("redis://127.0.0.1:6379/0")
	if err != nil {
		t.Fatal(err)
	}
	tlsURL, err := ParseRedisURL("rediss://127.0.0.1:6380/0")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		r     Redis
		files TLSFiles
		want  string
	}{
		{"CAWithPlainURL", plain, TLSFiles{CA: notPEM}, "is not rediss://"},
		{"MissingCA", tlsURL, TLSFiles{CA: filepath.Join(dir, "missing.crt")}, "PYRUNNER_REDIS_CA_FILE"},
		{"CANotPEM", tlsURL, TLSFiles{CA: notPEM}, "holds no PEM certificate"},
		{"CertWithoutKey", tlsURL, TLSFiles{Cert: notPEM}, "go together"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := c.r.WithTLSFiles(c.files); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("err = %v, want one with %q", err, c.want)
			}
		})
	}
	if r, err := plain.WithTLSFiles(TLSFiles{}); err != nil || r.opt.TLSConfig != nil {
		t.Errorf("no TLS files on a plain URL: %v", err)
	}
}
