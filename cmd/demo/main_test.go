package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tagstream/tagstream/internal/launch"
	"github.com/tagstream/tagstream/stream/ssereader"
	"github.com/tagstream/tagstream/testcontainers"
)

func TestMain(m *testing.M) { testcontainers.Main(m) }

// TestDemo runs what `make demo` runs: the page is served, a todo added
// through the demo's API reaches a subscriber of the demo's /events as
// its invalidation, bad input gets its 400, and the demo stops cleanly.
func TestDemo(t *testing.T) {
	bin, err := launch.BuildTagstream(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- demo(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), addr, bin, "../../rules.example.yaml")
	}()
	base := "http://" + addr
	// The page is up and the daemon streams (its /readyz, through the demo).
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		select {
		case err := <-done:
			t.Fatalf("demo ended before it was ready: %v", err)
		default:
		}
		if resp, err := http.Get(base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the demo's daemon is not ready within 60s")
		}
	}
	page, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(page.Body)
	page.Body.Close()
	if page.StatusCode != http.StatusOK || page.Header.Get("Content-Type") != "text/html; charset=utf-8" || !strings.Contains(string(body), "/events") {
		t.Fatalf("GET /: %s %q, %d bytes", page.Status, page.Header.Get("Content-Type"), len(body))
	}

	events, err := http.Get(base + "/events?tags=user:1:todos")
	if err != nil {
		t.Fatal(err)
	}
	defer events.Body.Close()
	rd := ssereader.NewReader(bufio.NewReader(events.Body))
	next := func() ssereader.Event {
		t.Helper()
		e, err := rd.Next()
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	if e := next(); e.Event != "ready" || e.Data != `{"resumed":false}` {
		t.Fatalf("first event %+v, want ready", e)
	}
	post := func(path, body string) (int, string) {
		t.Helper()
		resp, err := http.Post(base+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	if code, msg := post("/api/todos", `{"title":"from the test","user_id":1}`); code != http.StatusNoContent {
		t.Fatalf("add: %d %s", code, msg)
	}
	e := next()
	var inv struct {
		Tags []string `json:"tags"`
	}
	if err := json.Unmarshal([]byte(e.Data), &inv); err != nil || e.Event != "invalidate" || len(inv.Tags) != 1 || inv.Tags[0] != "user:1:todos" {
		t.Fatalf("after adding a todo: %+v (%v), want invalidate user:1:todos", e, err)
	}
	if code, msg := post("/api/todos", `{"title":"","user_id":3}`); code != http.StatusBadRequest || msg != `want {"title":"…","user_id":1|2}` {
		t.Fatalf("bad todo: %d %q", code, msg)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("demo: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the demo did not stop within 30s of its context's end")
	}
}
