package main

// End-to-end tests of the sinks through the binary: a signed webhook and
// Redis PUBLISH, and the rule that the database is acknowledged only once
// every sink has the transaction.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/tagstream/tagstream/sink/webhook"
	"github.com/tagstream/tagstream/testcontainers"
)

const hookSecret = "e2e-secret"

// hookBody is what a webhook request carries.
type hookBody struct {
	Tags     []string `json:"tags"`
	Position string   `json:"position"`
	TS       string   `json:"ts"`
	Reset    bool     `json:"reset"`
	Reason   string   `json:"reason"`
}

// receiver is a webhook endpoint that verifies every request's signature,
// answers with the current status, and hands the accepted bodies out in
// order.
type receiver struct {
	t      *testing.T
	srv    *httptest.Server
	mu     sync.Mutex
	status int
	delay  time.Duration // while set, a request is held this long, then answered 200 unrecorded (a target too slow)
	failed int           // requests answered with a non-2xx status
	bodies chan hookBody
}

func newReceiver(t *testing.T, status int) *receiver {
	r := &receiver{t: t, status: status, bodies: make(chan hookBody, 1000)}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	raw, _ := io.ReadAll(req.Body)
	if err := webhook.Verify(hookSecret, req.Header.Get(webhook.SignatureHeader), raw, time.Now(), time.Minute); err != nil {
		r.t.Errorf("webhook request %s: %v", raw, err)
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	r.mu.Lock()
	status, delay := r.status, r.delay
	if status/100 != 2 && delay == 0 {
		r.failed++
	}
	r.mu.Unlock()
	if delay > 0 {
		time.Sleep(delay)
		return
	}
	if status/100 != 2 {
		http.Error(w, "down for maintenance", status)
		return
	}
	var b hookBody
	if err := json.Unmarshal(raw, &b); err != nil {
		r.t.Errorf("webhook body %s: %v", raw, err)
	}
	r.bodies <- b
	w.WriteHeader(http.StatusNoContent)
}

func (r *receiver) setStatus(code int) {
	r.mu.Lock()
	r.status = code
	r.mu.Unlock()
}

func (r *receiver) setDelay(d time.Duration) {
	r.mu.Lock()
	r.delay = d
	r.mu.Unlock()
}

func (r *receiver) failures() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

func (r *receiver) next(t *testing.T) hookBody {
	t.Helper()
	select {
	case b := <-r.bodies:
		return b
	case <-time.After(20 * time.Second):
		t.Fatal("no webhook request within 20s")
		return hookBody{}
	}
}

// tagsUntil collects the tags of accepted bodies until want are all seen.
func (r *receiver) tagsUntil(t *testing.T, want ...string) {
	t.Helper()
	missing := map[string]bool{}
	for _, w := range want {
		missing[w] = true
	}
	for len(missing) > 0 {
		b := r.next(t)
		if b.Reset {
			t.Fatalf("reset %+v while waiting for %v", b, want)
		}
		for _, tag := range b.Tags {
			delete(missing, tag)
		}
	}
}

// slotLSN returns the slot's confirmed flush position as a position.
func slotLSN(t *testing.T, db *pgx.Conn, slot string) uint64 {
	t.Helper()
	var s string
	if err := db.QueryRow(context.Background(), `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&s); err != nil {
		t.Fatal(err)
	}
	lsn, err := pglogrepl.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return uint64(lsn)
}

// metric returns the value of one sample of the daemon's /metrics.
func (d *daemon) metric(t *testing.T, sample string) float64 {
	t.Helper()
	resp, err := http.Get(d.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("/metrics has no sample %s", sample)
	return 0
}

// waitMetric waits until cond holds for the sample's value.
func (d *daemon) waitMetric(t *testing.T, sample string, cond func(float64) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond(d.metric(t, sample)) {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v: condition not met within 30s", sample, d.metric(t, sample))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func position(t *testing.T, b hookBody) uint64 {
	t.Helper()
	p, err := strconv.ParseUint(b.Position, 10, 64)
	if err != nil {
		t.Fatalf("position %q: %v", b.Position, err)
	}
	return p
}

// TestWebhookRetriedInOrderThenAcknowledged: a target that answers 503
// three times gets every transaction in order afterwards, and the slot
// confirms the last position only once it has.
func TestWebhookRetriedInOrderThenAcknowledged(t *testing.T) {
	dsn, db, rulesFile := setupPG(t)
	rcv := newReceiver(t, http.StatusServiceUnavailable)
	d := startDaemon(t, "--db", dsn, "--rules", rulesFile, "--slot", "hook", "--publication", "hook",
		"--webhook", rcv.srv.URL, "--webhook-secret", hookSecret)
	// The SSE client learns the first transaction's position.
	c := subscribe(t, d.base, "tags=todo:1", "")
	c.expect(t, `ready {"resumed":false}`)
	execSQL(t, db, `INSERT INTO todos (id, user_id) VALUES (1, 7)`)
	first, _ := strconv.ParseUint(c.expect(t, "invalidate todo:1")[0].ID, 10, 64)
	execSQL(t, db, `INSERT INTO todos (id, user_id) VALUES (2, 9)`)
	execSQL(t, db, `UPDATE todos SET user_id = 9 WHERE id = 1`)
	for rcv.failures() < 3 {
		time.Sleep(10 * time.Millisecond)
	}
	// Still failing: no transaction acknowledged (a quiet source's idle
	// position before the first one may be).
	sink := `{sink="webhook ` + rcv.srv.URL + `"}`
	if v := d.metric(t, "tagstream_sink_delivered_total"+sink); v != 0 {
		t.Fatalf("delivered %v while the target fails", v)
	}
	if v := d.metric(t, "tagstream_acknowledged_position"); v >= float64(first) {
		t.Fatalf("acknowledged position %v (first transaction %d) while the webhook has accepted nothing", v, first)
	}
	// Every commit is before this moment; the deliveries are after it.
	okAt := time.Now()
	rcv.setStatus(http.StatusOK)
	var tags []string
	var last hookBody
	for len(tags) < 5 {
		last = rcv.next(t)
		if last.Reset {
			t.Fatalf("unexpected reset %+v", last)
		}
		tags = append(tags, last.Tags...)
	}
	slices.Sort(tags)
	tags = slices.Compact(tags)
	if want := []string{"todo:1", "todo:2", "todos", "user:7:todos", "user:9:todos"}; !slices.Equal(tags, want) {
		t.Fatalf("webhook tags %q, want %q", tags, want)
	}
	// ts is the commit time, not the delivery's.
	if ts, err := time.Parse(time.RFC3339Nano, last.TS); err != nil || !ts.Before(okAt) || ts.Before(okAt.Add(-time.Minute)) {
		t.Fatalf("ts %q (%v): want the commit time, before %s", last.TS, err, okAt.Format(time.RFC3339Nano))
	}
	d.waitMetric(t, "tagstream_sink_delivered_total"+sink, func(v float64) bool { return v == 3 })
	if v := d.metric(t, "tagstream_sink_failures_total"+sink); v < 3 {
		t.Fatalf("failures %v, want at least 3", v)
	}
	d.stop(t)
	// At least the last delivered commit; beyond it only when the server's
	// keepalive reported WAL past it with nothing left to deliver (the
	// reader confirms such an end when nothing is pending).
	if got, want := slotLSN(t, db, "hook"), position(t, last); got < want {
		t.Fatalf("slot confirmed %s after a clean stop, want at least the last delivered %s", pglogrepl.LSN(got), pglogrepl.LSN(want))
	}
}

// TestWebhookGivenUpIsResetWhenBack: a target down longer than
// --webhook-give-up stops holding the slot back, and the first request it
// answers is a reset covering what it missed.
func TestWebhookGivenUpIsResetWhenBack(t *testing.T) {
	dsn, db, rulesFile := setupPG(t)
	rcv := newReceiver(t, http.StatusBadGateway)
	d := startDaemon(t, "--db", dsn, "--rules", rulesFile, "--slot", "giveup", "--publication", "giveup",
		"--webhook", rcv.srv.URL, "--webhook-secret", hookSecret, "--webhook-give-up", "1s")
	sink := `{sink="webhook ` + rcv.srv.URL + `"}`
	execSQL(t, db, `INSERT INTO todos (id, user_id) VALUES (1, 7)`)
	d.waitMetric(t, "tagstream_sink_given_up"+sink, func(v float64) bool { return v == 1 })
	// Part B "Metrics": the per-sink state is gauges, the events counters.
	body := metricsBody(t, d)
	checkMetricTypes(t, body)
	for _, want := range []string{
		"# TYPE tagstream_sink_given_up gauge", "# TYPE tagstream_sink_queued gauge",
		"# TYPE tagstream_sink_lag_positions gauge", "# TYPE tagstream_sink_lag_seconds gauge",
		"# TYPE tagstream_sink_failures_total counter", "# TYPE tagstream_sink_give_ups_total counter",
	} {
		if !strings.Contains(body, "\n"+want+"\n") {
			t.Errorf("/metrics lacks the line %q", want)
		}
	}
	first := d.metric(t, "tagstream_position")
	execSQL(t, db, `INSERT INTO todos (id, user_id) VALUES (2, 7)`)
	// Given up: the position advances without the webhook.
	d.waitMetric(t, "tagstream_position", func(v float64) bool { return v > first })
	missed := uint64(d.metric(t, "tagstream_position"))
	// (Beyond it only by a quiet source's idle position.)
	d.waitMetric(t, "tagstream_acknowledged_position", func(v float64) bool { return uint64(v) >= missed })
	rcv.setStatus(http.StatusOK)
	b := rcv.next(t)
	if !b.Reset || position(t, b) != missed || !strings.Contains(b.Reason, "failed for longer than 1s and was given up on") {
		t.Fatalf("first request after the outage: %+v, want a reset at %d", b, missed)
	}
	d.waitMetric(t, "tagstream_sink_given_up"+sink, func(v float64) bool { return v == 0 })
	execSQL(t, db, `INSERT INTO todos (id, user_id) VALUES (3, 7)`)
	b = rcv.next(t)
	if want := []string{"todo:3", "todos", "user:7:todos"}; b.Reset || !slices.Equal(b.Tags, want) {
		t.Fatalf("request after the reset: %+v, want tags %q", b, want)
	}
	d.stop(t)
	if got := slotLSN(t, db, "giveup"); got < position(t, b) {
		t.Fatalf("slot confirmed %s, want %s", pglogrepl.LSN(got), pglogrepl.LSN(position(t, b)))
	}
}

// TestKill9WhileWebhookDown: transactions the webhook never accepted are
// read again after a crash: nothing is lost.
func TestKill9WhileWebhookDown(t *testing.T) {
	dsn, db, rulesFile := setupPG(t)
	rcv := newReceiver(t, http.StatusInternalServerError)
	args := []string{"--db", dsn, "--rules", rulesFile, "--slot", "hookkill", "--publication", "hookkill",
		"--webhook", rcv.srv.URL, "--webhook-secret", hookSecret}
	d := startDaemon(t, args...)
	var want []string
	for i := 1; i <= 20; i++ {
		execSQL(t, db, fmt.Sprintf(`INSERT INTO todos (id, user_id) VALUES (%d, %d)`, i, 100+i))
		want = append(want, fmt.Sprintf("todo:%d", i), fmt.Sprintf("user:%d:todos", 100+i))
	}
	d.waitMetric(t, "tagstream_position", func(v float64) bool { return v > 0 && rcv.failures() > 0 })
	d.kill()
	rcv.setStatus(http.StatusOK)
	d = startDaemon(t, args...)
	rcv.tagsUntil(t, want...)
	d.stop(t)
}

var auctionRules = `rules:
  - name: auction
    table: auctions
    tags: ["Auction:{id}", "Query.auctions"]
`

// TestRedisPublishAndRestart: an insert is PUBLISHed as Redwood expects;
// with Redis restarted mid-stream the acknowledgement is held and nothing
// is lost.
func TestRedisPublishAndRestart(t *testing.T) {
	ctx := context.Background()
	dsn, db := testcontainers.PostgresDB(t, `CREATE TABLE auctions (id int PRIMARY KEY, title text)`)
	rulesFile := writeFile(t, "rules.yaml", auctionRules)
	rs := testcontainers.Redis(t)
	msgs := redisSubscribe(t, rs.URL(0), "", redispubChannel)

	d := startDaemon(t, "--db", dsn, "--rules", rulesFile, "--slot", "redis", "--publication", "redis",
		"--redis-publish", rs.URL(0), "--redis-reset-keys", "Query.auctions")
	execSQL(t, db, `INSERT INTO auctions VALUES (42, 'a')`)
	if got := msgs.next(t, 2); !slices.Equal(got, []string{"Auction:42", "Query.auctions"}) {
		t.Fatalf("published %q", got)
	}
	d.waitMetric(t, "tagstream_acknowledged_position", func(v float64) bool { return v > 0 })
	acked := d.metric(t, "tagstream_acknowledged_position")

	// Redis restarts empty and keeps tagstream out until this test has
	// subscribed again.
	if err := rs.Restart(ctx, "--requirepass", "pw"); err != nil {
		t.Fatal(err)
	}
	execSQL(t, db, `INSERT INTO auctions VALUES (43, 'b')`)
	sink := `{sink="redis ` + rs.Addr + `"}`
	d.waitMetric(t, "tagstream_sink_failures_total"+sink, func(v float64) bool { return v >= 2 })
	// Auction 43 is not acknowledged (a quiet source's idle position
	// before it may be).
	pos43 := d.metric(t, "tagstream_position")
	if v := d.metric(t, "tagstream_acknowledged_position"); v < acked || v >= pos43 {
		t.Fatalf("acknowledged %v while Redis refuses the publish of %v, want from %v and below it", v, pos43, acked)
	}
	msgs = redisSubscribe(t, rs.URL(0), "pw", redispubChannel)
	admin := redis.NewClient(&redis.Options{Addr: rs.Addr, Password: "pw"})
	defer admin.Close()
	if err := admin.ConfigSet(ctx, "requirepass", "").Err(); err != nil {
		t.Fatal(err)
	}
	if got := msgs.next(t, 2); !slices.Equal(got, []string{"Auction:43", "Query.auctions"}) {
		t.Fatalf("published after the restart %q", got)
	}
	d.waitMetric(t, "tagstream_acknowledged_position", func(v float64) bool { return v > acked })
	d.stop(t)
}

// redispubChannel is --redis-channel's default.
const redispubChannel = "live-query-invalidations"

type redisMessages struct{ ch <-chan *redis.Message }

func redisSubscribe(t *testing.T, url, password, channel string) redisMessages {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	opts.Password = password
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	ps := c.Subscribe(context.Background(), channel)
	t.Cleanup(func() { ps.Close() })
	if _, err := ps.Receive(context.Background()); err != nil {
		t.Fatal(err)
	}
	return redisMessages{ps.Channel()}
}

func (m redisMessages) next(t *testing.T, n int) []string {
	t.Helper()
	var got []string
	for len(got) < n {
		select {
		case msg := <-m.ch:
			got = append(got, msg.Payload)
		case <-time.After(20 * time.Second):
			t.Fatalf("got %q, waiting for %d messages", got, n)
		}
	}
	slices.Sort(got)
	return got
}

// TestSinkFlagsThroughTheDaemon: --webhook repeated delivers to each
// target; --webhook-timeout cuts a request to a target too slow (a
// failure, retried until it answers in time); --redis-channel names the
// channel published to, and nothing goes to the default one.
func TestSinkFlagsThroughTheDaemon(t *testing.T) {
	dsn, db, rulesFile := setupPG(t)
	fast, slow := newReceiver(t, http.StatusNoContent), newReceiver(t, http.StatusNoContent)
	slow.setDelay(2 * time.Second)
	rs := testcontainers.Redis(t)
	custom := redisSubscribe(t, rs.URL(0), "", "app-invalidations")
	dflt := redisSubscribe(t, rs.URL(0), "", redispubChannel)
	d := startDaemon(t, "--db", dsn, "--rules", rulesFile, "--slot", "sinkflags", "--publication", "sinkflags",
		"--webhook", fast.srv.URL, "--webhook", slow.srv.URL, "--webhook-secret", hookSecret, "--webhook-timeout", "300ms",
		"--redis-publish", rs.URL(0), "--redis-channel", "app-invalidations")
	execSQL(t, db, `INSERT INTO todos (id, user_id) VALUES (1, 7)`)
	want := []string{"todo:1", "todos", "user:7:todos"}
	if got := custom.next(t, 3); !slices.Equal(got, want) {
		t.Fatalf("published on app-invalidations %q, want %q", got, want)
	}
	fast.tagsUntil(t, want...)
	slowSink := `{sink="webhook ` + slow.srv.URL + `"}`
	d.waitMetric(t, "tagstream_sink_failures_total"+slowSink, func(v float64) bool { return v >= 2 })
	if v := d.metric(t, "tagstream_sink_delivered_total"+slowSink); v != 0 {
		t.Fatalf("delivered %v to a target slower than --webhook-timeout", v)
	}
	slow.setDelay(0)
	slow.tagsUntil(t, want...)
	d.waitMetric(t, "tagstream_sink_delivered_total"+slowSink, func(v float64) bool { return v == 1 })
	if v := d.metric(t, `tagstream_sink_delivered_total{sink="webhook `+fast.srv.URL+`"}`); v != 1 {
		t.Fatalf("delivered %v to the fast target, want 1", v)
	}
	select {
	case m := <-dflt.ch:
		t.Fatalf("published %q on the default channel with --redis-channel set", m.Payload)
	case <-time.After(100 * time.Millisecond):
	}
	d.stop(t)
}

// writeFile writes content to name in a temp dir of t and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestWebhookHoldsTheMySQLCheckpoint: on MariaDB the checkpoint file is the
// acknowledgement: it does not pass a transaction the webhook has not
// accepted, and reaches it once it has.
func TestWebhookHoldsTheMySQLCheckpoint(t *testing.T) {
	dsn, db, rulesFile := setupMariaDB(t)
	state := t.TempDir()
	rcv := newReceiver(t, http.StatusServiceUnavailable)
	d := startDaemon(t, "--db", dsn, "--rules", rulesFile, "--state-dir", state, "--server-id", "4243",
		"--webhook", rcv.srv.URL, "--webhook-secret", hookSecret)
	checkpoint := func() uint64 {
		files, _ := filepath.Glob(filepath.Join(state, "*.json"))
		if len(files) != 1 {
			return 0
		}
		b, err := os.ReadFile(files[0])
		if err != nil {
			return 0
		}
		var cp struct{ Position uint64 }
		if err := json.Unmarshal(b, &cp); err != nil {
			t.Fatalf("checkpoint %s: %v", b, err)
		}
		return cp.Position
	}
	execMySQL(t, db, `INSERT INTO todos (id, user_id) VALUES (1, 7)`)
	d.waitMetric(t, "tagstream_position", func(v float64) bool { return v > 0 && rcv.failures() >= 2 })
	pos := uint64(d.metric(t, "tagstream_position"))
	if cp := checkpoint(); cp >= pos {
		t.Fatalf("checkpoint %d reached %d while the webhook refuses it", cp, pos)
	}
	rcv.setStatus(http.StatusOK)
	b := rcv.next(t)
	if want := []string{"todo:1", "todos", "user:7:todos"}; b.Reset || !slices.Equal(b.Tags, want) || position(t, b) != pos {
		t.Fatalf("webhook got %+v, want tags %q at %d", b, want, pos)
	}
	d.stop(t)
	if cp := checkpoint(); cp != pos {
		t.Fatalf("checkpoint %d after a clean stop, want %d", cp, pos)
	}
}
