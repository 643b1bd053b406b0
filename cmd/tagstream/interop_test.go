package main

import (
	"context"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/r3labs/sse/v2"
	"gopkg.in/cenkalti/backoff.v1"
)

// TestThirdPartyClientResumes subscribes with r3labs/sse/v2's client, which
// stores the last id it saw and resends it when it connects again, the way a
// browser's EventSource does: across a restart of tagstream it gets exactly
// what it missed, then ready resumed:true.
func TestThirdPartyClientResumes(t *testing.T) {
	dsn, db, rulesFile := setupPG(t)
	args := []string{"--db", dsn, "--rules", rulesFile, "--slot", "interop", "--publication", "interop"}
	d := startDaemon(t, args...)

	events := make(chan *sse.Event, 64)
	client := sse.NewClient(d.base + "/events?tags=todo:*")
	retry := backoff.NewConstantBackOff(100 * time.Millisecond)
	client.ReconnectStrategy = retry
	client.ReconnectNotify = func(error, time.Duration) {}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// r3labs retries failed connections but returns when a stream ends
	// cleanly (tagstream's graceful shutdown): subscribe again, as a browser
	// does; the client resends the last id it stored.
	go func() {
		for ctx.Err() == nil {
			client.SubscribeWithContext(ctx, "", func(ev *sse.Event) {
				if string(ev.Event) != "ping" {
					select {
					case events <- ev:
					case <-ctx.Done():
					}
				}
			})
			time.Sleep(100 * time.Millisecond)
		}
	}()
	next := func() string {
		t.Helper()
		select {
		case ev := <-events:
			if len(ev.ID) == 0 {
				t.Fatalf("event %s without id", ev.Event)
			}
			return render(t, sseEvent{Event: string(ev.Event), ID: string(ev.ID), Data: string(ev.Data)})
		case <-time.After(20 * time.Second):
			t.Fatal("no event within 20s")
		}
		return ""
	}
	expect := func(want string) {
		t.Helper()
		if got := next(); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}

	expect(`ready {"resumed":false}`)
	execSQL(t, db, `INSERT INTO todos (id, user_id) VALUES (1, 1)`)
	expect("invalidate todo:1")

	d.stop(t)
	execSQL(t, db, `INSERT INTO todos (id, user_id) VALUES (2, 1)`)
	d = startDaemonOn(t, d.base[len("http://"):], args...)
	// Whether todo:2 comes from the replay window or live after `ready`
	// depends on how fast the client reconnects; either way exactly once.
	got := []string{next(), next()}
	sort.Strings(got)
	if want := []string{"invalidate todo:2", `ready {"resumed":true}`}; !slices.Equal(got, want) {
		t.Fatalf("after restart got %q, want %q in either order", got, want)
	}
	execSQL(t, db, `DELETE FROM todos WHERE id = 1`)
	expect("invalidate todo:1")
	cancel()
	d.stop(t)
}
