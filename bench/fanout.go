package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tagstream/tagstream/testcontainers"
)

// recorder collects commit → receive latencies, per kind of event.
type recorder struct {
	mu       sync.Mutex
	since    time.Time // samples of transactions committed before are warm-up
	samples  map[string][]time.Duration
	commits  map[string][]time.Time // the commit time of each sample, in step with samples
	received map[string]int
	resets   atomic.Int64
}

func newRecorder() *recorder {
	return &recorder{samples: map[string][]time.Duration{}, commits: map[string][]time.Time{}, received: map[string]int{}}
}

// add records a delivery of kind committed at commit and read at at;
// arrived, when not zero, is when it reached the client's socket (recorded
// as kind+socketSuffix).
func (r *recorder) add(kind string, commit, at, arrived time.Time) {
	r.mu.Lock()
	r.received[kind]++
	if !commit.Before(r.since) {
		r.samples[kind] = append(r.samples[kind], at.Sub(commit))
		r.commits[kind] = append(r.commits[kind], commit)
		if !arrived.IsZero() {
			k := kind + socketSuffix
			r.samples[k] = append(r.samples[k], arrived.Sub(commit))
		}
	}
	r.mu.Unlock()
}

func (r *recorder) start(since time.Time) {
	r.mu.Lock()
	r.since = since
	r.samples = map[string][]time.Duration{}
	r.commits = map[string][]time.Time{}
	r.received = map[string]int{}
	r.mu.Unlock()
	r.resets.Store(0)
}

func (r *recorder) count(kind string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.received[kind]
}

func (r *recorder) take(kind string) []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := slices.Clone(r.samples[kind])
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s
}

// socketSuffix marks the samples taken at the kernel's receive time.
const socketSuffix = "@socket"

// window is the latency of the commits of one slice of a run.
type window struct {
	from     time.Duration // since the first sample's commit
	n        int
	p99, max time.Duration
}

// windows splits kind's samples by commit time into slices of width w and
// returns them worst (highest max) first: a run whose tail comes from one
// stall shows it in one or two windows, an overloaded one in all of them.
func (r *recorder) windows(kind string, w time.Duration) []window {
	r.mu.Lock()
	lat, at := slices.Clone(r.samples[kind]), slices.Clone(r.commits[kind])
	r.mu.Unlock()
	if len(at) == 0 {
		return nil
	}
	first := slices.MinFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	byWin := map[int][]time.Duration{}
	for i, c := range at {
		k := int(c.Sub(first) / w)
		byWin[k] = append(byWin[k], lat[i])
	}
	out := make([]window, 0, len(byWin))
	for k, s := range byWin {
		slices.Sort(s)
		out = append(out, window{from: time.Duration(k) * w, n: len(s), p99: pct(s, 0.99), max: s[len(s)-1]})
	}
	slices.SortFunc(out, func(a, b window) int { return int(b.max - a.max) })
	return out
}

// subscribers is a set of connected SSE clients whose reader goroutines
// feed a recorder.
type subscribers struct {
	clients []*sseClient
	wg      sync.WaitGroup
}

// connect opens n subscribers, subscriber k watching `user:k:todos` and the
// broadcast tag `Query.auctions`, each live (`ready`) before it returns.
// With stamps, each also takes the kernel's receive times (stampConn).
func connectSubscribers(ctx context.Context, addr string, n int, rec *recorder, stamps bool) (*subscribers, error) {
	s := &subscribers{clients: make([]*sseClient, n)}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	deadline, _ := ctx.Deadline()
	var (
		mu       sync.Mutex
		firstErr error
		next     atomic.Int64
		dialers  sync.WaitGroup
	)
	for range 32 {
		dialers.Go(func() {
			for {
				k := int(next.Add(1)) - 1
				if k >= n || ctx.Err() != nil {
					return
				}
				c, err := dialSSE(ctx, addr, fmt.Sprintf("user:%d:todos,Query.auctions", k+1), "")
				if err == nil {
					_, err = c.waitReady(deadline)
				}
				if err == nil && stamps {
					err = c.conn.stamp()
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("subscriber %d: %w", k+1, err)
					}
					mu.Unlock()
					cancel()
					if c != nil {
						c.Close()
					}
					return
				}
				s.clients[k] = c
			}
		})
	}
	dialers.Wait()
	if firstErr != nil {
		s.close()
		return nil, firstErr
	}
	for _, c := range s.clients {
		s.wg.Go(func() {
			for {
				ev, err := c.next(time.Time{})
				if err != nil {
					return
				}
				switch ev.Name {
				case "reset":
					rec.resets.Add(1)
				case "invalidate":
					// No JSON decoding here: 10,000 clients share the cores
					// with the daemon, and the load generator must stay light.
					ts, ok := eventTS(ev.Data)
					if !ok {
						continue
					}
					kind := "targeted"
					if strings.Contains(ev.Data, `"Query.auctions"`) {
						kind = "broadcast"
					}
					rec.add(kind, ts, ev.At, ev.Arrived)
				}
			}
		})
	}
	return s, nil
}

func (s *subscribers) close() {
	for _, c := range s.clients {
		if c != nil {
			c.Close()
		}
	}
	s.wg.Wait()
}

// runFanout runs the latency runs (one daemon per subscriber count) and the
// fan-out memory measurement (on the daemon with memSubs subscribers, before
// any load).
func (b *bench) runFanout(ctx context.Context, doLatency, doMemory bool, subs []int) error {
	srv, err := testcontainers.StartPostgres(ctx)
	if err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	defer srv.Close()
	dsn, err := srv.CreateDatabase(ctx, "bench_fanout")
	if err != nil {
		return err
	}
	// The private server runs with synchronous_commit=off, which leaves WAL
	// unflushed for up to wal_writer_delay (200 ms) — and a walsender only
	// sends flushed WAL. The latency runs commit like a production server.
	if err := pgWith(ctx, dsn, func(ctx context.Context, c *pgx.Conn) error {
		if _, err := c.Exec(ctx, "ALTER DATABASE bench_fanout SET synchronous_commit = on"); err != nil {
			return err
		}
		_, err := c.Exec(ctx, pgSchema)
		return err
	}); err != nil {
		return err
	}
	var runs []int
	if doLatency {
		runs = append(runs, subs...)
	}
	if doMemory && !slices.Contains(runs, b.cfg.memSubs) {
		runs = append(runs, b.cfg.memSubs)
	}
	for i, n := range runs {
		latency := doLatency && slices.Contains(subs, n)
		memory := doMemory && n == b.cfg.memSubs
		if err := b.fanoutRun(ctx, srv, dsn, fmt.Sprintf("bench_fanout_%d", i), n, latency, memory); err != nil {
			return fmt.Errorf("%d subscribers: %w", n, err)
		}
	}
	return nil
}

func (b *bench) fanoutRun(ctx context.Context, srv *testcontainers.PostgresServer, dsn, slot string, n int, latency, memory bool) error {
	b.logf("fan-out: %d subscribers (latency %v, memory %v)", n, latency, memory)
	args := []string{"--db", dsn, "--rules", b.rulesPath, "--slot", slot, "--publication", "bench_fanout"}
	var targets *sinkTargets
	if latency && b.cfg.latSinks {
		var err error
		if targets, err = b.sinks(ctx); err != nil {
			return err
		}
		args = append(args, targets.args()...)
	}
	d, err := b.startDaemon(ctx, slot, args...)
	if err != nil {
		return err
	}
	defer func() {
		_ = d.stop()
		_ = pgWith(context.WithoutCancel(ctx), srv.AdminDSN(), func(ctx context.Context, c *pgx.Conn) error {
			_, err := c.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slot)
			return err
		})
	}()
	if err := d.waitHTTP(ctx, "/readyz", 30*time.Second); err != nil {
		return err
	}
	var rss0 int64
	if memory {
		settle(ctx, 2*time.Second)
		if rss0, err = d.rssKiB(); err != nil {
			return err
		}
	}
	rec := newRecorder()
	rec.start(time.Now().Add(time.Hour)) // nothing counts until a run starts
	if targets != nil {
		targets.record(rec)
		defer targets.record(nil)
	}
	t0 := time.Now()
	subs, err := connectSubscribers(ctx, d.addr, n, rec, b.cfg.socketTimes)
	if err != nil {
		return err
	}
	defer subs.close()
	b.logf("  %d subscribers live in %s", n, time.Since(t0).Round(time.Millisecond))
	if memory {
		settle(ctx, 3*time.Second)
		rss1, err := d.rssKiB()
		if err != nil {
			return err
		}
		extra := "VmRSS of the daemon before/after connecting; heap not exposed by /metrics"
		if h := d.metric("go_memstats_heap_inuse_bytes"); h >= 0 {
			extra = fmt.Sprintf("heap in use after: %.1f MiB", h/(1<<20))
		}
		b.memory = append(b.memory, memoryRow{Subscribers: n, Before: rss0, After: rss1, Extra: extra})
		b.logf("  RSS %d KiB → %d KiB: %.1f KiB per subscriber", rss0, rss1, float64(rss1-rss0)/float64(n))
	}
	if !latency {
		return nil
	}
	return b.latencyRuns(ctx, d, dsn, rec, targets != nil, n)
}

// latencyRuns runs the latency workloads on the daemon d with n
// subscribers connected.
func (b *bench) latencyRuns(ctx context.Context, d *daemon, dsn string, rec *recorder, webhook bool, n int) error {
	// Targeted: each transaction inserts a todo of one user; exactly one
	// subscriber watches that user.
	row, err := b.loadRun(ctx, d, dsn, rec, "targeted", n, b.cfg.latRate, b.cfg.latDuration, 1,
		"INSERT INTO todos (user_id, title) VALUES ($1, 'buy milk')", func(i int) []any { return []any{i%n + 1} })
	if err != nil {
		return err
	}
	b.latency = append(b.latency, row)
	if webhook {
		b.latency = append(b.latency, webhookRow(rec, row))
	}
	if b.cfg.bcastRate > 0 {
		// Broadcast: each transaction changes the auctions list that every
		// subscriber watches.
		row, err := b.loadRun(ctx, d, dsn, rec, "broadcast", n, b.cfg.bcastRate, b.cfg.bcastDur, n,
			"INSERT INTO auctions (title) VALUES ('lot')", func(int) []any { return nil })
		if err != nil {
			return err
		}
		b.latency = append(b.latency, row)
	}
	if b.cfg.highRate > 0 && n == b.cfg.highSubs {
		// High rate: the targeted workload at 10,000 tx/s (each
		// transaction still reaches one subscriber).
		before, sourceBefore := delayBuckets(d, "sse"), sourceBuckets(d)
		row, err := b.loadRun(ctx, d, dsn, rec, "targeted", n, b.cfg.highRate, b.cfg.latDuration, 1,
			"INSERT INTO todos (user_id, title) VALUES ($1, 'buy milk')", func(i int) []any { return []any{i%n + 1} })
		if err != nil {
			return err
		}
		row.Mode = "targeted, high rate"
		b.note("high rate: p99 over the run, from the daemon's histograms: commit → read by the daemon (source delay: PostgreSQL's commit, its walsender and the reader) %s; commit → accepted by the SSE hub (publish delay: the same plus the rules and the fence, before any client write) %s",
			sourceBuckets(d).p99(sourceBefore), delayBuckets(d, "sse").p99(before))
		b.latency = append(b.latency, row)
	}
	return nil
}

// loadRun writes rate transactions per second for dur (open loop: each
// transaction has its scheduled start) and waits for the deliveries.
func (b *bench) loadRun(ctx context.Context, d *daemon, dsn string, rec *recorder, kind string, subs, rate int, dur time.Duration, fanout int, sql string, args func(int) []any) (latencyRow, error) {
	row := latencyRow{Mode: kind, Subscribers: subs}
	warm := time.Second
	if dur <= 2*warm {
		warm = 0
	}
	// A connection commits a few hundred transactions a second with
	// synchronous_commit on: the high rate needs more of them.
	writers := max(8, rate/250)
	conns := make([]*pgx.Conn, writers)
	for i := range conns {
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return row, err
		}
		defer c.Close(context.WithoutCancel(ctx))
		conns[i] = c
	}
	start := time.Now()
	rec.start(start.Add(warm))
	daemonCPU0, selfCPU0 := d.cpu(), procCPU(os.Getpid())
	period := time.Second / time.Duration(rate)
	jobs := make(chan int, rate)
	var sent atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for _, c := range conns {
		wg.Go(func() {
			for i := range jobs {
				if _, err := c.Exec(ctx, sql, args(i)...); err != nil {
					select {
					case errs <- err:
					default:
					}
					continue
				}
				sent.Add(1)
			}
		})
	}
	total := int(dur / period)
	for i := range total {
		if d := time.Until(start.Add(time.Duration(i) * period)); d > 0 {
			time.Sleep(d)
		}
		if ctx.Err() != nil {
			break
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)
	select {
	case err := <-errs:
		return row, fmt.Errorf("load generator: %w", err)
	default:
	}
	row.Sent = int(sent.Load())
	row.Rate = float64(row.Sent) / elapsed.Seconds()
	row.Expected = row.Sent * fanout
	row.Received = waitDeliveries(ctx, rec, kind, row.Expected)
	span := time.Since(start).Seconds()
	row.DaemonCPU = (d.cpu() - daemonCPU0).Seconds() / span
	row.HarnessCPU = (procCPU(os.Getpid()) - selfCPU0).Seconds() / span
	row.Resets = int(rec.resets.Load())
	s := rec.take(kind)
	if len(s) == 0 {
		return row, errors.New("no deliveries measured")
	}
	row.P50, row.P90, row.P99, row.Max = pct(s, 0.50), pct(s, 0.90), pct(s, 0.99), s[len(s)-1]
	if s := rec.take(kind + socketSuffix); len(s) > 0 {
		row.SocketP50, row.SocketP99 = pct(s, 0.50), pct(s, 0.99)
	}
	b.logRun(kind, row, rec)
	if warm > 0 {
		b.note("latency: the first %s of each run is warm-up, excluded from the percentiles (counted in deliveries)", warm)
	}
	b.record("# load generator:", fmt.Sprintf("%d tx/s for %s, %d connections, %s", rate, dur, writers, strings.TrimSpace(sql)))
	return row, nil
}

// logRun logs a latency run's figures and its worst windows by commit time.
func (b *bench) logRun(kind string, row latencyRow, rec *recorder) {
	socket := ""
	if row.SocketP50 > 0 {
		socket = fmt.Sprintf(" (at the socket p50 %s p99 %s)", ms(row.SocketP50), ms(row.SocketP99))
	}
	b.logf("  %s: %d tx at %.0f/s, %d/%d deliveries, p50 %s p99 %s max %s%s", kind, row.Sent, row.Rate, row.Received, row.Expected,
		ms(row.P50), ms(row.P99), ms(row.Max), socket)
	if ws := rec.windows(kind, 500*time.Millisecond); len(ws) > 0 {
		var worst []string
		for _, w := range ws[:min(4, len(ws))] {
			worst = append(worst, fmt.Sprintf("%s+500ms: p99 %s max %s (%d)", w.from, ms(w.p99), ms(w.max), w.n))
		}
		b.logf("    worst windows by commit time: %s", strings.Join(worst, "; "))
	}
}

// waitDeliveries waits for the stragglers: until expected deliveries of
// kind arrived or nothing more arrives for 3 s. It returns how many did.
func waitDeliveries(ctx context.Context, rec *recorder, kind string, expected int) int {
	last, lastChange := -1, time.Now()
	for time.Since(lastChange) < 3*time.Second && ctx.Err() == nil {
		got := rec.count(kind)
		if got >= expected {
			break
		}
		if got != last {
			last, lastChange = got, time.Now()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return rec.count(kind)
}

// webhookRow is the webhook's side of a targeted run: commit → receipt of
// the request, measured from the commit time of the last transaction it
// covers. Its deliveries are requests: one carries the transactions
// committed while the one before was in flight, so they may be fewer than
// the transactions expected.
func webhookRow(rec *recorder, sse latencyRow) latencyRow {
	row := latencyRow{Mode: "targeted → webhook (deliveries = requests)", Subscribers: sse.Subscribers, Rate: sse.Rate, Sent: sse.Sent,
		Expected: sse.Sent, Received: rec.count("webhook"), DaemonCPU: sse.DaemonCPU, HarnessCPU: sse.HarnessCPU}
	if s := rec.take("webhook"); len(s) > 0 {
		row.P50, row.P90, row.P99, row.Max = pct(s, 0.50), pct(s, 0.90), pct(s, 0.99), s[len(s)-1]
	}
	return row
}

// pct is the q-quantile of sorted samples (nearest rank).
func pct(s []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(s)) + 0.5)
	return s[min(max(i-1, 0), len(s)-1)]
}

// settle lets the daemon finish what connecting started (goroutines parking,
// buffers released) before its memory is read.
func settle(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
