package mysql_test

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

	"github.com/go-mysql-org/go-mysql/client"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/cdc/mysql"
)

// staleProbe is a cdc.Handler that re-reads every updated row of kv(k, v)
// the moment its commit arrives, as a cache that refreshes on an
// invalidation would, and counts the re-reads that still see an older v.
// Writers only ever increment v, so an older value is a stale read.
type staleProbe struct {
	r     *mysql.Reader
	conn  *client.Conn
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
	if c.Op != cdc.Update || c.Table.Name != "kv" || len(c.New) < 2 {
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
	if len(t.k) == 0 {
		p.r.Ack(c.Position)
		return nil
	}
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
		res, err := p.conn.Execute("SELECT v FROM kv WHERE k = " + strconv.FormatInt(k, 10))
		if err != nil {
			return err
		}
		v, err := res.GetInt(0, 0)
		res.Close()
		if err != nil {
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
	e := setup(tb)
	const rows = 1000
	e.exec("CREATE TABLE kv (k int PRIMARY KEY, v bigint NOT NULL) ENGINE=InnoDB",
		"INSERT INTO kv (k, v) SELECT seq, 0 FROM seq_1_to_1000")
	r, err := mysql.New(e.cfg)
	if err != nil {
		tb.Fatal(err)
	}
	p := &staleProbe{r: r, conn: e.connect(), fence: fence, resumed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, p) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Run = %v", err)
		}
	}()
	select {
	case <-p.resumed:
	case <-time.After(20 * time.Second):
		tb.Fatal("the reader did not start")
	}
	const writers = 4
	var wg sync.WaitGroup
	var written atomic.Int64
	for range writers {
		conn := e.connect()
		wg.Go(func() {
			tick := time.NewTicker(time.Second * writers / time.Duration(rate))
			defer tick.Stop()
			for end := time.Now().Add(d); time.Now().Before(end); <-tick.C {
				if _, err := conn.Execute(fmt.Sprintf("UPDATE kv SET v = v + 1 WHERE k = %d", 1+rand.IntN(rows))); err != nil {
					tb.Error(err)
					return
				}
				written.Add(1)
			}
		})
	}
	wg.Wait()
	deadline := time.Now().Add(20 * time.Second)
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
	p := runStaleProbe(t, true, 500, 3*time.Second)
	if n := p.stale.Load(); n != 0 {
		t.Errorf("%d of %d re-reads were stale with the fence on", n, p.commits.Load())
	}
}

// BenchmarkStaleRead measures stale re-reads per million updates without
// and with the fence, and what the fence costs per commit. Run with
// -benchtime=1x: each run writes for 10 s at 1,000 updates/s.
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
					b.ReportMetric(float64(mysql.FenceQueries(p.r))/float64(n), "queries/commit")
				}
			}
		})
	}
}
