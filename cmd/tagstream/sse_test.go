package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tagstream/tagstream/stream/ssereader"
)

// sseEvent is one Server-Sent Event as a browser would parse it.
type sseEvent struct {
	Event, ID, Data string
}

func (e sseEvent) String() string { return fmt.Sprintf("%s id=%s %s", e.Event, e.ID, e.Data) }

// sseClient reads a real /events stream with stream/ssereader, in strict
// mode, and hands out its events in order.
type sseClient struct {
	resp   *http.Response
	events chan sseEvent
	ctx    context.Context // done once close has begun
	cancel context.CancelFunc
	done   chan struct{}

	lastInvalidate uint64 // ids of invalidate events strictly increase
	err            error  // why the stream ended; set before events is closed
}

// subscribe opens GET /events?query with an optional Last-Event-ID header.
func subscribe(t *testing.T, base, query, lastID string) *sseClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/events?"+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("subscribe %s: %v", query, err)
	}
	if resp.StatusCode != http.StatusOK {
		cancel()
		t.Fatalf("subscribe %s: status %s", query, resp.Status)
	}
	// The response headers of Part B, on every subscription the tests open.
	for k, v := range map[string]string{"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"} {
		if got := resp.Header.Get(k); got != v {
			cancel()
			t.Fatalf("subscribe %s: %s %q, want %q", query, k, got, v)
		}
	}
	c := &sseClient{resp: resp, events: make(chan sseEvent, 1024), ctx: ctx, cancel: cancel, done: make(chan struct{})}
	go c.read()
	t.Cleanup(c.close)
	return c
}

// read hands each event of the body to events until the body ends or
// close begins.
func (c *sseClient) read() {
	defer close(c.done)
	defer close(c.events)
	rd := ssereader.NewReader(c.resp.Body)
	rd.Strict = true // the daemon writes only the fields the contract names
	for {
		e, err := rd.Next()
		if err != nil {
			c.err = err // read by next once events is closed
			return
		}
		select {
		case c.events <- sseEvent{Event: e.Event, ID: e.ID, Data: e.Data}:
		case <-c.ctx.Done(): // nobody reads any more: close must not wait on us
			return
		}
	}
}

func (c *sseClient) close() {
	c.cancel()
	c.resp.Body.Close()
	<-c.done
}

// next returns the next event other than ping.
func (c *sseClient) next(t *testing.T) sseEvent {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		ev, ok := c.nextBefore(t, timeout)
		if !ok {
			t.Fatal("no event within 20s")
		}
		if ev.Event != "ping" {
			return ev
		}
	}
}

// nextBefore returns the next event, pings included, unless deadline fires
// first (ok false). Invalidate ids must rise.
func (c *sseClient) nextBefore(t *testing.T, deadline <-chan time.Time) (ev sseEvent, ok bool) {
	t.Helper()
	select {
	case ev, open := <-c.events:
		if !open {
			t.Fatalf("event stream ended: %v", c.err)
		}
		if ev.Event == "invalidate" {
			id, _ := strconv.ParseUint(ev.ID, 10, 64)
			if id <= c.lastInvalidate {
				t.Fatalf("%s: id not above the previous invalidate's %d", ev, c.lastInvalidate)
			}
			c.lastInvalidate = id
		}
		return ev, true
	case <-deadline:
		return sseEvent{}, false
	}
}

// expect asserts the next non-ping events' names and data, in order.
func (c *sseClient) expect(t *testing.T, want ...string) []sseEvent {
	t.Helper()
	var got []sseEvent
	for _, w := range want {
		ev := c.next(t)
		got = append(got, ev)
		if s := render(t, ev); s != w {
			t.Fatalf("event %d: got %q, want %q", len(got), s, w)
		}
	}
	return got
}

// render shows an event for comparison: `invalidate a b` with the tags in
// order (ts checked to be RFC 3339 and dropped), others as `name data`.
func render(t *testing.T, ev sseEvent) string {
	t.Helper()
	if _, err := strconv.ParseUint(ev.ID, 10, 64); err != nil {
		t.Fatalf("%s: id %q is not a position", ev, ev.ID)
	}
	if ev.Event != "invalidate" {
		return ev.Event + " " + ev.Data
	}
	var data struct {
		Tags []string `json:"tags"`
		TS   string   `json:"ts"`
	}
	if err := json.Unmarshal([]byte(ev.Data), &data); err != nil {
		t.Fatalf("%s: %v", ev, err)
	}
	if _, err := time.Parse(time.RFC3339Nano, data.TS); err != nil {
		t.Fatalf("%s: ts: %v", ev, err)
	}
	return "invalidate " + strings.Join(data.Tags, " ")
}

// expectAnyOrder asserts the next len(want) non-ping events in any order:
// after a restart, whether a missed transaction is replayed before `ready`
// or arrives live after it depends on how fast the client reconnected.
func (c *sseClient) expectAnyOrder(t *testing.T, want ...string) {
	t.Helper()
	got := make([]string, len(want))
	for i := range want {
		got[i] = render(t, c.next(t))
	}
	slices.Sort(got)
	want = slices.Sorted(slices.Values(want))
	if !slices.Equal(got, want) {
		t.Fatalf("got %q, want %q in any order", got, want)
	}
}

// TestHeartbeatFlag: --heartbeat sets the ping period (Part B: `ping`, data
// {}, its id the current head); the default, 15 s, would send none here.
func TestHeartbeatFlag(t *testing.T) {
	dsn, _, rulesFile := setupPG(t)
	d := startDaemon(t, "--db", dsn, "--rules", rulesFile, "--slot", "heartbeat", "--publication", "heartbeat", "--heartbeat", "300ms")
	c := subscribe(t, d.base, "tags=todo:*", "")
	ready := c.expect(t, `ready {"resumed":false}`)[0]
	deadline := time.After(3 * time.Second)
	for {
		ev, ok := c.nextBefore(t, deadline)
		if !ok {
			t.Fatal("no ping within 3s with --heartbeat 300ms")
		}
		if ev.Event != "ping" {
			continue
		}
		// The head may have moved on with the source's idle position.
		id, err := strconv.ParseUint(ev.ID, 10, 64)
		head, _ := strconv.ParseUint(ready.ID, 10, 64)
		if ev.Data != "{}" || err != nil || id < head {
			t.Fatalf("ping %+v, want data {} and the head (at least %s)", ev, ready.ID)
		}
		d.stop(t)
		return
	}
}
