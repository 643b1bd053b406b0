package main

import (
	"bufio"
	"context"
	"errors"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/client"
	"github.com/jackc/pgx/v5"

	"github.com/tagstream/tagstream/internal/launch"
)

// tailProc is a running `tagstream tail` process.
type tailProc struct {
	*launch.Process
	lines chan string // stdout, line by line; closed at EOF (Log() is stderr)
}

// startTail runs `tagstream tail args…` in dir with env and waits until it
// says on stderr that it is streaming.
func startTail(t *testing.T, dir string, env []string, args ...string) *tailProc {
	t.Helper()
	return startTailCommand(t, launch.Options{Path: binary, Args: append([]string{"tail"}, args...), Dir: dir, Env: env})
}

// startTailCommand starts o, a `tagstream tail` command line, and waits until it
// says on stderr that it is streaming.
func startTailCommand(t *testing.T, o launch.Options) *tailProc {
	t.Helper()
	o.PipeStdout = true
	lp, err := launch.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	p := &tailProc{Process: lp, lines: make(chan string, 100)}
	go func() {
		sc := bufio.NewScanner(lp.Stdout())
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	t.Cleanup(func() {
		lp.Kill()
		if t.Failed() {
			t.Logf("tagstream tail stderr:\n%s", p.Log())
		}
	})
	ctx, cancel := context.WithTimeoutCause(context.Background(), 30*time.Second, errors.New("not streaming within 30s"))
	defer cancel()
	streaming := func(context.Context) bool {
		return strings.Contains(p.Log().String(), "tagstream tail: streaming from position ")
	}
	if err := lp.Await(ctx, 20*time.Millisecond, streaming); err != nil {
		t.Fatalf("tail: %v", err)
	}
	return p
}

// raw returns the next stdout line as it is.
func (p *tailProc) raw(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			<-p.Done() // stdout ends after the exit
			t.Fatalf("tail stdout ended: %v\n%s", p.Err(), p.Log())
		}
		return l
	case <-time.After(30 * time.Second):
		t.Fatalf("no tail line within 30s\n%s", p.Log())
	}
	return ""
}

var tailLine = regexp.MustCompile(`^position=([0-9]+) (rows=.*)$`)

// next returns the next stdout line split into its position and the rest.
func (p *tailProc) next(t *testing.T) (uint64, string) {
	t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			<-p.Done() // stdout ends after the exit
			t.Fatalf("tail stdout ended: %v\n%s", p.Err(), p.Log())
		}
		m := tailLine.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("tail printed %q", l)
		}
		pos, err := strconv.ParseUint(m[1], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return pos, m[2]
	case <-time.After(30 * time.Second):
		t.Fatalf("no tail line within 30s\n%s", p.Log())
	}
	return 0, ""
}

// interrupt sends SIGINT and asserts exit status 0 and that nothing more
// was printed.
func (p *tailProc) interrupt(t *testing.T) {
	t.Helper()
	_ = p.Signal(syscall.SIGINT)
	var rest []string
	for l := range p.lines {
		rest = append(rest, l)
	}
	<-p.Done()
	if p.Err() != nil || len(rest) > 0 {
		t.Fatalf("after SIGINT: exit %v, more lines %q\n%s", p.Err(), rest, p.Log())
	}
}

// tailRules adds a table without rules to the todo schema's rules.
const tailSchemaPG = `CREATE TABLE other (id int PRIMARY KEY);`

// TestTailPostgres: tail on a temporary slot prints each transaction's
// position, rows per table and tags; SIGINT exits 0 and no slot remains.
func TestTailPostgres(t *testing.T) {
	dsn, db, rulesFile := setupPG(t)
	execSQL(t, db, tailSchemaPG)
	ctx := context.Background()

	// No publication: tail creates none, says how, exits 2.
	code, stdout, stderr := runBinary(t, nil, "tail", "--db", dsn, "--rules", rulesFile)
	want := `tagstream: postgres: configuration error: publication "tagstream" does not exist, and a dry run creates nothing durable: run CREATE PUBLICATION "tagstream" FOR ALL TABLES WITH (publish_via_partition_root = true); or name an existing publication (--publication)` + "\n"
	if code != 2 || stdout != "" || stderr != want {
		t.Fatalf("without a publication: exit %d stdout %q stderr\n got %q\nwant %q", code, stdout, stderr, want)
	}
	execSQL(t, db, `CREATE PUBLICATION tail_pub FOR ALL TABLES`)

	p := startTail(t, t.TempDir(), nil, "--db", dsn, "--rules", rulesFile, "--publication", "tail_pub", "--temporary-slot", "tail_e2e")
	var temporary bool
	if err := db.QueryRow(ctx, `SELECT temporary FROM pg_replication_slots WHERE slot_name = 'tail_e2e'`).Scan(&temporary); err != nil || !temporary {
		t.Fatalf("while tailing: slot temporary=%v err %v", temporary, err)
	}

	var last uint64
	step := func(want string, sql ...string) {
		t.Helper()
		execSQL(t, db, sql...)
		var end uint64
		if err := db.QueryRow(ctx, `SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint`).Scan(&end); err != nil {
			t.Fatal(err)
		}
		pos, rest := p.next(t)
		if rest != want || pos <= last || pos > end {
			t.Fatalf("after %q:\n got position=%d %s\nwant position in (%d, %d] %s", sql, pos, rest, last, end, want)
		}
		last = pos
	}
	step("rows=public.todos:1 tags=todo:42,todos,user:7:todos", `INSERT INTO todos (id, user_id, title) VALUES (42, 7, 'write tests')`)
	step("rows=public.todos:1 tags=todo:42,todos,user:7:todos,user:9:todos", `UPDATE todos SET user_id = 9 WHERE id = 42`)
	// The columns filter: a row changed, no tag.
	step("rows=public.todos:1 tags=", `UPDATE todos SET updated_at = now() + interval '1 hour' WHERE id = 42`)
	// A rolled-back transaction prints nothing; the next line is the
	// transaction after it.
	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO todos (id, user_id) VALUES (43, 7)`); err != nil {
		t.Fatal(err)
	}
	tx.Rollback(ctx)
	step("rows=public.markers:1,public.todos:2 tags=marker:1,todo:1,todo:2,todos,user:7:todos,user:8:todos",
		`BEGIN`, `INSERT INTO todos (id, user_id) VALUES (1, 7), (2, 8)`, `INSERT INTO markers VALUES (1)`, `COMMIT`)
	step("rows=public.other:1 tags=", `INSERT INTO other VALUES (1)`)
	step("rows=public.todos:1 tags=todo:*,todos,user:*:todos", `TRUNCATE todos`)

	// A second tail cannot take a slot name in use.
	code, stdout, stderr = runBinary(t, nil, "tail", "--db", dsn, "--rules", rulesFile, "--publication", "tail_pub", "--temporary-slot", "tail_e2e")
	want = `tagstream: postgres: create temporary replication slot: configuration error: slot "tail_e2e" exists: pick another name` + "\n"
	if code != 2 || stdout != "" || stderr != want {
		t.Fatalf("same slot: exit %d stdout %q stderr\n got %q\nwant %q", code, stdout, stderr, want)
	}

	// The connection ends: its slot is gone with it, so tail says that
	// transactions may be missing, then goes on with a new slot.
	var pid int32
	if err := db.QueryRow(ctx, `SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'tail_e2e'`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	execSQL(t, db, `SELECT pg_terminate_backend(`+strconv.Itoa(int(pid))+`)`)
	if l := p.raw(t); l != `reset reason="temporary replication slot \"tail_e2e\" ended with its connection: changes since may be missing"` {
		t.Fatalf("after the connection ended: %q", l)
	}
	waitFor(t, func() bool { // a new slot, streaming to a new walsender
		var active *int32
		err := db.QueryRow(ctx, `SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'tail_e2e'`).Scan(&active)
		return err == nil && active != nil && *active != pid
	})
	step("rows=public.markers:1 tags=marker:2", `INSERT INTO markers VALUES (2)`)

	p.interrupt(t)
	// The server drops a temporary slot once its walsender has exited,
	// which it does after the process left.
	waitFor(t, func() bool {
		var n int
		if err := db.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE database = current_database()`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 0
	})
	var pubs []string
	rows, err := db.Query(ctx, `SELECT pubname::text FROM pg_publication ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	pubs, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(pubs) != 1 || pubs[0] != "tail_pub" {
		t.Fatalf("publications %q (%v), want only tail_pub", pubs, err)
	}
}

// binlogPosition is the binlog head as a tagstream position:
// (file sequence << 32) | offset.
func binlogPosition(t *testing.T, conn *gomysql.Conn) uint64 {
	t.Helper()
	r, err := conn.Execute("SHOW MASTER STATUS")
	if err != nil {
		t.Fatal(err)
	}
	file, _ := r.GetString(0, 0)
	off, _ := r.GetUint(0, 1)
	seq, err := strconv.ParseUint(file[strings.LastIndexByte(file, '.')+1:], 10, 64)
	if err != nil {
		t.Fatalf("binlog file %q: %v", file, err)
	}
	return seq<<32 | off
}

// TestTailMariaDB: tail from the binlog head prints each transaction with
// its exact position; SIGINT exits 0 and no checkpoint file was written.
func TestTailMariaDB(t *testing.T) {
	dsn, db, rulesFile := setupMariaDB(t)
	execMySQL(t, db, `CREATE TABLE other (id int PRIMARY KEY)`)
	schema := strings.TrimPrefix(dsn[strings.LastIndexByte(dsn, '/'):], "/")
	// Committed before tail starts: tail reads from the current head, so
	// its first line is the first step's, not this.
	execMySQL(t, db, `INSERT INTO todos (id, user_id) VALUES (99, 5)`)
	// A state directory from the environment, and the working directory
	// (default ./.tagstream): tail writes into neither.
	work, state := t.TempDir(), t.TempDir()
	p := startTail(t, work, []string{"TAGSTREAM_STATE_DIR=" + state, "TAGSTREAM_SERVER_ID=4242"}, "--db", dsn, "--rules", rulesFile)

	step := func(want string, stmts ...string) {
		t.Helper()
		execMySQL(t, db, stmts...)
		end := binlogPosition(t, db)
		pos, rest := p.next(t)
		want = strings.ReplaceAll(want, "DB.", schema+".")
		if rest != want || pos != end {
			t.Fatalf("after %q:\n got position=%d %s\nwant position=%d %s", stmts, pos, rest, end, want)
		}
	}
	step("rows=DB.todos:1 tags=todo:42,todos,user:7:todos", `INSERT INTO todos (id, user_id, title) VALUES (42, 7, 'write tests')`)
	step("rows=DB.todos:1 tags=todo:42,todos,user:7:todos,user:9:todos", `UPDATE todos SET user_id = 9 WHERE id = 42`)
	step("rows=DB.todos:1 tags=", `UPDATE todos SET updated_at = '2026-01-01 00:00:00' WHERE id = 42`)
	execMySQL(t, db, `BEGIN`, `INSERT INTO todos (id, user_id) VALUES (43, 7)`, `ROLLBACK`)
	step("rows=DB.markers:1,DB.todos:2 tags=marker:1,todo:1,todo:2,todos,user:7:todos,user:8:todos",
		`BEGIN`, `INSERT INTO todos (id, user_id) VALUES (1, 7), (2, 8)`, `INSERT INTO markers VALUES (1)`, `COMMIT`)
	step("rows=DB.other:1 tags=", `INSERT INTO other VALUES (1)`)
	step("rows=DB.todos:1 tags=todo:*,todos,user:*:todos", `TRUNCATE TABLE todos`)

	p.interrupt(t)
	for _, dir := range []string{work, state} {
		entries, err := os.ReadDir(dir)
		if err != nil || len(entries) != 0 {
			t.Fatalf("%s after tail: %v %v, want empty", dir, entries, err)
		}
	}
}
