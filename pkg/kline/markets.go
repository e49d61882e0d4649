package kline

import (
	"context"
	"fmt"
	"regexp"
	"sort"
)

// Table is one K-line table: a market at one candle size, and the start
// of its newest candle (unix seconds; 0 for an empty table).
type Table struct {
	Exchange string `json:"exchange"`
	Symbol   string `json:"symbol"`
	BinSize  string `json:"binSize"`
	Last     int64  `json:"last"`
}

// tableRe splits ztrade's table names, <exchange>_<symbol>_<binSize>: the
// exchange has no underscore, the symbol may.
var tableRe = regexp.MustCompile(`^([A-Za-z0-9-]+)_([A-Za-z0-9_-]+)_([0-9]+[smhdw]?)$`)

// Tables lists the K-line tables of the database (at most max of them,
// by name), each with its newest candle, for pickers such as the
// dashboard's research editor.
func (d *DB) Tables(ctx context.Context, max int) ([]Table, error) {
	names, err := d.gorm.WithContext(ctx).Migrator().GetTables()
	if err != nil {
		return nil, fmt.Errorf("kline: list tables: %w", err)
	}
	sort.Strings(names)
	var out []Table
	for _, n := range names {
		m := tableRe.FindStringSubmatch(n)
		if m == nil {
			continue
		}
		if len(out) >= max {
			break
		}
		var last *int64
		if err := d.gorm.WithContext(ctx).Raw("SELECT MAX(start) FROM `" + n + "`").Scan(&last).Error; err != nil { // n matched tableRe: no quote in it
			return nil, fmt.Errorf("kline: newest candle of %s: %w", n, err)
		}
		mk := Table{Exchange: m[1], Symbol: m[2], BinSize: m[3]}
		if last != nil {
			mk.Last = *last
		}
		out = append(out, mk)
	}
	return out, nil
}
