package kline

// ExecForTest runs a statement through d's read-only connection; tests use
// it to prove writes are refused.
func ExecForTest(d *DB, q string) error { return d.gorm.Exec(q).Error }
