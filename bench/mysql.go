package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-mysql-org/go-mysql/client"

	"github.com/tagstream/tagstream/testcontainers"
)

// mySchema is pgSchema in MySQL/MariaDB terms.
var mySchema = []string{
	"CREATE TABLE todos (id bigint AUTO_INCREMENT PRIMARY KEY, user_id int NOT NULL, title varchar(200) NOT NULL, done tinyint(1) NOT NULL DEFAULT 0, updated_at datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB",
	"CREATE TABLE comments (id bigint AUTO_INCREMENT PRIMARY KEY, post_id int NOT NULL, body text NOT NULL, spam_score int NOT NULL DEFAULT 0, deleted_at datetime(6) NULL) ENGINE=InnoDB",
	"CREATE TABLE posts (id bigint AUTO_INCREMENT PRIMARY KEY, author_id int NOT NULL, title varchar(200) NOT NULL) ENGINE=InnoDB",
	"CREATE TABLE auctions (id bigint AUTO_INCREMENT PRIMARY KEY, title varchar(200) NOT NULL, price decimal(12,2) NOT NULL DEFAULT 0) ENGINE=InnoDB",
	"CREATE TABLE bids (id bigint AUTO_INCREMENT PRIMARY KEY, auction_id int NOT NULL, amount decimal(12,2) NOT NULL) ENGINE=InnoDB",
	"CREATE TABLE bench_marker (id int PRIMARY KEY) ENGINE=InnoDB",
}

// myServer is how the benchmark reaches the server: address and user.
type myServer struct {
	srv      *testcontainers.MySQLServer
	addr     string
	host     string
	port     string
	user     string
	password string
	mariadb  bool
}

func (m *myServer) connect(db string) (*client.Conn, error) {
	return client.Connect(m.addr, m.user, m.password, db)
}

// myWorkload writes one backlog on conns and returns (rows changed, tx).
type myWorkload struct {
	name    string
	preload func(m *myServer, db string) error
	write   func(m *myServer, db string) (rows, tx int64, err error)
}

// runMySQL measures the throughput workloads on a private MariaDB/MySQL server.
func (b *bench) runMySQL(ctx context.Context) error {
	srv, err := testcontainers.StartMySQL(ctx)
	if err != nil {
		return fmt.Errorf("start mysql: %w", err)
	}
	defer srv.Close()
	u, err := url.Parse(srv.AdminDSN)
	if err != nil {
		return err
	}
	m := &myServer{srv: srv, addr: u.Host, host: u.Hostname(), port: u.Port(), user: u.User.Username()}
	m.password, _ = u.User.Password()
	conn, err := m.connect("")
	if err != nil {
		return err
	}
	m.mariadb = strings.Contains(strings.ToLower(conn.GetServerVersion()), "mariadb")
	conn.Close()
	b.note("MariaDB/MySQL: private server from testcontainers/ (version %s) with innodb_flush_log_at_trx_commit=2, sync_binlog=0", cmdOutVersion(m))

	for i, w := range myWorkloads(b.cfg) {
		if !b.wantWorkload(i) {
			continue
		}
		if err := b.myWorkload(ctx, m, i, w); err != nil {
			return fmt.Errorf("%s: %w", w.name, err)
		}
	}
	return nil
}

// myWorkloads returns throughput workloads (a), (b) and (c) sized by c.
func myWorkloads(c config) []myWorkload {
	return []myWorkload{
		{
			name: fmt.Sprintf("(a) %d single-row INSERT tx, %d clients", c.smallTx, c.clients),
			write: func(m *myServer, db string) (int64, int64, error) {
				per := max(c.smallTx/c.clients, 1)
				rows, err := m.parallel(db, c.clients, per, func(_ *rand.Rand, conn *client.Conn, i int) (int64, error) {
					r, err := conn.Execute(fmt.Sprintf("INSERT INTO todos (user_id, title) VALUES (%d, 'buy milk')", i%10000+1))
					if err != nil {
						return 0, err
					}
					return int64(r.AffectedRows), nil
				})
				return rows, int64(per * c.clients), err
			},
		},
		{
			name: fmt.Sprintf("(b) one INSERT … SELECT of %d rows", c.bulkRows),
			write: func(m *myServer, db string) (int64, int64, error) {
				conn, err := m.connect(db)
				if err != nil {
					return 0, 0, err
				}
				defer conn.Close()
				r, err := conn.Execute(m.insertSelect("INSERT INTO todos (user_id, title, done) SELECT seq % 10000 + 1, CONCAT('todo ', seq), 0", c.bulkRows))
				if err != nil {
					return 0, 0, err
				}
				return int64(r.AffectedRows), 1, nil
			},
		},
		{
			name: fmt.Sprintf("(c) %d update/delete tx, %d clients", c.mixedTx, c.clients),
			preload: func(m *myServer, db string) error {
				conn, err := m.connect(db)
				if err != nil {
					return err
				}
				defer conn.Close()
				if _, err := conn.Execute(m.insertSelect("INSERT INTO todos (user_id, title) SELECT seq % 10000 + 1, CONCAT('todo ', seq)", c.mixedRows)); err != nil {
					return err
				}
				_, err = conn.Execute(m.insertSelect("INSERT INTO comments (post_id, body) SELECT seq % 5000 + 1, CONCAT('comment ', seq)", max(c.mixedRows/2, 1)))
				return err
			},
			write: func(m *myServer, db string) (int64, int64, error) {
				n := c.mixedRows
				per := max(c.mixedTx/c.clients, 1)
				rows, err := m.parallel(db, c.clients, per, func(rng *rand.Rand, conn *client.Conn, _ int) (int64, error) {
					return myExecAll(conn, myMixedTx(rng, n))
				})
				return rows, int64(per * c.clients), err
			},
		},
	}
}

// myMixedTx picks one transaction of workload (c) on n todos: the same mix
// as the PostgreSQL pgbench scripts (weights 5:2:1:2).
func myMixedTx(rng *rand.Rand, n int) []string {
	switch w := rng.IntN(10); {
	case w < 5:
		return []string{fmt.Sprintf("UPDATE todos SET done = NOT done, updated_at = NOW(6) WHERE id = %d", rng.IntN(n)+1)}
	case w < 7:
		return []string{fmt.Sprintf("UPDATE comments SET spam_score = spam_score + 1 WHERE id = %d", rng.IntN(max(n/2, 1))+1)}
	case w < 8:
		id := rng.IntN(max(n/2-1, 1)) + 1
		return []string{"BEGIN",
			fmt.Sprintf("UPDATE comments SET body = CONCAT(body, '!') WHERE id = %d", id),
			fmt.Sprintf("UPDATE comments SET deleted_at = NOW(6) WHERE id = %d", id+1),
			"COMMIT"}
	default:
		return []string{fmt.Sprintf("DELETE FROM todos WHERE id = %d", rng.IntN(n)+1)}
	}
}

// myExecAll executes stmts in order and sums the rows they changed.
func myExecAll(conn *client.Conn, stmts []string) (int64, error) {
	var rows int64
	for _, s := range stmts {
		r, err := conn.Execute(s)
		if err != nil {
			return rows, err
		}
		rows += int64(r.AffectedRows)
	}
	return rows, nil
}

func cmdOutVersion(m *myServer) string {
	conn, err := m.connect("")
	if err != nil {
		return "unknown"
	}
	defer conn.Close()
	return conn.GetServerVersion()
}

// insertSelect completes "INSERT … SELECT <exprs of seq>" with a row source
// of seq = 1..n: MariaDB's Sequence engine, or a recursive CTE on MySQL.
func (m *myServer) insertSelect(head string, n int) string {
	if m.mariadb {
		return fmt.Sprintf("%s FROM seq_1_to_%d", head, n)
	}
	// MySQL: INSERT … WITH RECURSIVE … SELECT; the recursion depth limit is
	// raised by the caller's session below.
	ins, sel, _ := strings.Cut(head, " SELECT ")
	return fmt.Sprintf("%s WITH RECURSIVE s (seq) AS (SELECT 1 UNION ALL SELECT seq + 1 FROM s WHERE seq < %d) SELECT /*+ SET_VAR(cte_max_recursion_depth = %d) */ %s FROM s", ins, n, n+1, sel)
}

// parallel runs fn per times on each of n connections and sums the rows.
func (m *myServer) parallel(db string, n, per int, fn func(rng *rand.Rand, conn *client.Conn, i int) (int64, error)) (int64, error) {
	var total atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for w := range n {
		wg.Go(func() {
			conn, err := m.connect(db)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			rng := rand.New(rand.NewPCG(uint64(w)+1, 42))
			for i := range per {
				r, err := fn(rng, conn, w*per+i)
				total.Add(r)
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return total.Load(), <-errs
}

// binlogStatus returns the server's current binlog file and position.
func (m *myServer) binlogStatus() (string, uint64, error) {
	conn, err := m.connect("")
	if err != nil {
		return "", 0, err
	}
	defer conn.Close()
	r, err := conn.Execute("SHOW MASTER STATUS")
	if err != nil {
		return "", 0, err
	}
	if r.RowNumber() == 0 {
		return "", 0, fmt.Errorf("SHOW MASTER STATUS: no binary log (is log_bin on?)")
	}
	file, _ := r.GetString(0, 0)
	pos, _ := r.GetUint(0, 1)
	return file, pos, nil
}

// myWorkload measures one workload on a fresh database: tagstream first
// records its checkpoint at the head (its "slot"), then the backlog is
// written and drained by mariadb-binlog and by tagstream.
func (b *bench) myWorkload(ctx context.Context, m *myServer, i int, w myWorkload) error {
	b.logf("mysql %s", w.name)
	db := fmt.Sprintf("bench_my_%d", i)
	if _, err := m.srv.CreateDatabase(ctx, db); err != nil {
		return err
	}
	defer func() { _ = m.srv.Exec(context.WithoutCancel(ctx), "DROP DATABASE IF EXISTS "+db) }()
	dsn := m.dsn(db)
	conn, err := m.connect(db)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := myLoad(m, conn, db, w); err != nil {
		return err
	}
	stateDir := filepath.Join(b.tmp, "state-"+db)
	serverID := strconv.Itoa(4000 + i)
	daemonArgs := []string{"--db", dsn, "--rules", b.rulesPath, "--server-id", serverID}

	// tagstream's checkpoint at the head: run it until a warm-up marker
	// (id 0) arrives, then stop it, which acknowledges and checkpoints.
	if err := b.myWarmUp(ctx, db, conn, append(slices.Clone(daemonArgs), "--state-dir", stateDir)); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	bl, err := b.myWriteBacklog(m, db, conn, w)
	if err != nil {
		return err
	}
	if err := b.myBinlogDrain(ctx, m, w, bl); err != nil {
		return err
	}
	return b.myDaemonDrains(ctx, db, stateDir, daemonArgs, w, bl)
}

// dsn is the tagstream --db URL of database db.
func (m *myServer) dsn(db string) string {
	if m.password == "" {
		return (&url.URL{Scheme: "mysql", User: url.User(m.user), Host: m.addr, Path: "/" + db}).String()
	}
	return (&url.URL{Scheme: "mysql", User: url.UserPassword(m.user, m.password), Host: m.addr, Path: "/" + db}).String()
}

// myLoad creates the schema on conn and runs the workload's preload.
func myLoad(m *myServer, conn *client.Conn, db string, w myWorkload) error {
	for _, s := range mySchema {
		if _, err := conn.Execute(s); err != nil {
			return fmt.Errorf("schema: %w", err)
		}
	}
	if w.preload != nil {
		if err := w.preload(m, db); err != nil {
			return fmt.Errorf("preload: %w", err)
		}
	}
	return nil
}

// myBacklog is one written MariaDB backlog: its size and where it starts.
type myBacklog struct {
	rows, tx  int64
	startFile string
	startPos  uint64
	extra     string // the binlog's size, for the report
}

// myWriteBacklog writes the workload's backlog and the marker row after it.
func (b *bench) myWriteBacklog(m *myServer, db string, conn *client.Conn, w myWorkload) (myBacklog, error) {
	var bl myBacklog
	startFile, startPos, err := m.binlogStatus()
	if err != nil {
		return bl, err
	}
	t0 := time.Now()
	rows, tx, err := w.write(m, db)
	if err != nil {
		return bl, fmt.Errorf("write: %w", err)
	}
	if _, err := conn.Execute("INSERT INTO bench_marker (id) VALUES (1)"); err != nil {
		return bl, err
	}
	endFile, endPos, err := m.binlogStatus()
	if err != nil {
		return bl, err
	}
	b.logf("  backlog written in %s: %d rows, %d tx, binlog %s:%d → %s:%d", time.Since(t0).Round(time.Millisecond), rows, tx, startFile, startPos, endFile, endPos)
	extra := ""
	if startFile == endFile {
		extra = fmt.Sprintf("%.0f MiB binlog", float64(endPos-startPos)/(1<<20))
	}
	return myBacklog{rows: rows, tx: tx, startFile: startFile, startPos: startPos, extra: extra}, nil
}

// myBinlogDrain drains the backlog with mariadb-binlog: it fetches the same
// binlog range from the server and decodes its row events to text (-v),
// the work tagstream's reader does too.
func (b *bench) myBinlogDrain(ctx context.Context, m *myServer, w myWorkload, bl myBacklog) error {
	binlogArgs := []string{"--read-from-remote-server", "--host=" + m.host, "--port=" + m.port, "--user=" + m.user,
		"--start-position=" + strconv.FormatUint(bl.startPos, 10), "--to-last-log",
		"--verbose", "--base64-output=DECODE-ROWS", "--result-file=" + os.DevNull, bl.startFile}
	if m.password != "" {
		binlogArgs = append(binlogArgs, "--password="+m.password)
	}
	tool := "mariadb-binlog"
	if _, err := exec.LookPath(tool); err != nil {
		tool = "mysqlbinlog"
	}
	took, cpu, err := b.runBaseline(ctx, tool, binlogArgs)
	if err != nil {
		return err
	}
	b.throughput = append(b.throughput, throughputRow{DB: "MariaDB", Workload: w.name, Consumer: tool + " -v", Rows: bl.rows, Tx: bl.tx,
		Drain: took, CPU: cpu, Baseline: true, Extra: bl.extra})
	b.logf("  %s drained in %s", tool, took.Round(time.Millisecond))
	return nil
}

// myDaemonDrains drains the backlog with tagstream once per drain client,
// each from its own copy of the warm-up checkpoint in stateDir.
func (b *bench) myDaemonDrains(ctx context.Context, db, stateDir string, daemonArgs []string, w myWorkload, bl myBacklog) error {
	cursor := ""
	if seq, ok := binlogSeq(bl.startFile); ok {
		cursor = strconv.FormatUint(seq<<32|bl.startPos, 10)
	}
	for ci, dc := range drainClients {
		dir := fmt.Sprintf("%s-%d", stateDir, ci)
		if err := os.CopyFS(dir, os.DirFS(stateDir)); err != nil {
			return err
		}
		args := append(slices.Clone(daemonArgs), "--state-dir", dir)
		res, err := b.drainDaemon(ctx, fmt.Sprintf("my-%s-%d", db, ci), dc, cursor, args...)
		if err != nil {
			return err
		}
		b.throughput = append(b.throughput, throughputRow{DB: "MariaDB", Workload: w.name, Consumer: dc.label, Rows: bl.rows, Tx: bl.tx,
			Drain: res.drain, CPU: res.cpu, Extra: res.describe()})
		b.noteResets(res)
		b.logf("  %s drained in %s (%s), marker event id %s", dc.label, res.drain.Round(time.Millisecond), res.describe(), res.markerID)
	}
	return nil
}

// myWarmUp runs tagstream until it has delivered a warm-up marker, so that
// its checkpoint sits at the binlog head before the backlog is written.
func (b *bench) myWarmUp(ctx context.Context, db string, conn *client.Conn, args []string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	d, err := b.startDaemon(ctx, "my-warmup-"+db, args...)
	if err != nil {
		return err
	}
	defer d.stop()
	if err := d.waitHTTP(ctx, "/readyz", 30*time.Second); err != nil {
		return err
	}
	c, err := dialSSE(ctx, d.addr, "bench-marker:0", "")
	if err != nil {
		return err
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	if _, err := c.waitReady(deadline); err != nil {
		return err
	}
	if _, err := conn.Execute("INSERT INTO bench_marker (id) VALUES (0)"); err != nil {
		return err
	}
	for {
		ev, err := c.next(deadline)
		if err != nil {
			return fmt.Errorf("no warm-up event: %w\n%s", err, d.logTail())
		}
		if ev.Name == "invalidate" {
			break
		}
	}
	return d.stop()
}

// binlogSeq extracts the sequence number of a binlog file name
// ("binlog.000042" → 42).
func binlogSeq(file string) (uint64, bool) {
	i := strings.LastIndexByte(file, '.')
	if i < 0 {
		return 0, false
	}
	n, err := strconv.ParseUint(file[i+1:], 10, 32)
	return n, err == nil
}
