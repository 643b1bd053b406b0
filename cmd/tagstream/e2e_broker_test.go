package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/tagstream/tagstream/internal/launch"
	"github.com/tagstream/tagstream/testcontainers"
)

// cluster is 2 `run --broker` (an active and a standby) and 2 `serve`
// edges on one Postgres and one private redis-server.
type cluster struct {
	t        *testing.T
	rs       *testcontainers.RedisServer
	admin    *redis.Client
	db       *pgx.Conn
	runArgs  []string
	runs     []*daemon
	edges    [2]*daemon
	edgeArgs []string
}

func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := launch.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// logged is a launch condition: the process's log has s.
func logged(s string) func(*daemon) bool {
	return func(d *daemon) bool { return strings.Contains(d.Log().String(), s) }
}

const standbyLine = "standby: another process holds the lease"

func newCluster(t *testing.T) *cluster {
	dsn, db, rulesFile := setupPG(t)
	rs := testcontainers.Redis(t)
	c := &cluster{t: t, rs: rs, db: db, admin: redis.NewClient(&redis.Options{Addr: rs.Addr})}
	t.Cleanup(func() { c.admin.Close() })
	c.runArgs = []string{"--db", dsn, "--rules", rulesFile, "--slot", "broker", "--publication", "broker",
		"--broker", rs.URL(0), "--lease", "2s"}
	c.edgeArgs = []string{"--broker", rs.URL(0)}
	c.runs = append(c.runs, launchDaemon(t, "run", freeAddr(t), (*daemon).ready, c.runArgs...))
	c.startStandby()
	for i := range c.edges {
		c.edges[i] = c.startEdge()
	}
	return c
}

// takeover waits for standby to stream after the active writer was
// killed: within its lease (it expires that long after the last renewal)
// plus a few seconds of slack for a loaded machine and the reader's start.
func takeover(t *testing.T, standby *daemon, lease time.Duration) {
	t.Helper()
	start := time.Now()
	waitFor(t, standby.ready)
	took := time.Since(start)
	t.Logf("the standby streams %s after the kill (--lease %s)", took.Round(time.Millisecond), lease)
	if took > lease+5*time.Second {
		t.Errorf("the standby took over %s after the kill, want within --lease %s (and 5 s of slack)", took, lease)
	}
}

func (c *cluster) startStandby() *daemon {
	d := launchDaemon(c.t, "run", freeAddr(c.t), logged(standbyLine), c.runArgs...)
	c.runs = append(c.runs, d)
	return d
}

func (c *cluster) startEdge() *daemon {
	return launchDaemon(c.t, "serve", freeAddr(c.t), (*daemon).ready, c.edgeArgs...)
}

func (c *cluster) insert(t *testing.T, ids ...int) {
	t.Helper()
	for _, id := range ids {
		if _, err := c.db.Exec(context.Background(), `INSERT INTO todos (id, user_id) VALUES ($1, 1)`, id); err != nil {
			t.Fatal(err)
		}
	}
}

// entries are the stream's entries: id and the fencing number of the
// writer that appended it.
func (c *cluster) entries(t *testing.T) (ids []string, writers []int) {
	t.Helper()
	ms, err := c.admin.XRange(context.Background(), "tagstream", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		w, _ := m.Values["w"].(string)
		n, err := strconv.Atoi(strings.Split(w, ":")[0])
		if err != nil {
			t.Fatalf("entry %s: writer %q", m.ID, w)
		}
		ids = append(ids, m.ID)
		writers = append(writers, n)
	}
	return ids, writers
}

// assertFenced: a writer appended only while it held the lease: the
// fencing numbers along the stream (one history: the counter restarts
// with the broker) never go down.
func (c *cluster) assertFenced(t *testing.T) []int {
	t.Helper()
	ids, writers := c.entries(t)
	for i := 1; i < len(writers); i++ {
		if writers[i] < writers[i-1] {
			t.Fatalf("entry %s appended by writer %d after entry %s by writer %d: a stale writer appended", ids[i], writers[i], ids[i-1], writers[i-1])
		}
	}
	return writers
}

// todoSet collects the todo ids a client was invalidated for.
type todoSet struct {
	seen   map[int]bool
	lastID string
	resets int
}

func (s *todoSet) record(t *testing.T, ev sseEvent) {
	t.Helper()
	switch ev.Event {
	case "reset":
		s.resets++
		s.lastID = ev.ID
	case "invalidate":
		s.lastID = ev.ID
		for _, tag := range strings.Fields(strings.TrimPrefix(render(t, ev), "invalidate ")) {
			n, err := strconv.Atoi(strings.TrimPrefix(tag, "todo:"))
			if err != nil {
				t.Fatalf("unexpected tag %q", tag)
			}
			s.seen[n] = true
		}
	}
}

// until records the client's events until cond holds.
func (s *todoSet) until(t *testing.T, c *sseClient, cond func() bool) {
	t.Helper()
	for !cond() {
		s.record(t, c.next(t))
	}
}

func (s *todoSet) hasAll(from, to int) func() bool {
	return func() bool {
		for id := from; id <= to; id++ {
			if !s.seen[id] {
				return false
			}
		}
		return true
	}
}

// TestBrokerScaleOut runs the scale-out contract through the binaries: a
// client moves from a killed edge to the other with its last id and
// resumes; the active writer is killed under 3,000 writes and the standby
// takes over without a loss; the broker restarts empty and every client
// gets a reset, then streaming goes on; a writer paused past its lease
// cannot append when it wakes up.
func TestBrokerScaleOut(t *testing.T) {
	c := newCluster(t)

	// A client on edge 1; kill -9 edge 1; it resumes on edge 2.
	c1 := subscribe(t, c.edges[0].base, "tags=todo:*", "")
	c1.expect(t, `ready {"resumed":false}`)
	c.insert(t, 1, 2, 3)
	got := c1.expect(t, "invalidate todo:1", "invalidate todo:2", "invalidate todo:3")
	c.edges[0].kill()
	for range c1.events {
	}
	c.insert(t, 4, 5)
	c2 := subscribe(t, c.edges[1].base, "tags=todo:*", got[2].ID)
	s2 := &todoSet{seen: map[int]bool{}}
	for {
		ev := c2.next(t)
		if ev.Event == "ready" {
			if ev.Data != `{"resumed":true}` {
				t.Fatalf("resume on edge 2 with the cursor of edge 1: %s", ev)
			}
			break
		}
		s2.record(t, ev)
	}
	s2.until(t, c2, s2.hasAll(4, 5))
	if len(s2.seen) != 2 || s2.resets != 0 {
		t.Fatalf("edge 2 after the move: %v, %d resets; want todo:4 and todo:5 only", s2.seen, s2.resets)
	}

	// kill -9 the active writer under 3,000 writes: the standby takes over.
	c.edges[0] = c.startEdge()
	c3 := subscribe(t, c.edges[0].base, "tags=todo:*", "")
	c3.expect(t, `ready {"resumed":false}`)
	s3 := &todoSet{seen: map[int]bool{}}
	const first, last = 6, 3005
	var committed atomic.Int64
	writer := make(chan error, 1)
	go func() {
		for id := first; id <= last; id++ {
			if _, err := c.db.Exec(context.Background(), `INSERT INTO todos (id, user_id) VALUES ($1, 1)`, id); err != nil {
				writer <- err
				return
			}
			committed.Store(int64(id))
		}
		writer <- nil
	}()
	s2.until(t, c2, func() bool { return len(s2.seen) >= 500 })
	active, standby := c.runs[0], c.runs[1]
	active.kill()
	atKill := committed.Load()
	takeover(t, standby, 2*time.Second)
	if err := <-writer; err != nil {
		t.Fatal(err)
	}
	s2.until(t, c2, s2.hasAll(first, last))
	s3.until(t, c3, s3.hasAll(first, last))
	if s2.resets != 0 || s3.resets != 0 {
		t.Fatalf("resets on a takeover whose continuity is provable: edge 2 %d, edge 1 %d", s2.resets, s3.resets)
	}
	writers := c.assertFenced(t)
	if writers[0] != 1 || writers[len(writers)-1] != 2 {
		t.Fatalf("writers along the stream %d…%d, want 1…2", writers[0], writers[len(writers)-1])
	}
	t.Logf("takeover: %d rows committed, %d of them before the kill", committed.Load()-first+1, atKill-first+1)
	// A supervisor restarts the killed writer: it is a standby now.
	c.startStandby()

	// The broker restarts without persistence: every client gets a reset,
	// then streaming goes on.
	if err := c.rs.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, cl := range []*sseClient{c2, c3} {
		for ev := cl.next(t); ev.Event != "reset"; ev = cl.next(t) {
			if ev.Event != "invalidate" {
				t.Fatalf("before the reset: %s", ev)
			}
		}
	}
	c.insert(t, 4000)
	c2.expect(t, "invalidate todo:4000")
	c3.expect(t, "invalidate todo:4000")
	for _, e := range c.edges {
		if got := metricLine(t, e.base, "tagstream_broker_history_lost_total"); got != "tagstream_broker_history_lost_total 1" {
			t.Errorf("edge %s: %q, want one lost history", e.base, got)
		}
	}

	// The standby may have taken the lease in the restart: the writer that
	// lost it stopped; its supervisor makes it a standby again.
	var paused, other *daemon
	for _, d := range c.runs[1:] {
		select {
		case <-d.Done():
			if !strings.Contains(d.Log().String(), "broker: lease lost: another process holds it now") {
				t.Fatalf("a writer stopped for another reason: %v", d.Err())
			}
			continue
		default:
		}
		if d.ready() {
			paused = d
		} else {
			other = d
		}
	}
	if other == nil {
		other = c.startStandby()
	}
	if paused == nil {
		t.Fatal("no active writer after the broker restarted")
	}
	if got := metricLine(t, paused.base, "tagstream_broker_lease_held"); got != "tagstream_broker_lease_held 1" {
		t.Errorf("active writer: %q", got)
	}
	if got := metricLine(t, other.base, "tagstream_broker_lease_held"); got != "tagstream_broker_lease_held 0" {
		t.Errorf("standby: %q", got)
	}
	if err := paused.Cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return logged("lease acquired")(other) })
	c.insert(t, 4001, 4002)
	if err := paused.Cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	<-paused.Done()
	if paused.Err() == nil || !strings.Contains(paused.Log().String(), "broker: lease lost") {
		t.Fatalf("the paused writer woke up: exit %v, want an error saying the lease was lost\n%s", paused.Err(), paused.Log())
	}
	// The other one now gets the slot and streams what was written while
	// the old writer was paused.
	c2.expect(t, "invalidate todo:4001", "invalidate todo:4002")
	c3.expect(t, "invalidate todo:4001", "invalidate todo:4002")
	writers = c.assertFenced(t)
	t.Logf("writers along the stream after the pause: %v", compact(writers))
	for _, e := range c.edges {
		e.stop(t)
	}
	other.stop(t)
}

// compact shows runs of equal numbers once.
func compact(ns []int) string {
	var b strings.Builder
	for i, n := range ns {
		if i == 0 || n != ns[i-1] {
			fmt.Fprintf(&b, "%d ", n)
		}
	}
	return strings.TrimSpace(b.String())
}

// readmeScaleOut returns the command lines of README.md's scale-out.sh:
// the exported variables and the tagstream commands' arguments.
func readmeScaleOut(t *testing.T) (env map[string]string, cmds [][]string) {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const start = "```sh\n# scale-out.sh"
	i := strings.Index(string(readme), start)
	if i < 0 {
		t.Fatal("README.md has no scale-out.sh example")
	}
	block := string(readme[i+len("```sh\n"):])
	block = block[:strings.Index(block, "```")]
	env = map[string]string{}
	for line := range strings.SplitSeq(block, "\n") {
		line, _, _ = strings.Cut(line, "#")
		line = strings.TrimSuffix(strings.TrimSpace(line), "&")
		switch fields := strings.Fields(line); {
		case len(fields) == 0:
		case fields[0] == "export":
			k, v, _ := strings.Cut(fields[1], "=")
			env[k] = v
		case fields[0] == "tagstream":
			cmds = append(cmds, fields[1:])
		default:
			t.Fatalf("scale-out.sh: unexpected line %q", line)
		}
	}
	return env, cmds
}

// TestReadmeScaleOut runs README.md's scale-out.sh (its database, rules
// file, broker and addresses replaced by this test's): both edges' clients
// get an invalidation; the writer stops cleanly and the standby takes over
// at once, without a reset.
func TestReadmeScaleOut(t *testing.T) {
	dsn, db, rulesFile := setupPG(t)
	rs := testcontainers.Redis(t)
	env, cmds := readmeScaleOut(t)
	if len(env) != 1 || env["TAGSTREAM_BROKER"] == "" || len(cmds) != 4 {
		t.Fatalf("scale-out.sh: env %v, %d commands; want TAGSTREAM_BROKER and 4 commands", env, len(cmds))
	}
	t.Setenv("TAGSTREAM_BROKER", rs.URL(0))
	var runs, edges []*daemon
	for _, args := range cmds {
		var rest []string
		for i := 1; i < len(args); i++ {
			switch args[i] {
			case "--listen":
				i++ // a free address instead
			case `"$DB"`:
				rest = append(rest, dsn)
			case "rules.yaml":
				rest = append(rest, rulesFile)
			default:
				rest = append(rest, args[i])
			}
		}
		switch {
		case args[0] == "run" && len(runs) == 0:
			runs = append(runs, launchDaemon(t, "run", freeAddr(t), (*daemon).ready, rest...))
		case args[0] == "run":
			runs = append(runs, launchDaemon(t, "run", freeAddr(t), logged(standbyLine), rest...))
		case args[0] == "serve":
			edges = append(edges, launchDaemon(t, "serve", freeAddr(t), (*daemon).ready, rest...))
		default:
			t.Fatalf("scale-out.sh: tagstream %s", args[0])
		}
	}
	var clients []*sseClient
	for _, e := range edges {
		c := subscribe(t, e.base, "tags=todo:*", "")
		c.expect(t, `ready {"resumed":false}`)
		clients = append(clients, c)
	}
	// Part B: run --broker still serves /events itself, with the same ids.
	writer := subscribe(t, runs[0].base, "tags=todo:*", "")
	writer.expect(t, `ready {"resumed":false}`)
	execSQL(t, db, `INSERT INTO todos (id, user_id) VALUES (1, 1)`)
	id := writer.expect(t, "invalidate todo:1")[0].ID
	for _, c := range clients {
		if got := c.expect(t, "invalidate todo:1")[0].ID; got != id {
			t.Fatalf("edge id %s, writer id %s", got, id)
		}
	}
	writer.close()
	runs[0].stop(t)
	waitFor(t, runs[1].ready)
	execSQL(t, db, `INSERT INTO todos (id, user_id) VALUES (2, 1)`)
	for _, c := range clients {
		c.expect(t, "invalidate todo:2")
	}
	for _, d := range append(edges, runs[1]) {
		d.stop(t)
	}
}

// TestEdgeWithoutWriterIsAliveNotReady: /healthz says the process is alive
// (200) while /readyz says it cannot serve yet (503): an edge whose broker
// has never had a writer. Its /events refuses a request without a token.
func TestEdgeWithoutWriterIsAliveNotReady(t *testing.T) {
	rs := testcontainers.Redis(t)
	alive := func(d *daemon) bool { return launch.HTTPStatus200(d.base + "/healthz")(context.Background()) }
	// serve takes run's authorization flags (Part B), and a request without
	// a token is refused at once, not held until the edge is ready.
	d := launchDaemon(t, "serve", freeAddr(t), alive, "--broker", rs.URL(0), "--jwt-secret", "edge-secret")
	for _, c := range []struct {
		path string
		want int
	}{{"/healthz", http.StatusOK}, {"/readyz", http.StatusServiceUnavailable}, {"/events?tags=a", http.StatusUnauthorized}} {
		resp, err := http.Get(d.base + c.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("GET %s: %d, want %d", c.path, resp.StatusCode, c.want)
		}
	}
	d.stop(t)
}

// TestBrokerStandbyMariaDB: the standby contract on the binlog reader —
// two `run --broker` with the same --db, --state-dir and broker: kill -9
// of the active one under 1,000 writes, and the standby takes over from
// the shared checkpoint file without a loss and without a reset.
func TestBrokerStandbyMariaDB(t *testing.T) {
	dsn, db, rulesFile := setupMariaDB(t)
	rs := testcontainers.Redis(t)
	args := []string{"--db", dsn, "--rules", rulesFile, "--state-dir", t.TempDir(), "--broker", rs.URL(0), "--lease", "2s"}
	active := launchDaemon(t, "run", freeAddr(t), (*daemon).ready, args...)
	standby := launchDaemon(t, "run", freeAddr(t), logged(standbyLine), args...)
	edge := launchDaemon(t, "serve", freeAddr(t), (*daemon).ready, "--broker", rs.URL(0))
	c := subscribe(t, edge.base, "tags=todo:*", "")
	c.expect(t, `ready {"resumed":false}`)

	const last = 1000
	var committed atomic.Int64
	writer := make(chan error, 1)
	go func() {
		for id := 1; id <= last; id++ {
			if _, err := db.Execute(fmt.Sprintf(`INSERT INTO todos (id, user_id) VALUES (%d, 1)`, id)); err != nil {
				writer <- err
				return
			}
			committed.Store(int64(id))
		}
		writer <- nil
	}()
	s := &todoSet{seen: map[int]bool{}}
	s.until(t, c, func() bool { return len(s.seen) >= 200 })
	active.kill()
	atKill := committed.Load()
	if atKill >= last {
		t.Fatalf("all %d rows were committed before the kill: no takeover under writes", last)
	}
	takeover(t, standby, 2*time.Second)
	if err := <-writer; err != nil {
		t.Fatal(err)
	}
	s.until(t, c, s.hasAll(1, last))
	if s.resets != 0 {
		t.Fatalf("%d resets on a takeover whose continuity is provable", s.resets)
	}
	t.Logf("takeover: %d of %d rows committed before the kill", atKill, last)
	if !logged("lease acquired")(standby) {
		t.Errorf("the standby streams without saying it took the lease:\n%s", standby.Log())
	}
	edge.stop(t)
	standby.stop(t)
}

// TestBrokerHoldsTheAcknowledgement: with --broker, a transaction is
// acknowledged to the database only once the broker has accepted it: while
// Redis holds writes back (CLIENT PAUSE … WRITE),
// tagstream_acknowledged_position stays before the transaction read, and
// an edge's client gets nothing; once Redis takes writes again, both move
// on. (The slot is checked after the stop: the reader confirms to the
// server only every few seconds.)
func TestBrokerHoldsTheAcknowledgement(t *testing.T) {
	ctx := context.Background()
	dsn, db, rulesFile := setupPG(t)
	rs := testcontainers.Redis(t)
	admin := redis.NewClient(&redis.Options{Addr: rs.Addr})
	t.Cleanup(func() { admin.Close() })
	// A lease longer than the pause: the writer keeps it throughout.
	d := startDaemon(t, "--db", dsn, "--rules", rulesFile, "--slot", "brokerack", "--publication", "brokerack",
		"--broker", rs.URL(0), "--lease", "60s")
	// A client of an edge: it sees what the broker accepted (run's own
	// hub is a sink of its own).
	edge := launchDaemon(t, "serve", freeAddr(t), (*daemon).ready, "--broker", rs.URL(0))
	c := subscribe(t, edge.base, "tags=todo:*", "")
	c.expect(t, `ready {"resumed":false}`)
	execSQL(t, db, `INSERT INTO todos (id, user_id) VALUES (1, 1)`)
	c.expect(t, "invalidate todo:1")
	first := d.metric(t, "tagstream_position")
	d.waitMetric(t, "tagstream_acknowledged_position", func(v float64) bool { return v >= first })

	if err := admin.Do(ctx, "CLIENT", "PAUSE", "30000", "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Do(ctx, "CLIENT", "UNPAUSE") })
	execSQL(t, db, `INSERT INTO todos (id, user_id) VALUES (2, 1)`)
	d.waitMetric(t, "tagstream_position", func(v float64) bool { return v > first })
	second := d.metric(t, "tagstream_position")
	// For 500 ms (time to acknowledge and deliver, were it not held) the
	// edge's client gets no invalidation (a ping may come).
	for held := time.After(500 * time.Millisecond); ; {
		ev, ok := c.nextBefore(t, held)
		if !ok {
			break
		}
		if ev.Event != "ping" {
			t.Fatalf("the edge's client got %s while the broker held the append back", ev)
		}
	}
	if v := d.metric(t, "tagstream_acknowledged_position"); v >= second {
		t.Fatalf("acknowledged %v while the broker holds back the append of %v", v, second)
	}
	if err := admin.Do(ctx, "CLIENT", "UNPAUSE").Err(); err != nil {
		t.Fatal(err)
	}
	c.expect(t, "invalidate todo:2")
	d.waitMetric(t, "tagstream_acknowledged_position", func(v float64) bool { return v >= second })
	edge.stop(t)
	d.stop(t)
	if got := slotLSN(t, db, "brokerack"); float64(got) < second {
		t.Fatalf("slot confirmed %s after a clean stop, want at least %v", pglogrepl.LSN(got), second)
	}
}
