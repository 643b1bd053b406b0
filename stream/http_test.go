package stream

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tagstream/tagstream/cdc"
)

func TestBadRequests(t *testing.T) {
	_, b := setup(t, Options{})
	many := strings.Repeat("t,", 256) + "t"
	long := strings.Repeat("x", 257)
	for _, tc := range []struct {
		name, query, header, reason string
	}{
		{"missing", "", "", "missing tags parameter: subscribe with ?tags=a,b"},
		{"empty", "tags=", "", "invalid tag 1: empty entry"},
		{"empty entry", "tags=a,,b", "", "invalid tag 2: empty entry"},
		{"trailing comma", "tags=a,", "", "invalid tag 2: empty entry"},
		{"empty repeat", "tags=a&tags=", "", "invalid tag 2: empty entry"},
		{"too many", "tags=" + many, "", "too many tags: at most 256 entries"},
		{"too many repeated", "tags=" + strings.Repeat("t,", 200) + "t&tags=" + strings.Repeat("u,", 55) + "u", "", "too many tags: at most 256 entries"},
		{"too long", "tags=a," + long, "", "invalid tag 2: longer than 256 bytes"},
		{"space", "tags=a%20b", "", `invalid tag 1: contains the character ' ' (percent-encode it)`},
		{"control", "tags=a%0Ab", "", `invalid tag 1: contains the character '\n' (percent-encode it)`},
		{"bad utf8", "tags=a%FF", "", "invalid tag 1: not valid UTF-8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if tc.header != "" {
				hdr = append(hdr, tc.header)
			}
			c := b.dialRaw(t, tc.query, hdr...)
			body, _ := io.ReadAll(c.resp.Body)
			if c.resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("status %d, want 400 (%s)", c.resp.StatusCode, body)
			}
			if ct := c.resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
				t.Errorf("Content-Type %q", ct)
			}
			if got := strings.TrimSuffix(string(body), "\n"); got != tc.reason {
				t.Errorf("reason %q, want %q", got, tc.reason)
			}
		})
	}
}

// An unparseable cursor is not a 400 (a browser's EventSource would stop
// reconnecting for good): continuity cannot be proven from it, so the client
// gets `reset` with the reason, then `ready` resumed:false, and is live.
func TestUnparseableCursor(t *testing.T) {
	h, b := setup(t, Options{})
	publish(t, h, 10, "a")
	for _, tc := range []struct {
		name, query, header, reason string
	}{
		{"header", "tags=a", "Last-Event-ID: abc", `invalid Last-Event-ID \"abc\": want a decimal position`},
		{"query negative", "tags=a&lastEventId=-1", "", `invalid Last-Event-ID \"-1\": want a decimal position`},
		{"query plus", "tags=a&lastEventId=%2B1", "", `invalid Last-Event-ID \"+1\": want a decimal position`},
		{"out of range", "tags=a&lastEventId=18446744073709551616", "", `invalid Last-Event-ID \"18446744073709551616\": out of range`},
		{"hex header", "tags=a", "Last-Event-ID: 0x10", `invalid Last-Event-ID \"0x10\": want a decimal position`},
		{"space", "tags=a&lastEventId=1%202", "", `invalid Last-Event-ID \"1 2\": want a decimal position`},
		{"long", "tags=a&lastEventId=" + strings.Repeat("9", 50) + "x", "", `invalid Last-Event-ID \"` + strings.Repeat("9", 40) + `…\": want a decimal position`},
		// The header wins over the query, also when it is the bad one.
		{"header over query", "tags=a&lastEventId=10", "Last-Event-ID: x", `invalid Last-Event-ID \"x\": want a decimal position`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if tc.header != "" {
				hdr = append(hdr, tc.header)
			}
			c := b.dial(t, tc.query, hdr...)
			c.expect(reset(10, tc.reason), ready(10, false))
		})
	}
	// Live after the reset: the next transaction arrives.
	c := b.dial(t, "tags=a", "Last-Event-ID: nope")
	c.expect(reset(10, `invalid Last-Event-ID \"nope\": want a decimal position`), ready(10, false))
	publish(t, h, 11, "a")
	c.expect(inv(11, "a"))
}

func TestCursorEdgeValues(t *testing.T) {
	h, b := setup(t, Options{})
	h.SetEnd(^cdc.Position(0))
	// The largest position resumes (r3labs/sse/v2 would have rejected
	// anything above MaxInt64).
	b.dial(t, "tags=a", "Last-Event-ID: 18446744073709551615").expect(ready(18446744073709551615, true))
	// Leading zeros are still decimal; an empty header means no cursor.
	b.dial(t, "tags=a&lastEventId=007").expect(ready(7, true))
	b.dial(t, "tags=a&lastEventId=").expect(ready(0, false))
}

func TestMethodNotAllowed(t *testing.T) {
	h, b := setup(t, Options{})
	resp, err := http.Post(b.srv.URL+"/events?tags=a", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET" {
		t.Fatalf("status %d, Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
	_ = h
}

func TestCloseEndsConnections(t *testing.T) {
	h, b := setup(t, Options{})
	c1 := b.dial(t, "tags=a")
	c2 := b.dial(t, "tags=b")
	c1.expect(ready(0, false))
	c2.expect(ready(0, false))
	publish(t, h, 1, "a", "b")
	publish(t, h, 2, "a")
	h.Close()
	// What was queued is written, then a last ping with the head (the
	// cursor a restart resumes from), then the stream ends cleanly.
	c1.expect(inv(1, "a"), inv(2, "a"), ping(2))
	c1.eof()
	c2.expect(inv(1, "b"), ping(2))
	c2.eof()
	if err := h.Publish(context.Background(), 3, ts0, []string{"a"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish after Close: %v", err)
	}
	c := b.dialRaw(t, "tags=a")
	if c.resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status %d after Close", c.resp.StatusCode)
	}
	if st := h.Stats(); st.Subscribers != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestDisconnectReleases(t *testing.T) {
	h, b := setup(t, Options{})
	left := make(chan struct{}, 2)
	h.testHookLeave = func() { left <- struct{}{} }
	c1 := b.dial(t, "tags=a,user:*")
	c2 := b.dial(t, "tags=a")
	c1.expect(ready(0, false))
	c2.expect(ready(0, false))
	if n := h.Stats().Subscribers; n != 2 {
		t.Fatalf("%d subscribers", n)
	}
	c1.conn.Close()
	<-left // the server noticed without any write
	if n := h.Stats().Subscribers; n != 1 {
		t.Fatalf("%d subscribers after a disconnect", n)
	}
	h.mu.Lock()
	if len(h.idx.patterns) != 0 || len(h.idx.exact) != 1 || len(h.idx.exact["a"].subs) != 1 || len(h.idx.patTree.root.children) != 0 {
		t.Errorf("index not cleaned: %v %v", h.idx.patterns, h.idx.exact)
	}
	h.mu.Unlock()
	publish(t, h, 1, "a")
	c2.expect(inv(1, "a"))
	c2.conn.Close()
	<-left
	h.mu.Lock()
	if len(h.idx.exact) != 0 || len(h.idx.exactTree.root.children) != 0 || len(h.conns) != 0 {
		t.Errorf("index not empty")
	}
	h.mu.Unlock()
}

func TestResetBroadcast(t *testing.T) {
	h, b := setup(t, Options{})
	h.SetFloor(10)
	publish(t, h, 11, "a")
	c := b.dial(t, "tags=a")
	c.expect(ready(11, false))
	_ = h.Reset(context.Background(), "replication slot invalidated", 0)
	c.expect(reset(11, "replication slot invalidated"))
	// Until the source resumes, no cursor can be trusted.
	b.dial(t, "tags=a", "Last-Event-ID: 11").expect(reset(11, "replication slot invalidated"), ready(11, false))
	h.SetFloor(50)
	publish(t, h, 51, "a")
	c.expect(inv(51, "a"))
	b.dial(t, "tags=a", "Last-Event-ID: 11").expect(
		reset(51, "cursor 11 is older than the replay window (floor 50)"), ready(51, false))
	b.dial(t, "tags=a", "Last-Event-ID: 50").expect(inv(51, "a"), ready(51, true))
}

func TestHealth(t *testing.T) {
	ready := false
	for _, tc := range []struct {
		h    http.Handler
		want int
	}{
		{Healthz(), 200},
		{Readyz(func() bool { return ready }), 503},
		{Readyz(nil), 503},
	} {
		rec := httptest.NewRecorder()
		tc.h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
		if rec.Code != tc.want {
			t.Errorf("status %d, want %d", rec.Code, tc.want)
		}
	}
	ready = true
	rec := httptest.NewRecorder()
	Readyz(func() bool { return ready }).ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if rec.Code != 200 {
		t.Errorf("ready: status %d", rec.Code)
	}
}

// TestClientSendingBytesIsDropped: an event-stream client has nothing to
// send after its request; one that keeps sending is dropped rather than
// read byte by byte forever. A little is tolerated.
func TestClientSendingBytesIsDropped(t *testing.T) {
	h, b := setup(t, Options{})
	c := b.dial(t, "tags=a")
	c.expect(ready(0, false))
	if _, err := c.conn.Write([]byte(strings.Repeat("x", 100))); err != nil {
		t.Fatal(err)
	}
	publish(t, h, 1, "a")
	c.expect(inv(1, "a"))
	if _, err := c.conn.Write([]byte(strings.Repeat("x", 2*maxJunk))); err != nil {
		t.Fatal(err)
	}
	c.eof()
}

// TestIdleAdvancesPings: an idle position moves the head without an event;
// pings (and the last one at Close) carry it.
func TestIdleAdvancesPings(t *testing.T) {
	h, b := setup(t, Options{})
	c := b.dial(t, "tags=a")
	c.expect(ready(0, false))
	publish(t, h, 1, "a")
	h.Idle(7)
	h.Idle(5) // never backwards
	h.Close()
	c.expect(inv(1, "a"), ping(7))
	c.eof()
}
