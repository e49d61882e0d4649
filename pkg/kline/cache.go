package kline

import (
	"container/list"
	"context"
	"database/sql"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/ztrade/pyrunner/pkg/frame"
)

// Cache keeps recently read K-lines in memory, per table, in the columnar
// form runs get them in (PYRUNNER_KLINE_CACHE_MB bounds it; least recently
// used tables go first).
//
// ztrade's history does not change once closed: only the newest candle of
// a table is still being written, and new candles come after it. So a read
// remembers the newest start the table had (its tail); later, the cached
// candles before that tail are served from memory, and only what starts at
// the old tail or later is read again, after one index probe
// (MAX(start)) that moves the tail. A candle written after caching — the
// newest one updated, or one appended — is in the next run's frame. What
// the cache does not see is history rewritten behind the tail (a backfill
// of old candles): such a table needs its entry dropped (a restart, or
// eviction).
type Cache struct {
	mu    sync.Mutex
	max   int64
	used  int64
	lru   *list.List // of *cacheEntry, most recent first
	by    map[string]*list.Element
	hits  atomic.Int64
	miss  atomic.Int64
	reads atomic.Int64 // rows read from the database
}

type cacheEntry struct {
	table  string
	lo, hi int64 // the frame holds every candle with lo <= start <= hi
	tail   int64 // the table's newest start when read: candles before it are closed
	f      *frame.Frame
}

// NewCache makes a cache of at most maxBytes (8 bytes a column a candle).
func NewCache(maxBytes int64) *Cache {
	return &Cache{max: maxBytes, lru: list.New(), by: map[string]*list.Element{}}
}

// Stats is the cache's hits, misses and bytes in use.
func (c *Cache) Stats() (hits, misses, used int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits.Load(), c.miss.Load(), c.used
}

func (c *Cache) get(table string) *cacheEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.by[table]; ok {
		c.lru.MoveToFront(el)
		return el.Value.(*cacheEntry)
	}
	return nil
}

func (c *Cache) put(e *cacheEntry) {
	size := e.f.ByteLen()
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.by[e.table]; ok {
		c.used -= el.Value.(*cacheEntry).f.ByteLen()
		c.lru.Remove(el)
		delete(c.by, e.table)
	}
	if size > c.max {
		return // larger than the whole cache: not kept
	}
	for c.used+size > c.max && c.lru.Len() > 0 {
		old := c.lru.Remove(c.lru.Back()).(*cacheEntry)
		delete(c.by, old.table)
		c.used -= old.f.ByteLen()
	}
	c.by[e.table] = c.lru.PushFront(e)
	c.used += size
}

// index is the first row of f whose start is >= t.
func index(f *frame.Frame, t int64) int {
	return sort.Search(f.Len(), func(i int) bool { return f.Start[i] >= t })
}

// tailOf is the table's newest start (math.MinInt64 when empty).
func (d *DB) tailOf(ctx context.Context, table string) (int64, error) {
	var t sql.NullInt64
	if err := d.gorm.WithContext(ctx).Raw("SELECT MAX(start) FROM `" + table + "`").Row().Scan(&t); err != nil {
		return 0, fmt.Errorf("kline: newest candle of %s: %w", table, err)
	}
	if !t.Valid {
		return -1 << 63, nil
	}
	return t.Int64, nil
}

// cachedRead is read through the cache: it returns the candles of table
// with start in [start, end] (at most limit when limit > 0) and whether
// closed history came from memory.
func (d *DB) cachedRead(ctx context.Context, table string, info tableInfo, start, end, limit, size int64) (*frame.Frame, bool, error) {
	c := d.cache
	if c == nil {
		f, err := d.read(ctx, table, info, start, end, limit, size)
		return f, false, err
	}
	tail, err := d.tailOf(ctx, table)
	if err != nil {
		return nil, false, err
	}
	e := c.get(table)
	if e == nil || start < e.lo || start > e.hi || tail < e.tail {
		c.miss.Add(1)
		f, err := d.read(ctx, table, info, start, end, limit, size)
		if err != nil {
			return nil, false, err
		}
		c.reads.Add(int64(f.Len()))
		f = share(f)
		c.put(&cacheEntry{table: table, lo: start, hi: coverEnd(f, end, limit), tail: tail, f: f})
		return f, false, nil
	}
	c.hits.Add(1)
	closed := min(end, e.hi, e.tail-1) // cached candles up to here are final
	a, b := index(e.f, start), index(e.f, closed+1)
	part := e.f.Slice(a, b)
	if (limit > 0 && int64(part.Len()) >= limit) || end <= closed {
		if limit > 0 && int64(part.Len()) > limit {
			part = part.Head(int(limit))
		}
		return part, true, nil
	}
	restLimit := int64(0)
	if limit > 0 {
		restLimit = limit - int64(part.Len())
	}
	rest, err := d.read(ctx, table, info, closed+1, end, restLimit, size)
	if err != nil {
		return nil, false, err
	}
	c.reads.Add(int64(rest.Len()))
	newHi := coverEnd(rest, end, restLimit)
	if n := rest.Len(); n <= e.f.Len()-b && sameRows(e.f, b, rest) {
		// Nothing changed (the usual case: the newest candle read again, as
		// it was): answer from memory without a copy.
		c.put(&cacheEntry{table: table, lo: e.lo, hi: max(e.hi, newHi), tail: tail, f: e.f})
		return e.f.Slice(a, b+n), true, nil
	}
	out := &frame.Frame{}
	out.Grow(part.Len() + rest.Len())
	out.AppendFrame(part)
	out.AppendFrame(rest)
	// The entry grows to cover what was just read, from its own start
	// (when the call started there too, its answer is the new entry).
	if a == 0 {
		out = share(out)
		c.put(&cacheEntry{table: table, lo: e.lo, hi: newHi, tail: tail, f: out})
		return out, true, nil
	}
	grown := &frame.Frame{}
	head := e.f.Slice(0, b)
	grown.Grow(head.Len() + rest.Len())
	grown.AppendFrame(head)
	grown.AppendFrame(rest)
	c.put(&cacheEntry{table: table, lo: e.lo, hi: newHi, tail: tail, f: share(grown)})
	return out, true, nil
}

// share moves a large frame into a sealed memory file, so that every run
// that asks for it again maps it without a copy; one that cannot be
// shared is kept as it is.
func share(f *frame.Frame) *frame.Frame {
	g, _ := frame.ShareLarge(f)
	return g
}

// sameRows reports whether g's rows equal f's from row i on.
func sameRows(f *frame.Frame, i int, g *frame.Frame) bool {
	eq := func(a, b float64) bool { return a == b || (a != a && b != b) } // NaN turnover equals NaN
	for j := 0; j < g.Len(); j++ {
		k := i + j
		if f.Start[k] != g.Start[j] || f.Trades[k] != g.Trades[j] || !eq(f.Open[k], g.Open[j]) || !eq(f.High[k], g.High[j]) ||
			!eq(f.Low[k], g.Low[j]) || !eq(f.Close[k], g.Close[j]) || !eq(f.Volume[k], g.Volume[j]) || !eq(f.Turnover[k], g.Turnover[j]) {
			return false
		}
	}
	return true
}

// coverEnd is the last start a read of [.., end] with limit is complete
// up to: end, unless the limit cut it at its last row.
func coverEnd(f *frame.Frame, end, limit int64) int64 {
	if limit > 0 && int64(f.Len()) >= limit && f.Len() > 0 {
		return f.Start[f.Len()-1]
	}
	return end
}
