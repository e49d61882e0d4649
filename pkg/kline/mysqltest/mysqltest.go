// Package mysqltest gives tests a real MariaDB/MySQL database of demo
// K-lines and a read-only user for it. It uses the server at
// PYRUNNER_TEST_MYSQL_DSN (default root with no password on
// 127.0.0.1:3306). When no server answers, the test is skipped, unless
// PYRUNNER_REQUIRE_MYSQL=1 (CI sets it), which makes that a failure.
package mysqltest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"

	"github.com/ztrade/pyrunner/pkg/demodata"
	"github.com/ztrade/pyrunner/pkg/kline"
)

// DB is a fresh database with a user that may only read it.
type DB struct {
	Admin    *demodata.Writer // root connection to the test database
	Host     string
	Port     int
	Name     string
	User     string
	Password string
}

// Config is the read-only configuration for the test user.
func (d *DB) Config() kline.Config {
	return kline.Config{Type: "mysql", Host: d.Host, Port: d.Port, Database: d.Name, User: d.User, Password: d.Password}
}

// Env is the same configuration as PYRUNNER_READONLY_* variables.
func (d *DB) Env() map[string]string {
	return map[string]string{"PYRUNNER_READONLY_TYPE": "mysql", "PYRUNNER_READONLY_HOST": d.Host,
		"PYRUNNER_READONLY_PORT": "3306", "PYRUNNER_READONLY_DATABASE": d.Name,
		"PYRUNNER_READONLY_USER": d.User, "PYRUNNER_READONLY_PASSWORD": d.Password}
}

func token() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// New creates the database and the read-only user, dropped at cleanup.
func New(t testing.TB) *DB {
	t.Helper()
	dsn := os.Getenv("PYRUNNER_TEST_MYSQL_DSN")
	if dsn == "" {
		dsn = "root:@tcp(127.0.0.1:3306)/"
	}
	ctx := context.Background()
	root, err := demodata.OpenWriter("mysql", dsn)
	if err == nil {
		err = root.Exec(ctx, "SELECT 1")
	}
	if err != nil {
		if os.Getenv("PYRUNNER_REQUIRE_MYSQL") == "1" {
			t.Fatalf("MySQL required but not reachable at %s: %v", dsn, err)
		}
		t.Skipf("no MySQL at %s: %v", dsn, err)
	}
	d := &DB{Host: "127.0.0.1", Port: 3306, Name: "pyrunner_test_" + token(), User: "pyro_" + token(), Password: "pw-" + token()}
	for _, q := range []string{
		"CREATE DATABASE `" + d.Name + "`",
		"CREATE USER '" + d.User + "'@'localhost' IDENTIFIED BY '" + d.Password + "'",
		"CREATE USER '" + d.User + "'@'127.0.0.1' IDENTIFIED BY '" + d.Password + "'",
		"GRANT SELECT ON `" + d.Name + "`.* TO '" + d.User + "'@'localhost'",
		"GRANT SELECT ON `" + d.Name + "`.* TO '" + d.User + "'@'127.0.0.1'",
	} {
		if err := root.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	t.Cleanup(func() {
		for _, q := range []string{"DROP DATABASE IF EXISTS `" + d.Name + "`",
			"DROP USER IF EXISTS '" + d.User + "'@'localhost'", "DROP USER IF EXISTS '" + d.User + "'@'127.0.0.1'"} {
			if err := root.Exec(ctx, q); err != nil {
				t.Errorf("clean up: %s: %v", q, err)
			}
		}
		root.Close()
	})
	base := strings.TrimSuffix(dsn, "/")
	if i := strings.LastIndex(base, "/"); i > strings.Index(base, ")") {
		base = base[:i]
	}
	admin, err := demodata.OpenWriter("mysql", base+"/"+d.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	d.Admin = admin
	return d
}

// RootURI is a DSN for root on the test database (for proving that the
// read-only session refuses writes even to a user allowed to write).
func (d *DB) RootURI() string {
	dsn := os.Getenv("PYRUNNER_TEST_MYSQL_DSN")
	if dsn == "" {
		dsn = "root:@tcp(127.0.0.1:3306)/"
	}
	i := strings.LastIndex(dsn, "/")
	return dsn[:i] + "/" + d.Name
}
