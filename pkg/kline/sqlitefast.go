package kline

// The SQLite range read in C: mattn/go-sqlite3 (which GORM's sqlite
// driver uses, and which links SQLite into the binary) costs a cgo call
// per cell through database/sql's driver interface, eight per candle:
// about two thirds of a 1M-row load. readSQLite steps the same
// connection's statement in C and writes whole batches of rows straight
// into the frame's columns, one cgo call per 4 096 candles.

/*
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct sqlite3 sqlite3;
typedef struct sqlite3_stmt sqlite3_stmt;
typedef struct sqlite3_value sqlite3_value;
// SQLite's own API, linked in by github.com/mattn/go-sqlite3.
extern int sqlite3_prepare_v2(sqlite3 *, const char *, int, sqlite3_stmt **, const char **);
extern int sqlite3_bind_int64(sqlite3_stmt *, int, long long);
extern int sqlite3_step(sqlite3_stmt *);
extern long long sqlite3_column_int64(sqlite3_stmt *, int);
extern sqlite3_value *sqlite3_column_value(sqlite3_stmt *, int);
extern int sqlite3_value_type(sqlite3_value *);
extern double sqlite3_value_double(sqlite3_value *);
extern int sqlite3_finalize(sqlite3_stmt *);
extern const char *sqlite3_errmsg(sqlite3 *);

enum { PR_ROW = 100, PR_DONE = 101, PR_NULL = 5 };

// pr_real is a REAL cell, NULL as NaN. It looks the cell up once
// (sqlite3_column_type and then sqlite3_column_double would twice, each
// time through the statement's checks, a fifth of a load's CPU); the
// value is read at once, before the statement steps on.
static double pr_real(sqlite3_stmt *st, int i) {
	sqlite3_value *v = sqlite3_column_value(st, i);
	return sqlite3_value_type(v) == PR_NULL ? NAN : sqlite3_value_double(v);
}

// pr_read steps st for up to max rows into the columns. It returns the
// rows read; *rc is SQLITE_ROW while more may follow, SQLITE_DONE at the
// end, or the error code.
static long pr_read(sqlite3_stmt *st, long max, int64_t *start, double *o, double *h, double *l, double *c,
                    double *v, double *t, int64_t *trades, int *rc) {
	long n = 0;
	while (n < max) {
		int r = sqlite3_step(st);
		if (r != PR_ROW) {
			*rc = r;
			return n;
		}
		start[n] = sqlite3_column_int64(st, 0);
		o[n] = pr_real(st, 1);
		h[n] = pr_real(st, 2);
		l[n] = pr_real(st, 3);
		c[n] = pr_real(st, 4);
		v[n] = pr_real(st, 5);
		t[n] = pr_real(st, 6);
		trades[n] = sqlite3_column_int64(st, 7);
		n++;
	}
	*rc = PR_ROW;
	return n;
}
*/
import "C"

import (
	"context"
	"fmt"
	"reflect"
	"unsafe"

	"github.com/ztrade/pyrunner/pkg/frame"
)

const sqliteBatch = 4096

// sqliteHandle is the sqlite3* behind a mattn/go-sqlite3 connection, or
// nil when dc is not one (the field is unexported: read by reflection).
func sqliteHandle(dc any) *C.sqlite3 {
	v := reflect.ValueOf(dc)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return nil
	}
	f := v.Elem().FieldByName("db")
	if !f.IsValid() || f.Kind() != reflect.Pointer {
		return nil
	}
	return (*C.sqlite3)(unsafe.Pointer(f.Pointer()))
}

// readSQLite runs q (placeholders bound to args, all integers) on db and
// appends its rows, the eight K-line columns in order, to f; a full f is
// flushed when flush is set (a block's batch, see readQuery), else grown.
func readSQLite(ctx context.Context, db *C.sqlite3, q string, args []int64, f *frame.Frame, flush func() error) error {
	cq := C.CString(q)
	defer C.free(unsafe.Pointer(cq))
	var st *C.sqlite3_stmt
	if rc := C.sqlite3_prepare_v2(db, cq, -1, &st, nil); rc != 0 { //nolint:gocritic // cgo's expansion of the call, not two identical sides
		return fmt.Errorf("prepare: %s (%d)", C.GoString(C.sqlite3_errmsg(db)), int(rc))
	}
	defer C.sqlite3_finalize(st)
	for i, a := range args {
		if rc := C.sqlite3_bind_int64(st, C.int(i+1), C.longlong(a)); rc != 0 {
			return fmt.Errorf("bind: %s (%d)", C.GoString(C.sqlite3_errmsg(db)), int(rc))
		}
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := f.Len()
		k := min(sqliteBatch, cap(f.Start)-n)
		if k == 0 && flush != nil {
			if err := flush(); err != nil {
				return err
			}
			n, k = 0, min(sqliteBatch, cap(f.Start))
		} else if k == 0 {
			f.Grow(max(sqliteBatch, n)) // doubling, should the hint fall short
			k = sqliteBatch
		}
		f.Start, f.Open, f.High, f.Low = f.Start[:n+k], f.Open[:n+k], f.High[:n+k], f.Low[:n+k]
		f.Close, f.Volume, f.Turnover, f.Trades = f.Close[:n+k], f.Volume[:n+k], f.Turnover[:n+k], f.Trades[:n+k]
		var rc C.int
		got := int(C.pr_read(st, C.long(k),
			(*C.int64_t)(unsafe.Pointer(&f.Start[n])), (*C.double)(&f.Open[n]), (*C.double)(&f.High[n]), (*C.double)(&f.Low[n]),
			(*C.double)(&f.Close[n]), (*C.double)(&f.Volume[n]), (*C.double)(&f.Turnover[n]), (*C.int64_t)(unsafe.Pointer(&f.Trades[n])), &rc))
		m := n + got
		f.Start, f.Open, f.High, f.Low = f.Start[:m], f.Open[:m], f.High[:m], f.Low[:m]
		f.Close, f.Volume, f.Turnover, f.Trades = f.Close[:m], f.Volume[:m], f.Turnover[:m], f.Trades[:m]
		switch rc {
		case C.PR_ROW:
		case C.PR_DONE:
			return nil
		default:
			return fmt.Errorf("step: %s (%d)", C.GoString(C.sqlite3_errmsg(db)), int(rc))
		}
	}
}
