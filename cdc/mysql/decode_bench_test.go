package mysql

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/rules"
	"github.com/tagstream/tagstream/testcontainers"
)

// benchRows is the size of the transaction BenchmarkDecode replays.
const benchRows = 100_000

// BenchmarkDecode replays one captured transaction of 100,000 rows of the
// bench tool's todos table (its 1M-row workload, scaled down) through the
// parser and the reader, in one goroutine, without the network: what the
// reader costs per row, free of the server and of scheduling. Each
// sub-benchmark is one way of consuming the rows:
//
//   - rules: the bench rules (rules.Tx, the pipeline's), which collapse
//     at the 4,096-tag cap;
//   - rules-uncapped: the same without a reachable cap: every row's tags
//     are expanded and de-duplicated;
//   - every-column: a Tx that reads every column (no cdc.Projection).
func BenchmarkDecode(b *testing.B) {
	events, r := captureTransaction(b)
	set, err := rules.Parse([]byte(`rules:
  - table: todos
    tags: [todos, "todo:{id}", "user:{user_id}:todos"]
`), "rules.yaml")
	if err != nil {
		b.Fatal(err)
	}
	capped := rules.Compile(set, rules.Options{DefaultSchema: r.dsn.Database})
	uncapped := rules.Compile(set, rules.Options{DefaultSchema: r.dsn.Database, MaxTags: 1 << 30})
	for _, bc := range []struct {
		name  string
		begin func() cdc.Tx
	}{
		{"rules", func() cdc.Tx { return capped.NewTx() }},
		{"rules-uncapped", func() cdc.Tx { return uncapped.NewTx() }},
		{"every-column", func() cdc.Tx { return &countingTx{} }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h := &replayHandler{begin: bc.begin}
			b.ReportAllocs()
			cpu0 := cpuTime()
			for b.Loop() {
				replay(b, r, h, events)
			}
			// Process CPU time (the garbage collector's included): on a
			// shared machine it varies far less than the elapsed time.
			b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N*benchRows), "cpu-ns/row")
			if h.commits != b.N {
				b.Fatalf("%d commits in %d replays", h.commits, b.N)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchRows), "ns/row")
		})
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// replay parses the captured events afresh (as the syncer does) and hands
// them to the reader.
func replay(b *testing.B, r *Reader, h cdc.Handler, events [][]byte) {
	cfg := r.syncerConfig(&serverInfo{flavor: gomysql.MariaDBFlavor})
	p := replication.NewBinlogParser()
	p.SetFlavor(cfg.Flavor)
	p.SetParseTime(cfg.ParseTime)
	p.SetRenderJSONAsMySQLText(cfg.RenderJSONAsMySQLText)
	p.SetRowsEventDecodeFunc(cfg.RowsEventDecodeFunc)
	r.st.resetConnection()
	for _, raw := range events {
		ev, err := p.Parse(raw)
		if err != nil {
			b.Fatal(err)
		}
		if err := r.handle(context.Background(), h, ev, 0); err != nil {
			b.Fatal(err)
		}
	}
}

// captureTransaction writes one transaction of benchRows rows and returns
// the binlog events from the start of the file to its commit, raw, and a
// Reader for the database.
func captureTransaction(b *testing.B) ([][]byte, *Reader) {
	dsn := testcontainers.MySQL(b)
	r, err := New(Config{DSN: dsn, StateDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	c, err := client.Connect(r.dsn.Addr(), r.dsn.User, r.dsn.Password, r.dsn.Database)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	for _, q := range []string{
		"CREATE TABLE todos (id BIGINT PRIMARY KEY, user_id INT NOT NULL, title VARCHAR(200) NOT NULL," +
			" done TINYINT(1) NOT NULL DEFAULT 0, updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))",
		"FLUSH BINARY LOGS",
		fmt.Sprintf("INSERT INTO todos (id, user_id, title) SELECT seq, seq %% 100, CONCAT('buy milk ', seq) FROM seq_1_to_%d", benchRows),
	} {
		if _, err := c.Execute(q); err != nil {
			b.Fatalf("%s: %v", q, err)
		}
	}
	res, err := c.Execute("SHOW MASTER STATUS")
	if err != nil {
		b.Fatal(err)
	}
	file, _ := res.GetString(0, 0)
	syncer := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		ServerID: 77001, Flavor: gomysql.MariaDBFlavor, Host: r.dsn.Host, Port: uint16(r.dsn.Port),
		User: r.dsn.User, Password: r.dsn.Password, RawModeEnabled: true,
	})
	defer syncer.Close()
	s, err := syncer.StartSync(gomysql.Position{Name: file, Pos: 4})
	if err != nil {
		b.Fatal(err)
	}
	var events [][]byte
	rows := false
	for {
		ev, err := s.GetEvent(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		switch ev.Header.EventType {
		case replication.ROTATE_EVENT, replication.HEARTBEAT_EVENT:
			continue
		case replication.WRITE_ROWS_EVENTv1, replication.WRITE_ROWS_EVENTv2:
			rows = true
		}
		events = append(events, ev.RawData)
		if rows && ev.Header.EventType == replication.XID_EVENT {
			return events, r
		}
	}
}

// replayHandler hands out transactions and counts commits.
type replayHandler struct {
	begin   func() cdc.Tx
	commits int
}

func (h *replayHandler) Begin() cdc.Tx { return h.begin() }
func (h *replayHandler) Commit(_ context.Context, tx cdc.Tx, _ cdc.Commit) error {
	tx.Tags()
	h.commits++
	return nil
}
func (h *replayHandler) Resumed(cdc.Position)               {}
func (h *replayHandler) Progress(cdc.Position)              {}
func (h *replayHandler) Lost(context.Context, string) error { return nil }
func (h *replayHandler) Drain(context.Context)              {}

// countingTx reads every column of every row.
type countingTx struct{ bytes int }

func (t *countingTx) Add(c *cdc.Change) {
	for _, v := range c.New {
		t.bytes += len(v.Text)
	}
}
func (t *countingTx) Merge(cdc.Tx)   {}
func (t *countingTx) Tags() []string { return nil }
