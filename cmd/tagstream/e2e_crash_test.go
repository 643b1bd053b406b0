package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
)

// resumeAfterCrash writes rows as fast as one connection can, SIGKILLs the
// daemon mid-stream, restarts it while the writes go on and reconnects the
// client with its last id. Continuity is provable (the source resumes at or
// before the client's cursor), so the client must resume — no reset — and
// end up with an invalidation for every committed row.
func resumeAfterCrash(t *testing.T, start func() *daemon, insert func(id int) error) {
	t.Helper()
	d := start()
	c := subscribe(t, d.base, "tags=todo:*", "")
	c.expect(t, `ready {"resumed":false}`)

	var committed atomic.Int64
	stop := make(chan struct{})
	writer := make(chan error, 1)
	go func() {
		for id := 1; ; id++ {
			select {
			case <-stop:
				writer <- nil
				return
			default:
			}
			if err := insert(id); err != nil {
				writer <- err
				return
			}
			committed.Store(int64(id))
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
			<-writer
		}
	}()

	seen := map[int]bool{}
	lastID := ""
	record := func(ev sseEvent) {
		switch ev.Event {
		case "invalidate":
		case "reset":
			t.Fatalf("reset where continuity is provable: %s", ev)
		default:
			return
		}
		lastID = ev.ID
		for _, tag := range strings.Fields(strings.TrimPrefix(render(t, ev), "invalidate ")) {
			n, err := strconv.Atoi(strings.TrimPrefix(tag, "todo:"))
			if err != nil {
				t.Fatalf("unexpected tag %q", tag)
			}
			seen[n] = true
		}
	}
	for len(seen) < 500 {
		record(c.next(t))
	}
	d.kill()
	for ev := range c.events {
		record(ev)
	}
	atKill := committed.Load()

	d = start()
	c = subscribe(t, d.base, "tags=todo:*", lastID)
	for {
		ev := c.next(t)
		if ev.Event == "ready" {
			if ev.Data != `{"resumed":true}` {
				t.Fatalf("reconnect after kill -9 with cursor %s: %s", lastID, ev)
			}
			break
		}
		record(ev)
	}
	for committed.Load() < atKill+500 {
		record(c.next(t))
	}
	close(stop)
	if err := <-writer; err != nil {
		t.Fatal(err)
	}
	n := int(committed.Load())
	for len(seen) < n {
		record(c.next(t))
	}
	for id := 1; id <= n; id++ {
		if !seen[id] {
			t.Fatalf("todo:%d committed but never invalidated", id)
		}
	}
	t.Logf("%d rows committed, %d before the kill; resumed after the restart", n, atKill)
	d.stop(t)
}

// crashQueue lets the test's client fall far behind the unthrottled writer on a
// busy machine without an overflow reset: this test is about crash recovery,
// the slow-client reset has tests of its own.
const crashQueue = "1000000"

func TestResumeAfterCrashUnderLoadPostgres(t *testing.T) {
	dsn, _, rulesFile := setupPG(t)
	w, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close(context.Background()) })
	args := []string{"--db", dsn, "--rules", rulesFile, "--slot", "crash", "--publication", "crash", "--queue-size", crashQueue}
	resumeAfterCrash(t, func() *daemon { return startDaemon(t, args...) }, func(id int) error {
		_, err := w.Exec(context.Background(), `INSERT INTO todos (id, user_id) VALUES ($1, 1)`, id)
		return err
	})
}

func TestResumeAfterCrashUnderLoadMySQL(t *testing.T) {
	dsn, _, rulesFile := setupMariaDB(t)
	w := mysqlConn(t, dsn)
	args := []string{"--db", dsn, "--rules", rulesFile, "--state-dir", t.TempDir(), "--server-id", "4243", "--queue-size", crashQueue}
	resumeAfterCrash(t, func() *daemon { return startDaemon(t, args...) }, func(id int) error {
		_, err := w.Execute(fmt.Sprintf(`INSERT INTO todos (id, user_id) VALUES (%d, 1)`, id))
		return err
	})
}
