package kline

import "gorm.io/gorm"

// ExecForTest runs a statement through d's read-only connection; tests use
// it to prove writes are refused.
func ExecForTest(d *DB, q string) error { return d.gorm.Exec(q).Error }

// Gorm is d's read-only connection, for tests that reach the driver.
func Gorm(d *DB) *gorm.DB { return d.gorm }

// SQLiteHandle is sqliteHandle, for the test that the fast path is taken.
var SQLiteHandle = sqliteHandle
