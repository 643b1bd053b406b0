package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseLSN(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
	}{
		{"0/0", 0},
		{"0/1120000", 0x1120000},
		{"16/B374D848", 0x16<<32 | 0xB374D848},
		{"garbage", 0},
		{"1/xyz", 0},
	} {
		if got := parseLSN(tc.in); got != tc.want {
			t.Errorf("parseLSN(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestBinlogSeq(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"binlog.000001", 1, true},
		{"mysql-bin.000042", 42, true},
		{"binlog", 0, false},
		{"binlog.x", 0, false},
	} {
		got, ok := binlogSeq(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("binlogSeq(%q) = %d, %v; want %d, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestPct(t *testing.T) {
	var s []time.Duration
	for i := 1; i <= 100; i++ {
		s = append(s, time.Duration(i)*time.Millisecond)
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 50 * time.Millisecond}, {0.9, 90 * time.Millisecond}, {0.99, 99 * time.Millisecond}, {1, 100 * time.Millisecond}, {0, time.Millisecond}} {
		if got := pct(s, tc.q); got != tc.want {
			t.Errorf("pct(%v) = %v, want %v", tc.q, got, tc.want)
		}
	}
	if got := pct(s[:1], 0.99); got != time.Millisecond {
		t.Errorf("pct of one sample = %v", got)
	}
}

// TestSSEClient checks the client against a chunked, flushed event stream
// like the hub's: multi-line data, comments, the cursor header.
func TestSSEClient(t *testing.T) {
	gotCursor := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("tags") != "user:1:todos,Query.auctions" {
			http.Error(w, "bad tags "+r.URL.RawQuery, http.StatusBadRequest)
			return
		}
		gotCursor <- r.Header.Get("Last-Event-ID")
		w.Header().Set("Content-Type", "text/event-stream")
		f := w.(http.Flusher)
		fmt.Fprint(w, ": hello\n\nevent: reset\nid: 5\ndata: {\"reason\":\"x\"}\n\n")
		f.Flush()
		fmt.Fprint(w, "event: ready\nid: 5\ndata: {\"resumed\":false}\n\n")
		f.Flush()
		fmt.Fprint(w, "event: invalidate\nid: 7\ndata: {\"tags\":[\"user:1:todos\"],\n")
		f.Flush()
		fmt.Fprint(w, "data: \"ts\":\"2026-01-02T03:04:05.123456Z\"}\n\n")
		f.Flush()
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addr := strings.TrimPrefix(srv.URL, "http://")
	c, err := dialSSE(ctx, addr, "user:1:todos,Query.auctions", "42")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := <-gotCursor; got != "42" {
		t.Errorf("Last-Event-ID = %q, want 42", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	resets, err := c.waitReady(deadline)
	if err != nil || resets != 1 {
		t.Fatalf("waitReady = %d, %v; want 1 reset", resets, err)
	}
	ev, err := c.next(deadline)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Name != "invalidate" || ev.ID != "7" {
		t.Fatalf("event = %+v", ev)
	}
	// Multi-line data joins with a newline, which JSON accepts.
	inv, err := parseInvalidation(ev.Data)
	if err != nil {
		t.Fatal(err)
	}
	want := time.Date(2026, 1, 2, 3, 4, 5, 123456000, time.UTC)
	if len(inv.Tags) != 1 || inv.Tags[0] != "user:1:todos" || !inv.TS.Equal(want) {
		t.Errorf("invalidation = %+v", inv)
	}
	if ts, ok := eventTS(ev.Data); !ok || !ts.Equal(want) {
		t.Errorf("eventTS = %v, %v; want %v", ts, ok, want)
	}
	if _, ok := eventTS(`{"tags":["a"]}`); ok {
		t.Error("eventTS without ts: ok")
	}

	if _, err := dialSSE(ctx, addr, "other", ""); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("bad request: err = %v, want a 400", err)
	}
}

func TestRecordQuotesCommands(t *testing.T) {
	b := &bench{}
	b.record("/usr/bin/pgbench", "-n", "-f", "a.sql@5", "postgres://u@h/db?sslmode=disable")
	b.record("/usr/bin/pgbench", "-n", "-f", "a.sql@5", "postgres://u@h/db?sslmode=disable")
	b.record("x", "it's")
	want := []string{"pgbench -n -f a.sql@5 'postgres://u@h/db?sslmode=disable'", `x 'it'\''s'`}
	if strings.Join(b.commands, "\n") != strings.Join(want, "\n") {
		t.Errorf("commands = %q, want %q", b.commands, want)
	}
}

// TestSSEClientSocketTimes: with stamp, an event carries the kernel's
// receive time, between the server's write and the harness's read. The
// kernel turns timestamping on shortly after the first socket asks, so the
// first events may come without one (and are then not counted).
func TestSSEClientSocketTimes(t *testing.T) {
	send := make(chan struct{})
	sent := make(chan time.Time, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		f := w.(http.Flusher)
		fmt.Fprint(w, "event: ready\nid: 5\ndata: {\"resumed\":false}\n\n")
		f.Flush()
		for range send {
			sent <- time.Now()
			fmt.Fprint(w, "event: invalidate\nid: 7\ndata: {\"tags\":[\"a\"],\"ts\":\"2026-01-02T03:04:05Z\"}\n\n")
			f.Flush()
		}
	}))
	defer srv.Close()
	defer close(send)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := dialSSE(ctx, strings.TrimPrefix(srv.URL, "http://"), "a", "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	deadline := time.Now().Add(5 * time.Second)
	if _, err := c.waitReady(deadline); err != nil {
		t.Fatal(err)
	}
	if err := c.conn.stamp(); err != nil {
		t.Fatal(err)
	}
	for range 100 {
		send <- struct{}{}
		ev, err := c.next(deadline)
		if err != nil {
			t.Fatal(err)
		}
		at := <-sent
		if ev.Arrived.IsZero() {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if ev.Name != "invalidate" || ev.Arrived.Before(at) || ev.Arrived.After(ev.At) {
			t.Fatalf("event %q arrived %v; want between the write (%v) and the read (%v)", ev.Name, ev.Arrived, at, ev.At)
		}
		return
	}
	t.Fatal("no event carried a receive time")
}

// TestRecorderWindows: samples split by commit time, worst window first.
func TestRecorderWindows(t *testing.T) {
	r := newRecorder()
	t0 := time.Unix(100, 0)
	r.start(t0)
	for i, lat := range []time.Duration{1, 2, 3, 40, 50} {
		commit := t0.Add(time.Duration(i) * 200 * time.Millisecond) // windows of 500 ms: 0,0,0,1,1
		r.add("k", commit, commit.Add(lat*time.Millisecond), time.Time{})
	}
	got := r.windows("k", 500*time.Millisecond)
	want := []window{
		{from: 500 * time.Millisecond, n: 2, p99: 50 * time.Millisecond, max: 50 * time.Millisecond},
		{from: 0, n: 3, p99: 3 * time.Millisecond, max: 3 * time.Millisecond},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("windows = %+v, want %+v", got, want)
	}
}
