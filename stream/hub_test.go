package stream

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tagstream/tagstream/cdc"
)

func TestSubscribeExact(t *testing.T) {
	h, b := setup(t, Options{})
	c := b.dial(t, "tags=todos,todo:1")
	for k, want := range map[string]string{
		"Content-Type":      "text/event-stream",
		"Cache-Control":     "no-cache",
		"X-Accel-Buffering": "no",
	} {
		if got := c.resp.Header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	c.expect(ready(0, false))
	publish(t, h, 1, "todos", "todo:1", "user:7:todos")
	publish(t, h, 2, "todo:2")
	publish(t, h, 3, "todo:1", "todos")
	publish(t, h, 3, "todos")            // re-delivery: ignored
	publish(t, h, 4, "todo:1", "todo:1") // duplicates are merged
	c.expect(inv(1, "todo:1", "todos"), inv(3, "todo:1", "todos"), inv(4, "todo:1"))
}

func TestPatternMatch(t *testing.T) {
	h, b := setup(t, Options{})
	c := b.dial(t, "tags=user:7:*,todo:1&tags=*:admin")
	c.expect(ready(0, false))
	publish(t, h, 1, "user:7:todos", "user:8:todos", "todo:1", "todo:2", "user:7:name")
	publish(t, h, 2, "user:70:todos") // user:7:* does not match user:70:…
	publish(t, h, 3, "x:admin", "user:8:todos")
	c.expect(inv(1, "todo:1", "user:7:name", "user:7:todos"), inv(3, "x:admin"))
}

func TestWildcardEvent(t *testing.T) {
	h, b := setup(t, Options{})
	c := b.dial(t, "tags=todo:5,user:*:todos,user:7:name,todos")
	c.expect(ready(0, false))
	publish(t, h, 1, "todo:*")            // exact subscription under a wildcard event
	publish(t, h, 2, "user:*:todos")      // the same pattern on both sides
	publish(t, h, 3, "user:7:*")          // overlaps a pattern and an exact entry
	publish(t, h, 4, "order:*")           // nothing
	publish(t, h, 5, "*")                 // everything
	publish(t, h, 6, "*:todos", "todo:5") // mixed
	publish(t, h, 7, "user:*:name", "user:9:todos")
	c.expect(
		inv(1, "todo:5"),
		inv(2, "user:*:todos"),
		inv(3, "user:*:todos", "user:7:name"),
		inv(5, "todo:5", "todos", "user:*:todos", "user:7:name"),
		inv(6, "todo:5", "user:*:todos"),
		inv(7, "user:7:name", "user:9:todos"),
	)
}

func TestReplayWithinWindow(t *testing.T) {
	h, b := setup(t, Options{})
	h.SetFloor(10)
	publish(t, h, 11, "todo:1")
	publish(t, h, 12, "todo:2")
	publish(t, h, 13, "todo:1", "todos")
	publish(t, h, 14, "other")
	publish(t, h, 15, "todo:*")

	c := b.dial(t, "tags=todo:1", "Last-Event-ID: 11")
	c.expect(inv(13, "todo:1"), inv(15, "todo:1"), ready(15, true))
	publish(t, h, 16, "todo:1")
	c.expect(inv(16, "todo:1"))

	// The query parameter, and the floor itself as a cursor.
	c = b.dial(t, "tags=todo:2&lastEventId=10")
	c.expect(inv(12, "todo:2"), inv(15, "todo:2"), ready(16, true))

	// The header wins over the query parameter (a browser reconnecting
	// keeps its original URL).
	c = b.dial(t, "tags=todo:1&lastEventId=10", "Last-Event-ID: 15")
	c.expect(inv(16, "todo:1"), ready(16, true))

	// At the head: nothing to replay.
	c = b.dial(t, "tags=todo:1", "Last-Event-ID: 16")
	c.expect(ready(16, true))
}

func TestCursorBelowFloor(t *testing.T) {
	h, b := setup(t, Options{ReplaySize: 3})
	h.SetFloor(10)
	publish(t, h, 11, "a")
	b.dial(t, "tags=a", "Last-Event-ID: 9").expect(
		reset(11, "cursor 9 is older than the replay window (floor 10)"), ready(11, false))

	// Eviction by count raises the floor to the last evicted position.
	for pos := 12; pos <= 15; pos++ {
		publish(t, h, cdc.Position(pos), "a")
	}
	b.dial(t, "tags=a", "Last-Event-ID: 11").expect(
		reset(15, "cursor 11 is older than the replay window (floor 12)"), ready(15, false))
	c := b.dial(t, "tags=a", "Last-Event-ID: 12")
	c.expect(inv(13, "a"), inv(14, "a"), inv(15, "a"), ready(15, true))
	publish(t, h, 16, "a")
	c.expect(inv(16, "a"))
}

func TestCursorBelowFloorByAge(t *testing.T) {
	now := ts0
	h, b := setup(t, Options{ReplayAge: time.Minute, Now: func() time.Time { return now }})
	h.SetFloor(10)
	publish(t, h, 11, "a")
	now = now.Add(30 * time.Second)
	publish(t, h, 12, "a")
	now = now.Add(31 * time.Second) // 11 is 61 s old: evicted on the next look
	b.dial(t, "tags=a", "Last-Event-ID: 10").expect(
		reset(12, "cursor 10 is older than the replay window (floor 11)"), ready(12, false))
	b.dial(t, "tags=a", "Last-Event-ID: 11").expect(inv(12, "a"), ready(12, true))
}

func TestCursorBeyondSourceEnd(t *testing.T) {
	h, b := setup(t, Options{})
	h.SetFloor(10)
	publish(t, h, 11, "a")
	b.dial(t, "tags=a", "Last-Event-ID: 12").expect(
		reset(11, "cursor 12 is ahead of the source (at 11)"), ready(11, false))
	h.SetEnd(20)
	b.dial(t, "tags=a", "Last-Event-ID: 21").expect(
		reset(11, "cursor 21 is ahead of the source (at 20)"), ready(11, false))

	// A fresh process: nothing published, no floor yet.
	h2, b2 := setup(t, Options{})
	b2.dial(t, "tags=a", "Last-Event-ID: 5").expect(
		reset(0, "cursor 5 is ahead of the source (at 0)"), ready(0, false))
	// Once the source resumed from 5, that cursor resumes.
	h2.SetFloor(5)
	b2.dial(t, "tags=a", "Last-Event-ID: 5").expect(ready(5, true))
}

func TestCursorBetweenHeadAndEndWaits(t *testing.T) {
	h, b := setup(t, Options{})
	h.SetFloor(10)
	publish(t, h, 11, "a")
	h.SetEnd(20)
	c := b.dial(t, "tags=a", "Last-Event-ID: 15")
	c.expect(ready(15, true))
	publish(t, h, 13, "a") // at or below the client's cursor: it has it
	publish(t, h, 15, "a")
	publish(t, h, 16, "a")
	c.expect(inv(16, "a"))
	// Its pings never go below its cursor even though the head was lower.
}

func TestOverflowResets(t *testing.T) {
	h, b := setup(t, Options{QueueSize: 4})
	tag := "a" + strings.Repeat("x", 200) // big events fill the buffers sooner
	c := b.dial(t, "tags="+tag)
	c.expect(ready(0, false))
	// The client stops reading. Publish until its queue overflows: the
	// socket buffers and then the queue fill.
	last := overflow(t, h, nil, tag, "other")
	publish(t, h, last+1, tag)
	// Reading again: a contiguous run of events, the reset in place of the
	// dropped ones (its id the head when it overflowed), then live events.
	pos := readToReset(t, c, tag, last)
	if pos != last-4 {
		// The queue's 4 events and the one that did not fit.
		t.Fatalf("reset after event %d of %d, want after %d", pos-1, last, last-5)
	}
	c.expect(inv(last+1, tag))
	st := h.Stats()
	if st.Overflows != 1 || st.Resets != 1 || st.Dropped != 5 {
		t.Fatalf("stats %+v, want 1 overflow, 1 reset, 5 dropped", st)
	}
}

// A queue that overflows before the writer took the join's events: the
// replay is dropped too, and the client still gets its one ready, now
// resumed:false.
func TestOverflowBeforeReady(t *testing.T) {
	h := NewHub(Options{QueueSize: 2})
	defer h.Close()
	publish(t, h, 1, "a")
	publish(t, h, 2, "a")
	h.mu.Lock()
	c := &conn{id: 1, entries: []string{"a"}, wake: make(chan struct{}, 1)}
	h.join(c, 0, true)
	h.mu.Unlock()
	kinds := func() (out []string) {
		for _, it := range c.queue {
			out = append(out, eventNames[it.kind]+":"+fmt.Sprint(it.id))
		}
		return out
	}
	if got := kinds(); !slices.Equal(got, []string{"invalidate:1", "invalidate:2", "ready:2"}) {
		t.Fatalf("join queued %v", got)
	}
	publish(t, h, 3, "a")
	publish(t, h, 4, "a") // the bound counts live events only: 2 fit
	publish(t, h, 5, "a")
	if got := kinds(); !slices.Equal(got, []string{"reset:5", "ready:5"}) {
		t.Fatalf("after overflow %v", got)
	}
	if string(c.queue[1].data) != `{"resumed":false}` {
		t.Fatalf("ready %s", c.queue[1].data)
	}
	// The reset's items are outside the bound too.
	publish(t, h, 6, "a")
	publish(t, h, 7, "a")
	if got := kinds(); !slices.Equal(got, []string{"reset:5", "ready:5", "invalidate:6", "invalidate:7"}) {
		t.Fatalf("after overflow %v", got)
	}
	if st := h.Stats(); st.Dropped != 5 || st.Overflows != 1 {
		t.Fatalf("stats %+v", st)
	}
}
