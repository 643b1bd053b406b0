package mysql_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/cdc/mysql"
)

// binlogEnd is the server's binlog head as a position.
func binlogEnd(t testing.TB, c *client.Conn) cdc.Position {
	t.Helper()
	r, err := c.Execute("SHOW MASTER STATUS")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	file, _ := r.GetString(0, 0)
	pos, _ := r.GetUint(0, 1)
	return cdc.Position(fileSeqOf(file)<<32 | pos)
}

// waitPolls waits until the fence has sent n more queries while done
// stays empty: WaitVisible is waiting.
func waitPolls(t *testing.T, r *mysql.Reader, from uint64, n uint64, done chan error) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for mysql.FenceQueries(r) < from+n {
		select {
		case err := <-done:
			t.Fatalf("WaitVisible returned %v before the commit", err)
		case <-deadline:
			t.Fatal("the fence did not poll")
		case <-time.After(time.Millisecond):
		}
	}
}

func wantReturn(t *testing.T, done chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("WaitVisible = %v, want nil", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("WaitVisible did not return after the commit")
	}
}

// TestFenceMariaDB: committed transactions are proven with one query per
// batch; a position not yet committed is waited for; after a binlog
// rotation the previous file's transactions are proven by the first commit
// in the new file (the group commit that rotates names the new file before
// its own transactions are committed in the engine), and at once two files
// later; without a proof WaitVisible gives up after its timeout.
func TestFenceMariaDB(t *testing.T) {
	e := setup(t)
	e.exec("CREATE TABLE t (id INT PRIMARY KEY)")
	e.cfg.FenceTimeout = time.Minute
	rec := newRecorder(t, e.schema)
	run := e.start(rec)
	r := run.r
	ctx := context.Background()

	e.exec("INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)", "INSERT INTO t VALUES (3)")
	rec.Lines(t, 3)
	var batch []cdc.Commit
	for _, p := range rec.Positions() {
		batch = append(batch, cdc.Commit{Position: p})
	}
	q := mysql.FenceQueries(r)
	if err := r.WaitVisible(ctx, batch); err != nil {
		t.Fatal(err)
	}
	if n := mysql.FenceQueries(r) - q; n != 1 {
		t.Errorf("a committed batch took %d queries, want 1", n)
	}
	if !strings.Contains(strings.ToLower(e.conn.GetServerVersion()), "mariadb") {
		return // the rest is MariaDB's proof; MySQL's is its GTIDs
	}

	// Not yet written: waits until a commit reaches it.
	next := binlogEnd(t, e.conn) + 1
	done := make(chan error, 1)
	q = mysql.FenceQueries(r)
	go func() { done <- r.WaitVisible(ctx, []cdc.Commit{{Position: next}}) }()
	waitPolls(t, r, q, 3, done)
	e.exec("INSERT INTO t VALUES (4)")
	wantReturn(t, done)

	// Rotation: the status names the new file at its header's end.
	rec.Lines(t, 4)
	ps := rec.Positions()
	old := ps[len(ps)-1]
	e.exec("FLUSH BINARY LOGS")
	q = mysql.FenceQueries(r)
	go func() { done <- r.WaitVisible(ctx, []cdc.Commit{{Position: old}}) }()
	waitPolls(t, r, q, 3, done)
	e.exec("INSERT INTO t VALUES (5)")
	wantReturn(t, done)
	e.exec("FLUSH BINARY LOGS", "FLUSH BINARY LOGS")
	q = mysql.FenceQueries(r)
	if err := r.WaitVisible(ctx, []cdc.Commit{{Position: old}}); err != nil {
		t.Fatal(err)
	}
	if n := mysql.FenceQueries(r) - q; n != 1 {
		t.Errorf("two files later: %d queries, want 1", n)
	}
	run.stop()

	// Timeout and cancellation, with a short fence timeout.
	e.cfg.FenceTimeout = 100 * time.Millisecond
	r2 := e.start(newRecorder(t, e.schema)).r
	far := binlogEnd(t, e.conn) + 1000
	start := time.Now()
	err := r2.WaitVisible(ctx, []cdc.Commit{{Position: far}})
	if !errors.Is(err, cdc.ErrNotVisible) {
		t.Fatalf("WaitVisible of a position never written = %v, want ErrNotVisible", err)
	}
	if el := time.Since(start); el < 100*time.Millisecond {
		t.Errorf("gave up after %s, before the timeout", el)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := r2.WaitVisible(cctx, []cdc.Commit{{Position: far}}); !errors.Is(err, context.Canceled) {
		t.Errorf("WaitVisible with a cancelled context = %v, want context.Canceled", err)
	}
}

// TestFenceAfterRunEnds: a stopped reader proves nothing and says so at
// once.
func TestFenceAfterRunEnds(t *testing.T) {
	e := setup(t)
	run := e.start(newRecorder(t, e.schema))
	if err := run.stop(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := run.r.WaitVisible(context.Background(), []cdc.Commit{{Position: 1}})
	if !errors.Is(err, cdc.ErrNotVisible) {
		t.Fatalf("WaitVisible after Run = %v, want ErrNotVisible", err)
	}
	if el := time.Since(start); el > 500*time.Millisecond {
		t.Errorf("took %s; want at once", el)
	}
}

// TestFenceLeastPrivilege: the fence needs nothing beyond the reader's
// grants.
func TestFenceLeastPrivilege(t *testing.T) {
	e := setup(t)
	e.exec("CREATE TABLE t (id INT PRIMARY KEY)")
	user := fmt.Sprintf("tsf_%d", time.Now().UnixNano()%1e9)
	e.exec(
		"CREATE USER '"+user+"'@'127.0.0.1' IDENTIFIED BY 'pw'",
		"GRANT SELECT ON `"+e.schema+"`.* TO '"+user+"'@'127.0.0.1'",
		"GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '"+user+"'@'127.0.0.1'",
	)
	t.Cleanup(func() { execOn(t, e.connect(), "DROP USER '"+user+"'@'127.0.0.1'") })
	d, err := mysql.ParseDSN(e.dsn)
	if err != nil {
		t.Fatal(err)
	}
	e.cfg.DSN = fmt.Sprintf("mysql://%s:pw@%s/%s", user, d.Addr(), d.Database)
	rec := newRecorder(t, e.schema)
	r := e.start(rec).r
	e.exec("INSERT INTO t VALUES (1)")
	rec.Lines(t, 1)
	pos := rec.Positions()[0]
	if err := r.WaitVisible(context.Background(), []cdc.Commit{{Position: pos}}); err != nil {
		t.Fatalf("WaitVisible with the reader's grants = %v", err)
	}
	// Across a rotation (SHOW BINLOG EVENTS for the new file's header).
	e.exec("FLUSH BINARY LOGS", "INSERT INTO t VALUES (2)")
	if err := r.WaitVisible(context.Background(), []cdc.Commit{{Position: pos}}); err != nil {
		t.Fatalf("WaitVisible after a rotation with the reader's grants = %v", err)
	}
}
