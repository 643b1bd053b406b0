package mysql_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tagstream/tagstream/cdc"
)

// counter is a cdc.Handler that counts rows of one schema and signals
// each commit that had some.
type counter struct {
	schema  string
	rows    atomic.Int64
	commits chan int64
	resumed chan struct{} // closed by the first Resumed
	once    sync.Once
}

type countTx struct {
	c *counter
	n int64
}

func (c *counter) Begin() cdc.Tx { return &countTx{c: c} }
func (t *countTx) Add(ch *cdc.Change) {
	if ch.Table.Schema == t.c.schema && len(ch.New) > 0 && ch.New[0].Kind == cdc.Text {
		t.n++
	}
}
func (t *countTx) Merge(o cdc.Tx) { t.n += o.(*countTx).n }
func (t *countTx) Tags() []string { return nil }
func (c *counter) Commit(_ context.Context, tx cdc.Tx, _ cdc.Commit) error {
	if n := tx.(*countTx).n; n > 0 {
		c.rows.Add(n)
		c.commits <- n
	}
	return nil
}
func (c *counter) Resumed(cdc.Position)               { c.once.Do(func() { close(c.resumed) }) }
func (c *counter) Progress(cdc.Position)              {}
func (c *counter) Lost(context.Context, string) error { return nil }
func (c *counter) Drain(context.Context)              {}

// BenchmarkLargeTransaction measures decoding throughput: one transaction
// of 100,000 three-column rows per iteration, from commit to delivery.
func BenchmarkLargeTransaction(b *testing.B) {
	benchLargeTransaction(b, "CREATE TABLE t (id INT PRIMARY KEY, user_id INT, title VARCHAR(50))",
		"INSERT INTO t SELECT seq, seq %% 100, CONCAT('title ', seq) FROM seq_%d_to_%d")
}

// BenchmarkLargeTransactionTodos is the same with the rows of the bench
// tool's todos table, whose DATETIME(6) column dominated its profile.
func BenchmarkLargeTransactionTodos(b *testing.B) {
	benchLargeTransaction(b, "CREATE TABLE t (id BIGINT PRIMARY KEY, user_id INT NOT NULL, title VARCHAR(200) NOT NULL,"+
		" done TINYINT(1) NOT NULL DEFAULT 0, updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))",
		"INSERT INTO t (id, user_id, title) SELECT seq, seq %% 100, CONCAT('title ', seq) FROM seq_%d_to_%d")
}

func benchLargeTransaction(b *testing.B, create, insert string) {
	const rows = 100_000
	e := setup(b)
	e.exec(create)
	h := &counter{schema: e.schema, commits: make(chan int64, 16), resumed: make(chan struct{})}
	r, err := newReader(e)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, h) }()
	defer func() { cancel(); <-done }()
	<-h.resumed
	var decode time.Duration
	b.ResetTimer()
	for i := range b.N {
		e.exec(fmt.Sprintf(insert, i*rows+1, (i+1)*rows))
		committed := time.Now()
		if n := <-h.commits; n != rows {
			b.Fatalf("iteration %d: %d rows, want %d", i, n, rows)
		}
		decode += time.Since(committed)
	}
	b.ReportMetric(float64(rows*b.N)/b.Elapsed().Seconds(), "rows/s")
	b.ReportMetric(float64(decode.Milliseconds())/float64(b.N), "ms-after-commit/op")
	b.ReportMetric(float64(decode.Nanoseconds())/float64(rows*b.N), "ns-after-commit/row")
}
