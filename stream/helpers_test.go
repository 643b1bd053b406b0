package stream

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/stream/ssereader"
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(clientsEnv); spec != "" {
		runFanoutClients(spec) // BenchmarkFanout's client process
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// ts0 is the commit time used by tests; tsJSON is how it is encoded.
var (
	ts0    = time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)
	tsJSON = "2025-03-01T12:00:00.123456789Z"
)

type bundle struct {
	srv  *httptest.Server
	addr string
}

// setup starts a hub behind a real HTTP server. The hub is closed before the
// server when the test ends.
func setup(t *testing.T, opts Options) (*Hub, *bundle) {
	t.Helper()
	h := NewHub(opts)
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = smallBufListener{srv.Listener}
	srv.Start()
	t.Cleanup(srv.Close)
	t.Cleanup(h.Close)
	return h, &bundle{srv: srv, addr: srv.Listener.Addr().String()}
}

// smallBufListener shrinks the server side's socket send buffer so that a
// client that stops reading blocks the server after a few kilobytes.
type smallBufListener struct{ net.Listener }

func (l smallBufListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(4096)
	}
	return c, err
}

// sseEvent is one parsed event.
type sseEvent struct{ ID, Event, Data string }

func (e sseEvent) String() string { return fmt.Sprintf("%s %s %s", e.ID, e.Event, e.Data) }

// client is a raw SSE client: one TCP connection, an HTTP/1.1 request
// written by hand, the response body read line by line.
type client struct {
	t    *testing.T
	conn net.Conn
	resp *http.Response
	rd   *bufio.Reader
	// events parses rd.
	events *ssereader.Reader
	wait   time.Duration // read deadline: a hung test fails instead of hanging
}

// dial connects with the given query and extra header lines and expects a
// 200 event stream.
func (b *bundle) dial(t *testing.T, query string, header ...string) *client {
	t.Helper()
	c := b.dialRaw(t, query, header...)
	if c.resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /events?%s: status %d", query, c.resp.StatusCode)
	}
	return c
}

// dialFrom connects to the hub from the loopback address ip.
func (b *bundle) dialFrom(t *testing.T, ip string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	conn, err := d.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func (b *bundle) dialRaw(t *testing.T, query string, header ...string) *client {
	t.Helper()
	conn, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(4096)
	}
	t.Cleanup(func() { conn.Close() })
	return newClient(t, conn, query, header...)
}

func newClient(t *testing.T, conn net.Conn, query string, header ...string) *client {
	t.Helper()
	sendRequest(t, conn, query, header...)
	c, err := readAnswer(t, conn)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// sendRequest writes GET /events?query with the headers on conn.
func sendRequest(t *testing.T, conn net.Conn, query string, header ...string) {
	t.Helper()
	req := "GET /events?" + query + " HTTP/1.1\r\nHost: tagstream\r\nAccept: text/event-stream\r\n"
	for _, h := range header {
		req += h + "\r\n"
	}
	if _, err := conn.Write([]byte(req + "\r\n")); err != nil {
		t.Fatal(err)
	}
}

// readAnswer reads the response to a request sent on conn (it may run on
// a goroutine of its own: it does not stop the test).
func readAnswer(t *testing.T, conn net.Conn) (*client, error) {
	c := &client{t: t, conn: conn, wait: 10 * time.Second}
	c.deadline()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return nil, err
	}
	c.resp = resp
	c.rd = bufio.NewReader(resp.Body)
	c.events = ssereader.NewReader(c.rd)
	c.events.Strict = true
	return c, nil
}

// pending is a request answered in the background (one the hub holds).
type pending chan struct {
	c   *client
	err error
}

// sendPending sends a request on conn and reads its answer in the
// background.
func sendPending(t *testing.T, conn net.Conn, query string) pending {
	t.Helper()
	sendRequest(t, conn, query)
	p := make(pending, 1)
	go func() {
		c, err := readAnswer(t, conn)
		p <- struct {
			c   *client
			err error
		}{c, err}
	}()
	return p
}

// answered waits for p's answer.
func (p pending) answered(t *testing.T) *client {
	t.Helper()
	a := <-p // readAnswer's read deadline bounds the wait
	if a.err != nil {
		t.Fatal(a.err)
	}
	return a.c
}

// answeredYet reports whether p has been answered (without waiting).
func (p pending) answeredYet() bool { return len(p) > 0 }

func (c *client) deadline() { _ = c.conn.SetReadDeadline(time.Now().Add(c.wait)) }

// next reads the next event (comment lines are skipped). The hub writes
// only id, event and data, each on one line: any other field fails.
func (c *client) next() sseEvent {
	c.t.Helper()
	c.deadline()
	e, err := c.events.Next()
	if err != nil {
		c.t.Fatalf("reading event: %v (partial %v)", err, sseEvent(e))
	}
	return sseEvent(e)
}

// expect reads len(want) events and compares them exactly.
func (c *client) expect(want ...sseEvent) {
	c.t.Helper()
	for i, w := range want {
		if got := c.next(); got != w {
			c.t.Fatalf("event %d:\n got %v\nwant %v", i, got, w)
		}
	}
}

// eof expects the stream to end.
func (c *client) eof() {
	c.t.Helper()
	c.deadline()
	line, err := c.rd.ReadString('\n')
	if err == nil {
		c.t.Fatalf("want end of stream, got %q", line)
	}
}

func inv(id cdc.Position, tags ...string) sseEvent {
	return sseEvent{ID: fmt.Sprint(id), Event: "invalidate", Data: `{"tags":[` + quoteAll(tags) + `],"ts":"` + tsJSON + `"}`}
}

func quoteAll(tags []string) string {
	q := make([]string, len(tags))
	for i, t := range tags {
		q[i] = `"` + t + `"`
	}
	return strings.Join(q, ",")
}

func ready(id cdc.Position, resumed bool) sseEvent {
	return sseEvent{ID: fmt.Sprint(id), Event: "ready", Data: fmt.Sprintf(`{"resumed":%t}`, resumed)}
}

func reset(id cdc.Position, reason string) sseEvent {
	return sseEvent{ID: fmt.Sprint(id), Event: "reset", Data: `{"reason":"` + reason + `"}`}
}

func ping(id cdc.Position) sseEvent {
	return sseEvent{ID: fmt.Sprint(id), Event: "ping", Data: `{}`}
}

func publish(t *testing.T, h *Hub, pos cdc.Position, tags ...string) {
	t.Helper()
	if err := h.Publish(context.Background(), pos, ts0, tags); err != nil {
		t.Fatal(err)
	}
}

// overflow publishes events for tag (and the others) until a client's
// queue overflows, calling each after every publish; it returns the last
// position published.
func overflow(t *testing.T, h *Hub, each func(cdc.Position), tags ...string) cdc.Position {
	t.Helper()
	var last cdc.Position
	for pos := cdc.Position(1); h.Stats().Overflows == 0; pos++ {
		if pos > 100000 {
			t.Fatal("no overflow after 100000 events")
		}
		publish(t, h, pos, tags...)
		if each != nil {
			each(pos)
		}
		last = pos
	}
	return last
}

// readToReset reads a contiguous run of invalidations of tag from 1 up to
// the overflow's reset (whose id is last, the head when it overflowed) and
// returns the position after the run.
func readToReset(t *testing.T, c *client, tag string, last cdc.Position) cdc.Position {
	t.Helper()
	pos := cdc.Position(1)
	for {
		e := c.next()
		if e.Event == "reset" {
			if e != reset(last, "client too slow: its queue overflowed") {
				t.Fatalf("got %v", e)
			}
			return pos
		}
		if e != inv(pos, tag) {
			t.Fatalf("got %v, want invalidate %d", e, pos)
		}
		pos++
	}
}
