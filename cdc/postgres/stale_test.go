package postgres

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/testcontainers"
)

// staleProbe is a cdc.Handler that re-reads every updated row of kv(k, v)
// the moment its commit arrives, as a cache that refreshes on an
// invalidation would, and counts the re-reads that still see an older v.
// Writers only ever increment v, so an older value is a stale read.
type staleProbe struct {
	r     *Reader
	conn  *pgx.Conn
	fence bool

	commits, stale atomic.Int64
	mu             sync.Mutex
	waits          []time.Duration // WaitVisible per commit
	resumed        chan struct{}
	once           sync.Once
}

type probeTx struct{ k, v []int64 }

func (p *staleProbe) Begin() cdc.Tx { return &probeTx{} }
func (t *probeTx) Add(c *cdc.Change) {
	if c.Op != cdc.Update || len(c.New) < 2 {
		return
	}
	k, _ := strconv.ParseInt(string(c.New[0].Text), 10, 64)
	v, _ := strconv.ParseInt(string(c.New[1].Text), 10, 64)
	t.k, t.v = append(t.k, k), append(t.v, v)
}
func (t *probeTx) Merge(o cdc.Tx) {
	ot := o.(*probeTx)
	t.k, t.v = append(t.k, ot.k...), append(t.v, ot.v...)
}
func (t *probeTx) Tags() []string { return nil }

func (p *staleProbe) Commit(ctx context.Context, tx cdc.Tx, c cdc.Commit) error {
	t := tx.(*probeTx)
	if p.fence {
		start := time.Now()
		if err := p.r.WaitVisible(ctx, []cdc.Commit{c}); err != nil {
			return err
		}
		p.mu.Lock()
		p.waits = append(p.waits, time.Since(start))
		p.mu.Unlock()
	}
	for i, k := range t.k {
		var v int64
		if err := p.conn.QueryRow(ctx, `SELECT v FROM kv WHERE k = $1`, k).Scan(&v); err != nil {
			return err
		}
		if v < t.v[i] {
			p.stale.Add(1)
		}
	}
	p.commits.Add(1)
	p.r.Ack(c.Position)
	return nil
}

func (p *staleProbe) Resumed(cdc.Position)               { p.once.Do(func() { close(p.resumed) }) }
func (p *staleProbe) Progress(cdc.Position)              {}
func (p *staleProbe) Lost(context.Context, string) error { return nil }
func (p *staleProbe) Drain(context.Context)              {}

// runStaleProbe writes `rate` single-row updates per second for d with 4
// writers and returns the probe once every update was re-read.
func runStaleProbe(tb testing.TB, fence bool, rate int, d time.Duration) *staleProbe {
	tb.Helper()
	ctx := context.Background()
	dsn := testcontainers.Postgres(tb)
	const rows = 1000
	reread, err := pgx.Connect(ctx, dsn)
	if err != nil {
		tb.Fatal(err)
	}
	defer reread.Close(ctx)
	var slot string
	for _, q := range []string{`CREATE TABLE kv (k int PRIMARY KEY, v bigint NOT NULL)`,
		fmt.Sprintf(`INSERT INTO kv SELECT g, 0 FROM generate_series(1, %d) g`, rows)} {
		if _, err := reread.Exec(ctx, q); err != nil {
			tb.Fatal(err)
		}
	}
	if err := reread.QueryRow(ctx, `SELECT current_database()`).Scan(&slot); err != nil {
		tb.Fatal(err)
	}
	r, err := New(Config{DSN: dsn, Slot: slot})
	if err != nil {
		tb.Fatal(err)
	}
	p := &staleProbe{r: r, conn: reread, fence: fence, resumed: make(chan struct{})}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx, p) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Run = %v", err)
		}
	}()
	select {
	case <-p.resumed:
	case <-time.After(waitTimeout):
		tb.Fatal("the reader did not start")
	}
	const writers = 4
	var wg sync.WaitGroup
	var written atomic.Int64
	for range writers {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			tb.Fatal(err)
		}
		defer conn.Close(ctx)
		// The default a production server runs with (the test servers
		// turn it off): the commit waits for its WAL flush, which is when
		// the walsender may already send it.
		if _, err := conn.Exec(ctx, `SET synchronous_commit = on`); err != nil {
			tb.Fatal(err)
		}
		wg.Go(func() {
			tick := time.NewTicker(time.Second * writers / time.Duration(rate))
			defer tick.Stop()
			for end := time.Now().Add(d); time.Now().Before(end); <-tick.C {
				if _, err := conn.Exec(ctx, `UPDATE kv SET v = v + 1 WHERE k = $1`, 1+rand.IntN(rows)); err != nil {
					tb.Error(err)
					return
				}
				written.Add(1)
			}
		})
	}
	wg.Wait()
	deadline := time.Now().Add(waitTimeout)
	for p.commits.Load() < written.Load() {
		if time.Now().After(deadline) {
			tb.Fatalf("re-read %d of %d updates", p.commits.Load(), written.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return p
}

// TestFencePreventsStaleReads: with the fence, a row re-read the moment its
// commit arrives is never older than the commit.
func TestFencePreventsStaleReads(t *testing.T) {
	t.Parallel()
	p := runStaleProbe(t, true, 500, 3*time.Second)
	if n := p.stale.Load(); n != 0 {
		t.Errorf("%d of %d re-reads were stale with the fence on", n, p.commits.Load())
	}
}

// BenchmarkStaleRead measures stale re-reads per million updates without
// and with the fence, and what the fence costs per commit. Run with
// -benchtime=1x: each run writes for -probe seconds at 1,000 updates/s.
func BenchmarkStaleRead(b *testing.B) {
	for _, fence := range []bool{false, true} {
		b.Run(fmt.Sprintf("fence=%v", fence), func(b *testing.B) {
			for range b.N {
				p := runStaleProbe(b, fence, 1000, 10*time.Second)
				n := p.commits.Load()
				b.ReportMetric(float64(p.stale.Load())*1e6/float64(n), "stale/1M")
				if fence {
					slices.Sort(p.waits)
					b.ReportMetric(float64(p.waits[len(p.waits)/2].Microseconds()), "fence-p50-µs")
					b.ReportMetric(float64(p.waits[len(p.waits)*99/100].Microseconds()), "fence-p99-µs")
					b.ReportMetric(float64(p.r.fence.queries.Load())/float64(n), "queries/commit")
				}
			}
		})
	}
}
