package main

// End-to-end tests: build the tagstream binary, run it as a process against a
// real Postgres, subscribe over HTTP and assert the exact events a client
// receives.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tagstream/tagstream/internal/launch"
	"github.com/tagstream/tagstream/testcontainers"
)

var binary string // the tagstream binary built by TestMain

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tagstream-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if binary, err = launch.BuildTagstream(context.Background(), dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	testcontainers.Shutdown()
	os.RemoveAll(dir)
	os.Exit(code)
}

// daemon is a running `tagstream run` (or serve) process, started by
// internal/launch like the examples' and the benchmark's.
type daemon struct {
	*launch.Process        // Log() is its stderr (and stdout)
	base            string // http://127.0.0.1:port
}

// startDaemon runs `tagstream run` with args plus --listen on a free port and
// waits until /readyz says the source is streaming.
func startDaemon(t *testing.T, args ...string) *daemon {
	t.Helper()
	return startDaemonOn(t, freeAddr(t), args...)
}

// startDaemonOn is startDaemon listening on addr.
func startDaemonOn(t *testing.T, addr string, args ...string) *daemon {
	t.Helper()
	return launchDaemon(t, "run", addr, (*daemon).ready, args...)
}

// startDaemonWrapped is startDaemonOn with the binary started by wrap, a
// command line that execs the binary and the arguments appended to it
// (unshare -m … for a private mount namespace).
func startDaemonWrapped(t *testing.T, addr string, wrap []string, args ...string) *daemon {
	t.Helper()
	return launchWrapped(t, wrap, "run", addr, (*daemon).ready, args...)
}

// launchDaemon runs `tagstream sub --listen addr args…` and waits until up
// says so (it is asked every 50 ms for 30 s).
func launchDaemon(t *testing.T, sub, addr string, up func(*daemon) bool, args ...string) *daemon {
	t.Helper()
	return launchWrapped(t, nil, sub, addr, up, args...)
}

// launchWrapped is launchDaemon with the binary started by wrap (nil:
// directly).
func launchWrapped(t *testing.T, wrap []string, sub, addr string, up func(*daemon) bool, args ...string) *daemon {
	t.Helper()
	p, err := launch.Start(launch.Options{
		Path: binary,
		Args: append([]string{sub, "--listen", addr, "--log-level", "debug"}, args...),
		Wrap: wrap,
	})
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{Process: p, base: "http://" + addr}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("tagstream %s stderr:\n%s", sub, d.Log())
		}
	})
	ctx, cancel := context.WithTimeoutCause(context.Background(), 30*time.Second, errors.New("not up within 30s"))
	defer cancel()
	if err := p.Await(ctx, 50*time.Millisecond, func(context.Context) bool { return up(d) }); err != nil {
		t.Fatalf("tagstream %s: %v", sub, err)
	}
	return d
}

// ready reports whether /readyz answers 200.
func (d *daemon) ready() bool {
	return launch.HTTPStatus200(d.base + "/readyz")(context.Background())
}

// stop sends SIGTERM and asserts a clean exit.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	d.stopWith(t, syscall.SIGTERM)
}

// stopWith sends sig and asserts exit status 0.
func (d *daemon) stopWith(t *testing.T, sig os.Signal) {
	t.Helper()
	_ = d.Signal(sig)
	select {
	case <-d.Done():
	case <-time.After(20 * time.Second):
		t.Fatalf("tagstream did not stop within 20s after %v\n%s", sig, d.Log())
	}
	if err := d.Err(); err != nil {
		t.Fatalf("tagstream exit: %v\n%s", err, d.Log())
	}
}

// kill ends the daemon with SIGKILL: no drain, no final acknowledgement.
func (d *daemon) kill() { d.Kill() }

const todoSchema = `
CREATE TABLE todos (
  id int PRIMARY KEY,
  user_id int,
  title text NOT NULL DEFAULT '',
  done boolean NOT NULL DEFAULT false,
  updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE todos REPLICA IDENTITY FULL;
CREATE TABLE markers (id int PRIMARY KEY);
`

const todoRules = `rules:
  - name: todo
    table: todos
    columns: [title, done, user_id]
    tags:
      - todos
      - todo:{id}
      - user:{user_id}:todos
  - name: marker
    table: markers
    tags: ["marker:{id}"]
`

// setupPG returns a fresh database with the todo schema, a connection to it
// and a rules file for it.
func setupPG(t *testing.T) (dsn string, db *pgx.Conn, rulesFile string) {
	t.Helper()
	dsn, db = testcontainers.PostgresDB(t, todoSchema)
	return dsn, db, writeFile(t, "rules.yaml", todoRules)
}

func execSQL(t *testing.T, db *pgx.Conn, sql ...string) {
	t.Helper()
	for _, s := range sql {
		if _, err := db.Exec(context.Background(), s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// TestEndToEndPostgres walks the rules and SSE contracts through the real
// binary: every write is followed by the exact events each client receives.
func TestEndToEndPostgres(t *testing.T) {
	dsn, db, rulesFile := setupPG(t)
	d := startDaemon(t, "--db", dsn, "--rules", rulesFile, "--slot", "e2e", "--publication", "e2e")
	if !launch.HTTPStatus200(d.base + "/healthz")(context.Background()) {
		t.Error("/healthz is not 200 on a live process")
	}

	all := subscribe(t, d.base, "tags=todos,marker:*", "")
	one := subscribe(t, d.base, "tags=todo:42", "")
	users := subscribe(t, d.base, "tags=user:*:todos&tags=marker:*", "")
	for _, c := range []*sseClient{all, one, users} {
		c.expect(t, `ready {"resumed":false}`)
	}

	execSQL(t, db, `INSERT INTO todos (id, user_id, title) VALUES (42, 7, 'write tests')`)
	all.expect(t, "invalidate todos")
	one.expect(t, "invalidate todo:42")
	users.expect(t, "invalidate user:7:todos")

	// Moving a todo between users invalidates both users' lists.
	execSQL(t, db, `UPDATE todos SET user_id = 9 WHERE id = 42`)
	all.expect(t, "invalidate todos")
	one.expect(t, "invalidate todo:42")
	users.expect(t, "invalidate user:7:todos user:9:todos")

	// The columns filter suppresses an update of an unlisted column; the
	// marker transaction after it is the next thing anyone sees.
	execSQL(t, db, `UPDATE todos SET updated_at = now() + interval '1 hour' WHERE id = 42`,
		`INSERT INTO markers VALUES (1)`)
	all.expect(t, "invalidate marker:1")
	users.expect(t, "invalidate marker:1")

	// A rolled-back transaction yields nothing.
	tx, err := db.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(context.Background(), `INSERT INTO todos (id, user_id) VALUES (43, 7)`); err != nil {
		t.Fatal(err)
	}
	tx.Rollback(context.Background())
	execSQL(t, db, `INSERT INTO markers VALUES (2)`)
	all.expect(t, "invalidate marker:2")
	users.expect(t, "invalidate marker:2")

	// One transaction touching several rows: one event, the de-duplicated union.
	execSQL(t, db, `INSERT INTO todos (id, user_id) VALUES (1, 7), (2, 7), (3, 8)`)
	all.expect(t, "invalidate todos")
	users.expect(t, "invalidate user:7:todos user:8:todos")

	// Delete expands against the old row.
	execSQL(t, db, `DELETE FROM todos WHERE id = 42`)
	all.expect(t, "invalidate todos")
	one.expect(t, "invalidate todo:42")
	users.expect(t, "invalidate user:9:todos")

	// TRUNCATE: wildcard tags reach every subscriber they could match; a
	// subscriber gets its own entries back.
	execSQL(t, db, `TRUNCATE todos`)
	all.expect(t, "invalidate todos")
	one.expect(t, "invalidate todo:42")
	users.expect(t, "invalidate user:*:todos")

	// A NULL value yields no tag from that template.
	execSQL(t, db, `INSERT INTO todos (id, user_id) VALUES (5, NULL)`)
	all.expect(t, "invalidate todos")
	execSQL(t, db, `INSERT INTO markers VALUES (3)`)
	users.expect(t, "invalidate marker:3")

	// /metrics counts what happened: 10 committed transactions, one of
	// them (the filtered update) without tags; 3 subscribers.
	resp, err := http.Get(d.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		"\n# TYPE tagstream_transactions_total counter\ntagstream_transactions_total 10\n",
		"\ntagstream_transactions_without_tags_total 1\n",
		"\ntagstream_subscribers 3\n",
		"\n# TYPE tagstream_rules_long_tags_total counter\ntagstream_rules_long_tags_total 0\n",
		"\ntagstream_sink_delivered_total{sink=\"sse\"} 10\n",
		"\n# TYPE tagstream_publish_delay_seconds histogram\n",
		"\ntagstream_publish_delay_seconds_count{sink=\"sse\"} 10\n",
		"\n# TYPE tagstream_source_delay_seconds histogram\n",
		"\ntagstream_source_delay_seconds_count 10\n",
		"\n# TYPE go_goroutines gauge\n",
		"\n# TYPE process_resident_memory_bytes gauge\n",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q:\n%s", strings.TrimSpace(want), body)
		}
	}
	d.stop(t)
}

// TestResumeAfterStop: a client that reconnects with its last id after a
// clean restart gets exactly what it missed, then ready resumed:true.
func TestResumeAfterStop(t *testing.T) {
	dsn, db, rulesFile := setupPG(t)
	args := []string{"--db", dsn, "--rules", rulesFile, "--slot", "resume", "--publication", "resume"}
	d := startDaemon(t, args...)
	c := subscribe(t, d.base, "tags=todo:*", "")
	c.expect(t, `ready {"resumed":false}`)
	execSQL(t, db, `INSERT INTO todos (id, user_id) VALUES (1, 1)`)
	last := c.expect(t, "invalidate todo:1")[0].ID
	c.close()
	d.stopWith(t, os.Interrupt) // SIGINT drains like SIGTERM

	// Written while tagstream is down: the slot keeps it.
	execSQL(t, db, `INSERT INTO todos (id, user_id) VALUES (2, 1)`, `UPDATE todos SET done = true WHERE id = 1`)
	d = startDaemon(t, args...)
	c = subscribe(t, d.base, "tags=todo:*", last)
	c.expectAnyOrder(t, "invalidate todo:2", "invalidate todo:1", `ready {"resumed":true}`)
	d.stop(t)
}

// TestKill9UnderWrites: SIGKILL the daemon while rows are being written,
// restart it, reconnect with the last id: the tags received cover every
// committed change, or the client was told to reset.
func TestKill9UnderWrites(t *testing.T) {
	dsn, db, rulesFile := setupPG(t)
	args := []string{"--db", dsn, "--rules", rulesFile, "--slot", "kill", "--publication", "kill"}
	d := startDaemon(t, args...)
	c := subscribe(t, d.base, "tags=todo:*", "")
	c.expect(t, `ready {"resumed":false}`)

	seen := map[int]bool{}
	lastID := ""
	record := func(ev sseEvent) {
		lastID = ev.ID
		for _, tag := range strings.Fields(strings.TrimPrefix(render(t, ev), "invalidate ")) {
			n, err := strconv.Atoi(strings.TrimPrefix(tag, "todo:"))
			if err != nil {
				t.Fatalf("unexpected tag %q", tag)
			}
			seen[n] = true
		}
	}

	const rows = 300
	committed := 0
	for i := 1; i <= rows; i++ {
		execSQL(t, db, fmt.Sprintf(`INSERT INTO todos (id, user_id) VALUES (%d, 1)`, i))
		committed = i
		if i == rows/2 {
			// Take what arrived so far, then kill mid-stream.
			for len(seen) < 10 {
				record(c.next(t))
			}
			d.kill()
		}
	}
	// Drain whatever the dead connection delivered before it closed.
	for ev := range c.events {
		if ev.Event == "invalidate" {
			record(ev)
		}
	}

	d = startDaemon(t, args...)
	c = subscribe(t, d.base, "tags=todo:*", lastID)
	reset := false
	for {
		ev := c.next(t)
		if ev.Event == "reset" {
			reset = true
			c.expect(t, `ready {"resumed":false}`)
			break
		}
		if ev.Event == "ready" {
			if ev.Data != `{"resumed":true}` {
				t.Fatalf("ready after resume: %s", ev)
			}
			continue
		}
		record(ev)
		if len(seen) == committed {
			break
		}
	}
	t.Logf("after kill -9: %d of %d committed todos seen, reset=%v", len(seen), committed, reset)
	if !reset {
		for i := 1; i <= committed; i++ {
			if !seen[i] {
				t.Fatalf("todo:%d committed but never invalidated (and no reset)", i)
			}
		}
	}
	d.stop(t)
}

// TestRulesReload: SIGHUP applies a valid new rules file; an invalid one is
// rejected and the rules in force stay.
func TestRulesReload(t *testing.T) {
	dsn, db, rulesFile := setupPG(t)
	d := startDaemon(t, "--db", dsn, "--rules", rulesFile, "--slot", "reload", "--publication", "reload", "--rules-poll", "0")
	c := subscribe(t, d.base, "tags=marker:*,mark:*", "")
	c.expect(t, `ready {"resumed":false}`)

	if err := os.WriteFile(rulesFile, []byte("rules:\n  - table: markers\n    tags: [\"mark:{id\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d.Cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, func() bool { return strings.Contains(d.Log().String(), "rules reload rejected") })
	execSQL(t, db, `INSERT INTO markers VALUES (1)`)
	c.expect(t, "invalidate marker:1")

	if err := os.WriteFile(rulesFile, []byte("rules:\n  - table: markers\n    tags: [\"mark:{id}\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d.Cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, func() bool { return strings.Contains(d.Log().String(), "rules reloaded") })
	execSQL(t, db, `INSERT INTO markers VALUES (2)`)
	c.expect(t, "invalidate mark:2")
	d.stop(t)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSlotLostResets: when the slot is dropped under tagstream, every client
// gets a reset, the slot is recreated and streaming continues.
func TestSlotLostResets(t *testing.T) {
	dsn, db, rulesFile := setupPG(t)
	d := startDaemon(t, "--db", dsn, "--rules", rulesFile, "--slot", "lost", "--publication", "lost")
	c := subscribe(t, d.base, "tags=todo:*", "")
	c.expect(t, `ready {"resumed":false}`)
	execSQL(t, db, `INSERT INTO todos (id, user_id) VALUES (1, 1)`)
	c.expect(t, "invalidate todo:1")

	// tagstream reconnects quickly: terminate its walsender and drop the
	// slot until the drop wins.
	waitFor(t, func() bool {
		db.Exec(context.Background(), `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'lost'`)
		_, err := db.Exec(context.Background(), `SELECT pg_drop_replication_slot('lost')`)
		return err == nil
	})
	c.expect(t, `reset {"reason":"replication slot \"lost\" was dropped while in use: changes may be lost"}`)
	waitFor(t, func() bool {
		var n int
		db.QueryRow(context.Background(), `SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'lost' AND active`).Scan(&n)
		return n == 1
	})
	execSQL(t, db, `INSERT INTO todos (id, user_id) VALUES (2, 1)`)
	c.expect(t, "invalidate todo:2")
	d.stop(t)
}

// TestCheckAgainstDatabase: check --db reports what the database lacks with
// the SQL that fixes it; errors exit 1, warnings alone exit 0.
func TestCheckAgainstDatabase(t *testing.T) {
	dsn, db, rulesFile := setupPG(t)
	execSQL(t, db, `ALTER TABLE todos REPLICA IDENTITY DEFAULT`)
	code, stdout, stderr := runBinary(t, nil, "check", "--rules", rulesFile, "--db", dsn)
	want := `warning: max_slot_wal_keep_size is -1 (unlimited): while tagstream is stopped or stuck, its slot keeps WAL until the disk is full
  fix: ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'; SELECT pg_reload_conf(); -- size it to what the disk can spare; if the slot loses WAL, tagstream resets its clients and continues
warning: rule todo: the rule reads old values of user_id, title, done but table public.todos sends only its key in old rows (REPLICA IDENTITY DEFAULT): unknown old values become wildcards
  fix: ALTER TABLE "public"."todos" REPLICA IDENTITY FULL;
` + rulesFile + `: 2 rule(s) OK against ` + dsn + ` (2 warning(s))
`
	if code != 0 || stdout != want {
		t.Fatalf("exit %d\nstdout:\n%s\nwant:\n%s\nstderr: %s", code, stdout, want, stderr)
	}

	bad := filepath.Join(t.TempDir(), "rules.yaml")
	os.WriteFile(bad, []byte("rules:\n  - name: ghost\n    table: ghosts\n    tags: [\"ghost:{id}\"]\n  - name: todo\n    table: todos\n    tags: [\"todo:{uuid}\"]\n"), 0o644)
	code, stdout, _ = runBinary(t, nil, "check", "--rules", bad, "--db", dsn)
	want = `error: rule ghost: table public.ghosts does not exist
error: rule todo: column "uuid" does not exist in table public.todos
warning: max_slot_wal_keep_size is -1 (unlimited): while tagstream is stopped or stuck, its slot keeps WAL until the disk is full
  fix: ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'; SELECT pg_reload_conf(); -- size it to what the disk can spare; if the slot loses WAL, tagstream resets its clients and continues
` + bad + `: 2 rule(s), 2 error(s), 1 warning(s) against ` + dsn + `
`
	if code != 1 || stdout != want {
		t.Fatalf("exit %d\nstdout:\n%s\nwant:\n%s", code, stdout, want)
	}
}

// TestDatabaseConfigErrorExit2: a role that may not stream is a
// configuration error: exit 2, and the last line names the fix.
func TestDatabaseConfigErrorExit2(t *testing.T) {
	dsn, db, rulesFile := setupPG(t)
	execSQL(t, db, `CREATE ROLE e2e_norepl LOGIN`)
	t.Cleanup(func() { db.Exec(context.Background(), `DROP ROLE IF EXISTS e2e_norepl`) })
	u := strings.Replace(dsn, "postgres://postgres@", "postgres://e2e_norepl@", 1)
	code, _, stderr := runBinary(t, nil, "run", "--db", u, "--rules", rulesFile, "--listen", "127.0.0.1:0")
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	want := `tagstream: postgres: configuration error: role "e2e_norepl" may not stream changes: ALTER ROLE "e2e_norepl" WITH REPLICATION;`
	if code != 2 || lines[len(lines)-1] != want {
		t.Fatalf("exit %d, stderr:\n%s\nwant last line %q", code, stderr, want)
	}
}
