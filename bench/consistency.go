package main

// The consistency checker, in the spirit of Meta's Polaris: a client keeps
// every row of kv(k, v) in memory, re-reads a row from the database the
// moment an `invalidate` names its tag kv:{k}, reloads everything on
// `reset` or `ready {"resumed":false}`, and reconnects with its
// Last-Event-ID. Writers update random rows; after the writes stop and the
// stream settles, the cache is compared with the database. A row that
// differs is a lost invalidation as its user experiences it: the cache
// re-read too early (before the commit was visible) and nothing will
// invalidate it again.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tagstream/tagstream/testcontainers"
)

// consistencyRun is one measurement.
type consistencyRun struct {
	store *kvStore
	name  string // names the daemon's log, slot and state
	rate  int    // updates per second, all writers together
	dur   time.Duration
	kills int // kill -9 of tagstream (restarted at once) during the writes
	fence bool
}

type consistencyRow struct {
	DB       string
	Rate     int
	Achieved float64
	Kills    int
	Fence    bool
	Updates  int64
	Stale    int // rows whose cached value differs from the database
	// Staleness window: commit (the writer's UPDATE returned) → the cache
	// holds that value or a newer one.
	P50, P99, Max time.Duration
	Reconnects    int64
	Resumed       int64
	Resets        int64
	FenceBatches  float64 // per second (runs without a kill)
	FenceTimeouts float64 // total (runs without a kill)
	FenceMean     time.Duration
}

const (
	kvWriters     = 8 // each owns the keys k ≡ w (mod kvWriters)
	kvReaders     = 4 // re-read workers, each owns the keys k ≡ r (mod kvReaders)
	settleTimeout = 2 * time.Minute
)

// commitRec is one update as its writer saw it commit.
type commitRec struct {
	k  int
	v  int64
	at time.Time
}

// refresh is the cache's value of a key rising, and when.
type refresh struct {
	v  int64
	at time.Time
}

// kvCache is the client.
type kvCache struct {
	store   *kvStore
	mu      sync.Mutex
	vals    [kvRows + 1]int64
	history [kvRows + 1][]refresh
	queues  [kvReaders]chan int
	pending sync.WaitGroup
	markers chan int
	errs    chan error
	cur     atomic.Pointer[sseClient]

	reconnects, resumed, resets atomic.Int64
}

// apply merges a value read from the database: values only grow, so the
// larger one is the newer.
func (c *kvCache) apply(k int, v int64, at time.Time) {
	c.mu.Lock()
	if v > c.vals[k] {
		c.vals[k] = v
		c.history[k] = append(c.history[k], refresh{v, at})
	}
	c.mu.Unlock()
}

func (c *kvCache) fail(err error) {
	select {
	case c.errs <- err:
	default:
	}
}

// reread runs one re-read worker.
func (c *kvCache) reread(ctx context.Context, q chan int) {
	conn, err := c.store.open(ctx)
	if err != nil {
		c.fail(err)
		for range q {
			c.pending.Done()
		}
		return
	}
	defer conn.close()
	for k := range q {
		v, err := conn.get(ctx, k)
		if err != nil {
			c.fail(fmt.Errorf("re-read kv %d: %w", k, err))
		} else {
			c.apply(k, v, time.Now())
		}
		c.pending.Done()
	}
}

func (c *kvCache) reload(ctx context.Context, conn kvConn) {
	vals, err := conn.all(ctx)
	if err != nil {
		c.fail(fmt.Errorf("reload: %w", err))
		return
	}
	at := time.Now()
	for k := 1; k <= kvRows; k++ {
		c.apply(k, vals[k], at)
	}
}

// follow subscribes and reconnects with its cursor until ctx ends. addr is
// read at every (re)connect.
func (c *kvCache) follow(ctx context.Context, addr func() string, loaded chan<- struct{}) {
	conn, err := c.store.open(ctx)
	if err != nil {
		c.fail(err)
		return
	}
	defer conn.close()
	cursor, first := "", true
	for ctx.Err() == nil {
		sc, err := dialSSE(ctx, addr(), "kv:*,marker:*", cursor)
		if err != nil {
			settle(ctx, 20*time.Millisecond) // the daemon is restarting
			continue
		}
		c.cur.Store(sc)
		if ctx.Err() != nil {
			sc.Close()
			return
		}
		if !first {
			c.reconnects.Add(1)
		}
		for {
			ev, err := sc.next(time.Time{})
			if err != nil {
				break
			}
			if ev.ID != "" {
				cursor = ev.ID
			}
			switch ev.Name {
			case "invalidate":
				c.invalidate(ev.Data)
			case "reset":
				c.resets.Add(1)
				c.reload(ctx, conn)
			case "ready":
				switch {
				case first:
					c.reload(ctx, conn)
					first = false
					close(loaded)
				case strings.Contains(ev.Data, `"resumed":true`):
					c.resumed.Add(1)
				default:
					c.reload(ctx, conn)
				}
			}
		}
		sc.Close()
	}
}

func (c *kvCache) invalidate(data string) {
	inv, err := parseInvalidation(data)
	if err != nil {
		c.fail(fmt.Errorf("invalidate %q: %w", data, err))
		return
	}
	for _, tag := range inv.Tags {
		if s, ok := strings.CutPrefix(tag, "kv:"); ok {
			if k, err := strconv.Atoi(s); err == nil && k >= 1 && k <= kvRows {
				c.pending.Add(1)
				c.queues[k%kvReaders] <- k
			}
		} else if s, ok := strings.CutPrefix(tag, "marker:"); ok {
			if id, err := strconv.Atoi(s); err == nil {
				select {
				case c.markers <- id:
				default:
				}
			}
		}
	}
}

// writeKV updates random rows at rate for dur and returns every commit.
func writeKV(ctx context.Context, store *kvStore, rate int, dur time.Duration) ([]commitRec, error) {
	var wg sync.WaitGroup
	recs := make([][]commitRec, kvWriters)
	errs := make(chan error, kvWriters)
	for w := range kvWriters {
		conn, err := store.open(ctx)
		if err != nil {
			return nil, err
		}
		wg.Go(func() {
			defer conn.close()
			rng := rand.New(rand.NewPCG(uint64(w)+1, 17))
			var v [kvRows + 1]int64
			tick := time.NewTicker(time.Second * kvWriters / time.Duration(rate))
			defer tick.Stop()
			for end := time.Now().Add(dur); time.Now().Before(end); {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				k := w + kvWriters*rng.IntN(kvRows/kvWriters)
				if k == 0 {
					k = kvWriters * (kvRows / kvWriters) // key 0 does not exist: w=0 owns 1000 instead
				}
				v[k]++
				if err := conn.set(ctx, k, v[k]); err != nil {
					errs <- fmt.Errorf("update kv %d: %w", k, err)
					return
				}
				recs[w] = append(recs[w], commitRec{k, v[k], time.Now()})
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	return slices.Concat(recs...), nil
}

// consistency runs one measurement.
func (b *bench) consistency(ctx context.Context, run consistencyRun) (consistencyRow, error) {
	row := consistencyRow{DB: run.store.db, Rate: run.rate, Kills: run.kills, Fence: run.fence}
	d, addr, args, err := b.startConsistencyDaemon(ctx, run)
	if err != nil {
		return row, err
	}
	defer func() {
		if d != nil { // nil when a restart after kill -9 failed
			_ = d.stop()
		}
	}()

	c, cctx, stop, err := startKVCache(ctx, run.store, addr)
	if err != nil {
		return row, err
	}
	defer func() {
		if cctx.Err() == nil {
			stop()
		}
	}()

	d, w, began, err := b.writeWithKills(ctx, run, d, addr, args)
	if err != nil {
		return row, err
	}
	took := time.Since(began)
	row.Updates = int64(len(w.recs))
	row.Achieved = float64(len(w.recs)) / took.Seconds()

	if err := b.settleKV(ctx, run.store, c); err != nil {
		return row, err
	}
	if run.kills == 0 {
		fenceStats(&row, d, began)
	}
	stop()
	select {
	case err := <-c.errs:
		return row, err
	default:
	}
	return row, compareKV(ctx, run.store, c, w.recs, &row)
}

// startConsistencyDaemon creates the run's database and starts tagstream on
// it; it returns the daemon, its address and arguments (for restarts).
func (b *bench) startConsistencyDaemon(ctx context.Context, run consistencyRun) (*daemon, string, []string, error) {
	if err := run.store.create(ctx); err != nil {
		return nil, "", nil, err
	}
	rulesPath := filepath.Join(b.tmp, "consistency-rules.yaml")
	if err := os.WriteFile(rulesPath, []byte(kvConsistencyRules), 0o644); err != nil {
		return nil, "", nil, err
	}
	// A queue of a few seconds at 5,000 events/s: an overflow reset would
	// reload the cache and hide the stale rows this measures.
	args := append([]string{"--db", run.store.dsn, "--rules", rulesPath, "--log-level", "warn", "--queue-size", "16384",
		"--visibility-fence=" + strconv.FormatBool(run.fence)}, run.store.extra...)
	port, err := freePort()
	if err != nil {
		return nil, "", nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	d, err := b.startDaemonAt(ctx, run.name, addr, args...)
	if err != nil {
		return nil, "", nil, err
	}
	return d, addr, args, nil
}

// startKVCache starts the cache client on addr and waits until it has
// loaded; stop ends it (cctx is done once stop has run or ctx ended).
func startKVCache(ctx context.Context, store *kvStore, addr string) (c *kvCache, cctx context.Context, stop func(), err error) {
	cctx, stopClient := context.WithCancel(ctx)
	c = &kvCache{store: store, markers: make(chan int, 16), errs: make(chan error, 1)}
	var wg sync.WaitGroup
	for i := range c.queues {
		c.queues[i] = make(chan int, 1<<16)
		wg.Go(func() { c.reread(cctx, c.queues[i]) })
	}
	loaded := make(chan struct{})
	var followWG sync.WaitGroup
	followWG.Go(func() { c.follow(cctx, func() string { return addr }, loaded) })
	stop = func() {
		stopClient()
		if sc := c.cur.Load(); sc != nil {
			sc.Close()
		}
		followWG.Wait()
		for _, q := range c.queues {
			close(q)
		}
		wg.Wait()
	}
	select {
	case <-loaded:
		return c, cctx, stop, nil
	case err = <-c.errs:
	case <-time.After(30 * time.Second):
		err = errors.New("the cache client did not connect")
	}
	if cctx.Err() == nil {
		stop()
	}
	return nil, nil, nil, err
}

// written is what writeKV returned.
type written struct {
	recs []commitRec
	err  error
}

// writeWithKills runs the writers and kill -9s tagstream at even intervals
// while they write, restarting it at once; it returns the daemon now
// running (even on error: the caller stops it) and when the writes began.
func (b *bench) writeWithKills(ctx context.Context, run consistencyRun, d *daemon, addr string, args []string) (*daemon, written, time.Time, error) {
	wctx, stopWriters := context.WithCancel(ctx)
	defer stopWriters()
	wdone := make(chan written, 1)
	began := time.Now()
	go func() {
		recs, err := writeKV(wctx, run.store, run.rate, run.dur)
		wdone <- written{recs, err}
	}()
	var err error
	for i := 1; i <= run.kills; i++ {
		settle(ctx, time.Until(began.Add(run.dur*time.Duration(i)/time.Duration(run.kills+1))))
		_ = d.cmd.Process.Kill()
		<-d.exited
		if d, err = b.startDaemonAt(ctx, fmt.Sprintf("%s-restart%d", run.name, i), addr, args...); err != nil {
			stopWriters()
			<-wdone
			return d, written{}, began, fmt.Errorf("restart after kill -9: %w", err)
		}
	}
	w := <-wdone
	return d, w, began, w.err
}

// fenceStats fills in the visibility fence's figures from d's metrics over
// its life since began.
func fenceStats(row *consistencyRow, d *daemon, began time.Time) {
	life := time.Since(began).Seconds()
	batches := d.metric("tagstream_fence_waits_total")
	row.FenceBatches = batches / life
	row.FenceTimeouts = d.metric("tagstream_fence_timeouts_total")
	if batches > 0 {
		row.FenceMean = time.Duration(d.metric("tagstream_fence_seconds_total") / batches * float64(time.Second))
	}
}

// compareKV counts the cache's stale rows against the database and fills
// in the staleness window and the client's reconnects.
func compareKV(ctx context.Context, store *kvStore, c *kvCache, recs []commitRec, row *consistencyRow) error {
	conn, err := store.open(ctx)
	if err != nil {
		return err
	}
	defer conn.close()
	db, err := conn.all(ctx)
	if err != nil {
		return err
	}
	for k := 1; k <= kvRows; k++ {
		if c.vals[k] != db[k] {
			row.Stale++
		}
	}
	row.P50, row.P99, row.Max = staleness(recs, &c.history)
	row.Reconnects, row.Resumed, row.Resets = c.reconnects.Load(), c.resumed.Load(), c.resets.Load()
	return nil
}

// settleKV waits until the stream has delivered everything written (a
// marker committed after the writes comes back) and every re-read it
// caused has finished.
func (b *bench) settleKV(ctx context.Context, store *kvStore, c *kvCache) error {
	conn, err := store.open(ctx)
	if err != nil {
		return err
	}
	defer conn.close()
	if err := conn.marker(ctx, 1); err != nil {
		return err
	}
	select {
	case <-c.markers:
	case err := <-c.errs:
		return err
	case <-time.After(settleTimeout):
		return fmt.Errorf("the marker committed after the writes did not arrive within %s", settleTimeout)
	}
	c.pending.Wait()
	return nil
}

// staleness returns the window from each commit to the cache holding its
// value (or a newer one), over the commits the cache caught up with.
func staleness(recs []commitRec, history *[kvRows + 1][]refresh) (p50, p99, maxW time.Duration) {
	var ws []time.Duration
	for _, r := range recs {
		h := history[r.k]
		i, _ := slices.BinarySearchFunc(h, r.v, func(f refresh, v int64) int {
			switch {
			case f.v < v:
				return -1
			case f.v > v:
				return 1
			}
			return 0
		})
		if i == len(h) {
			continue // never caught up: a stale row, counted as such
		}
		ws = append(ws, max(0, h[i].at.Sub(r.at)))
	}
	if len(ws) == 0 {
		return 0, 0, 0
	}
	slices.Sort(ws)
	return pct(ws, 0.5), pct(ws, 0.99), ws[len(ws)-1]
}

// runConsistency measures every combination of database, rate, kill -9
// and fence on one private server per database.
func (b *bench) runConsistency(ctx context.Context) error {
	rates, err := parseInts(b.cfg.consRates)
	if err != nil {
		return fmt.Errorf("-consistency-rates: %w", err)
	}
	stores, closeAll, err := b.consistencyStores(ctx)
	if err != nil {
		return err
	}
	defer closeAll()
	n := 0
	for _, newStore := range stores {
		for _, rate := range rates {
			for _, kills := range []int{0, 2} {
				for _, fence := range []bool{false, true} {
					n++
					store, err := newStore(ctx, n)
					if err != nil {
						return err
					}
					run := consistencyRun{store: store, name: fmt.Sprintf("consistency-%d", n), rate: rate, dur: b.cfg.consDuration, kills: kills, fence: fence}
					b.logf("consistency %s %d updates/s kill -9 ×%d fence=%v", store.db, rate, kills, fence)
					row, err := b.consistency(ctx, run)
					if err != nil {
						return fmt.Errorf("%s %d/s kills=%d fence=%v: %w", store.db, rate, kills, fence, err)
					}
					b.consistencyRows = append(b.consistencyRows, row)
				}
			}
		}
	}
	return nil
}

// consistencyStores starts one server per database and returns makers of a
// fresh database on it.
func (b *bench) consistencyStores(ctx context.Context) ([]func(context.Context, int) (*kvStore, error), func(), error) {
	var makers []func(context.Context, int) (*kvStore, error)
	var closers []func()
	closeAll := func() {
		for _, c := range closers {
			c()
		}
	}
	for db := range strings.SplitSeq(b.cfg.consDBs, ",") {
		switch strings.TrimSpace(db) {
		case "pg":
			srv, err := testcontainers.StartPostgres(ctx)
			if err != nil {
				closeAll()
				return nil, nil, err
			}
			closers = append(closers, srv.Close)
			makers = append(makers, func(ctx context.Context, n int) (*kvStore, error) {
				name := fmt.Sprintf("consistency_%d", n)
				dsn, err := srv.CreateDatabase(ctx, name)
				if err != nil {
					return nil, err
				}
				return &kvStore{db: "PostgreSQL", dsn: dsn, pg: true, extra: []string{"--slot", name, "--publication", name}}, nil
			})
		case "mariadb":
			srv, err := testcontainers.StartMySQL(ctx)
			if err != nil {
				closeAll()
				return nil, nil, err
			}
			closers = append(closers, srv.Close)
			makers = append(makers, func(ctx context.Context, n int) (*kvStore, error) {
				name := fmt.Sprintf("consistency_%d", n)
				dsn, err := srv.CreateDatabase(ctx, name)
				if err != nil {
					return nil, err
				}
				return &kvStore{db: "MariaDB", dsn: dsn, extra: []string{"--state-dir", filepath.Join(b.tmp, name), "--server-id", strconv.Itoa(7000 + n)}}, nil
			})
		case "":
		default:
			closeAll()
			return nil, nil, fmt.Errorf("-consistency-dbs: unknown database %q (pg, mariadb)", db)
		}
	}
	return makers, closeAll, nil
}

// describeConsistency renders the rows for the report.
func describeConsistency(rows []consistencyRow) string {
	var w strings.Builder
	w.WriteString("| database | updates/s (achieved) | kill -9 | fence | updates | stale rows | stale per 1M updates | window p50 | p99 | max | reconnects: resumed / reset | fence batches/s | mean fence wait | fence timeouts |\n")
	w.WriteString("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|\n")
	for _, r := range rows {
		fence, batches, mean, timeouts := "off", "-", "-", "-"
		if r.Fence {
			fence = "on"
			if r.Kills == 0 {
				batches, mean, timeouts = fmt.Sprintf("%.0f", r.FenceBatches), ms(r.FenceMean), fmt.Sprintf("%.0f", r.FenceTimeouts)
			}
		}
		stale := fmt.Sprint(r.Stale)
		if r.Stale == 0 {
			stale = "**0**"
		}
		fmt.Fprintf(&w, "| %s | %d (%.0f) | %d | %s | %d | %s | %.0f | %s | %s | %s | %d: %d / %d | %s | %s | %s |\n",
			r.DB, r.Rate, r.Achieved, r.Kills, fence, r.Updates, stale, float64(r.Stale)*1e6/float64(max(r.Updates, 1)),
			ms(r.P50), ms(r.P99), ms(r.Max), r.Reconnects, r.Resumed, r.Resets, batches, mean, timeouts)
	}
	return w.String()
}
