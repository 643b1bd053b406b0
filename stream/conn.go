package stream

import (
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"syscall"

	"github.com/tagstream/tagstream/cdc"
)

type kind uint8

const (
	kindInvalidate kind = iota
	kindReset
	kindReady
	kindPing
)

var eventNames = [...]string{
	kindInvalidate: "invalidate",
	kindReset:      "reset",
	kindReady:      "ready",
	kindPing:       "ping",
}

var (
	readyResumed = []byte(`{"resumed":true}`)
	readyFresh   = []byte(`{"resumed":false}`)
	pingData     = []byte(`{}`)
)

// item is one queued event. Its id is fixed when it is queued, so that the
// ids a connection sees never go down: invalidate ids strictly increase,
// and ready/reset/ping carry max(current head, highest id already queued).
type item struct {
	kind kind
	id   cdc.Position
	p    *payload // invalidate: the encoded frame, shared
	data []byte   // reset, ready: encoded data
}

// conn is one SSE client.
type conn struct {
	id      uint64
	entries []string        // sorted, de-duplicated subscription entries
	wake    chan struct{}   // capacity 1: the queue changed (net/http path)
	nc      net.Conn        // hijacked connection: signalled through its read deadline
	raw     syscall.RawConn // nc's descriptor, for the writer pool (set before pooled)

	// Guarded by Hub.mu.
	ip      netip.Addr   // the client's address, counted in Hub.perIP when valid
	expires int64        // UnixNano when the grant ends (0: never, or ended)
	seq     uint64       // index matching round
	matched []string     // tags matched in that round
	cursor  cdc.Position // live events at or below are not sent

	mu      sync.Mutex
	queue   []item
	initial int          // join items (replay, reset, ready) the writer has not taken yet; outside the bound
	lastID  cdc.Position // highest id queued
	closing bool         // hub closing: write what is queued, then end
	// wakeAt is how many queued items wake the writer (0: it is not
	// waiting and will look at the queue again by itself). An idle writer
	// waits for 1; one that is gathering a batch, for half the bound.
	wakeAt int
	// pooled: the writer pool writes the queue and c's goroutine only
	// watches the client (see pool.go). scheduled: c is on its flusher's
	// list. pending: bytes the pool could not write at once, which c's
	// goroutine writes before anything else.
	pooled, scheduled bool
	pending           []byte
	flushedAt         int64 // UnixNano of the pool's last write (pooled); non-zero when the pool hands c over as busy
}

// notifyLocked tells c's writer that its queue now holds n items (c.mu
// held): a pooled c goes on its flusher's list (once); otherwise it
// reports whether c's goroutine must be signalled (the caller does it).
func (h *Hub) notifyLocked(c *conn, n int) (signal bool) {
	if c.pooled {
		if !c.scheduled {
			c.scheduled = true
			h.schedule(c)
		}
		return false
	}
	return c.wakeLocked(n)
}

// wakeNowLocked is notifyLocked for a change that cannot wait for a batch
// (a reset, closing): a goroutine that is gathering one is woken too.
func (h *Hub) wakeNowLocked(c *conn) (signal bool) {
	if !c.pooled {
		c.wakeAt = 0
		return true
	}
	return h.notifyLocked(c, 1)
}

// wakeLocked reports whether the writer must be woken now that the queue
// holds n items (c.mu held), and if so records that it has been.
func (c *conn) wakeLocked(n int) bool {
	if c.wakeAt == 0 || n < c.wakeAt {
		return false
	}
	c.wakeAt = 0
	return true
}

func (c *conn) signal() {
	if c.nc != nil {
		_ = c.nc.SetReadDeadline(aLongTimeAgo)
		return
	}
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// push queues it for c (Hub.mu held) and reports whether c's writer must
// be signalled (the caller does it, possibly after releasing Hub.mu). A
// ping coalesces with a ping still queued. A full queue is replaced by a
// single reset.
func (h *Hub) push(c *conn, it item) (wake bool) {
	c.mu.Lock()
	if it.kind != kindInvalidate {
		it.id = max(it.id, c.lastID)
	}
	switch {
	case it.kind == kindPing && len(c.queue) > c.initial && c.queue[len(c.queue)-1].kind == kindPing:
		c.queue[len(c.queue)-1].id = it.id
	case len(c.queue)-c.initial >= h.opts.QueueSize:
		c.mu.Unlock()
		h.overflows.Add(1)
		// Debug, not Warn: this runs under the hub lock, and one stalled
		// proxy can overflow thousands of clients at once; the count is in
		// Stats.Overflows (/metrics).
		h.log.Debug("stream: client too slow, queue overflowed", logKeyConn, c.id)
		if it.kind == kindInvalidate {
			h.dropped.Add(1) // the event that did not fit
		}
		h.resetConn(c, max(h.current(), it.id), overflowData)
		return false
	default:
		c.queue = append(c.queue, it)
		c.lastID = max(c.lastID, it.id)
	}
	wake = h.notifyLocked(c, len(c.queue))
	c.mu.Unlock()
	return wake
}

var overflowData = resetData("client too slow: its queue overflowed")

// resetConn drops c's queued events and queues one reset (and the ready the
// client has not had yet, now resumed:false). Hub.mu held.
func (h *Hub) resetConn(c *conn, id cdc.Position, data []byte) {
	c.mu.Lock()
	readyPending := false
	var dropped uint64
	for _, it := range c.queue {
		switch it.kind {
		case kindReady:
			readyPending = true
		case kindInvalidate:
			dropped++
		}
	}
	id = max(id, c.lastID)
	if cap(c.queue) > 16 {
		c.queue = nil // give a burst's memory back
	}
	clear(c.queue)
	c.queue = append(c.queue[:0], item{kind: kindReset, id: id, data: data})
	c.initial = 0
	if readyPending {
		c.queue = append(c.queue, item{kind: kindReady, id: id, data: readyFresh})
		c.initial = 2
	}
	c.lastID = id
	signal := h.wakeNowLocked(c)
	c.mu.Unlock()
	h.dropped.Add(dropped)
	h.resetCount.Add(1)
	if signal {
		c.signal()
	}
}

// join decides how a new connection starts (Hub.mu held) and registers it:
// without a cursor, `ready` resumed:false; with a cursor that continuity
// covers (effective floor ≤ cursor ≤ the source's end), the window's
// matching events after it, then `ready` resumed:true; otherwise `reset`,
// then `ready` resumed:false.
func (h *Hub) join(c *conn, cursor cdc.Position, hasCursor bool) {
	h.evictAged(h.now())
	cur := h.current()
	floor := max(h.floor, h.evictedFloor)
	end := max(h.head, h.end, h.floor)
	var q []item
	id := cur
	switch {
	case !hasCursor:
		q = append(q, item{kind: kindReady, id: id, data: readyFresh})
	case h.lost || cursor < floor || cursor > end:
		reason := h.lostReason
		switch {
		case h.lost:
		case cursor < floor:
			reason = "cursor " + strconv.FormatUint(uint64(cursor), 10) + " is older than the replay window (floor " + strconv.FormatUint(uint64(floor), 10) + ")"
		default:
			reason = "cursor " + strconv.FormatUint(uint64(cursor), 10) + " is ahead of the source (at " + strconv.FormatUint(uint64(end), 10) + ")"
		}
		h.resetCount.Add(1)
		q = append(q, item{kind: kindReset, id: id, data: resetData(reason)},
			item{kind: kindReady, id: id, data: readyFresh})
	default:
		id = max(cur, cursor)
		for i := h.win.after(cursor); i < h.win.len(); i++ {
			ev := h.win.at(i)
			tags := matchEntries(c.entries, ev.tags)
			if tags == nil {
				continue
			}
			p := &ev.full
			if !slices.Equal(tags, ev.tags) {
				p = &payload{ev: ev, tags: tags}
			}
			h.matched.Add(1)
			q = append(q, item{kind: kindInvalidate, id: ev.pos, p: p})
		}
		q = append(q, item{kind: kindReady, id: id, data: readyResumed})
	}
	c.cursor = id
	c.queue, c.initial, c.lastID = q, len(q), id
	h.idx.add(c)
	h.conns[c] = struct{}{}
	h.subscribers.Add(1)
}

func (h *Hub) leave(c *conn) {
	h.mu.Lock()
	h.idx.remove(c)
	delete(h.conns, c)
	if c.ip.IsValid() {
		if h.perIP[c.ip]--; h.perIP[c.ip] <= 0 {
			delete(h.perIP, c.ip)
		}
	}
	h.mu.Unlock()
	h.subscribers.Add(-1)
	if h.testHookLeave != nil {
		h.testHookLeave()
	}
}

// appendFrame appends one event in the SSE wire format: the id, data and
// event fields in that order (the layout r3labs/sse/v2 writes), then a blank
// line. Data never holds a newline (JSON escapes it).
func appendFrame(b []byte, it *item) []byte {
	if it.kind == kindInvalidate {
		return append(b, it.p.frame()...)
	}
	b = append(b, "id: "...)
	b = strconv.AppendUint(b, uint64(it.id), 10)
	b = append(b, "\ndata: "...)
	switch it.kind {
	case kindPing:
		b = append(b, pingData...)
	default:
		b = append(b, it.data...)
	}
	b = append(b, "\nevent: "...)
	b = append(b, eventNames[it.kind]...)
	return append(b, "\n\n"...)
}

// payload is an invalidate frame, encoded once and shared by every
// connection that receives the same transaction with the same tags.
type payload struct {
	ev   *event
	tags []string // nil: ev.tags
	once sync.Once
	enc  []byte
}

func (p *payload) frame() []byte {
	p.once.Do(func() {
		tags := p.tags
		if tags == nil {
			tags = p.ev.tags
		}
		n := 64
		for _, t := range tags {
			n += len(t) + 3
		}
		b := make([]byte, 0, n)
		b = append(b, "id: "...)
		b = strconv.AppendUint(b, uint64(p.ev.pos), 10)
		b = append(b, "\ndata: "...)
		b = appendInvalidateData(b, tags, p.ev.ts)
		b = append(b, "\nevent: "...)
		b = append(b, eventNames[kindInvalidate]...)
		p.enc = append(b, "\n\n"...)
	})
	return p.enc
}
