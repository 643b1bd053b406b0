package stream

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"
)

// maxWrite is how much the writer buffers before writing (a long replay is
// written in pieces, each with its own deadline).
const maxWrite = 32 << 10

// batchWindow is the least time between two writes to a client that is
// being sent events faster than that: after a write, the writer gathers
// what arrives for up to this long (or until its queue is half full)
// before writing again, so that a busy client costs one wake-up, one write
// and one flush per batch instead of per event. A client that gets an
// event after a quiet spell gets it at once.
const batchWindow = time.Millisecond

// link is the writer's side of one client connection.
type link interface {
	// arm prepares the next wait: it ends at until (zero: no end) or when
	// the queue signals. It is called before the writer publishes that it
	// waits, so that a signal sent after that cannot be lost.
	arm(until time.Time)
	// wait blocks until the wait armed last ends; false if the client left.
	wait() bool
	// write writes and flushes p under the write deadline.
	write(p []byte) bool
	// rawConn is the connection's descriptor when the writer pool may
	// write to it (nil: never, or not yet).
	rawConn() syscall.RawConn
}

// serveClient writes c's queue to l until the client goes, a write fails or
// the hub closes (then after writing what was queued). The headers go out
// with the first events (the join always queues at least `ready`).
// Everything queued since the last write goes out in one write and one
// flush. A connection the writer pool can write to is handed to it whenever
// its queue is empty and it is not being sent events at a high rate; c's
// goroutine then only watches the client until the pool hands it back.
func (h *Hub) serveClient(l link, c *conn) {
	var (
		batch []item
		buf   []byte
		// The last write, and whether it came less than batchWindow after
		// the one before: the client is being sent events at a high rate.
		lastWrite time.Time
		busy      bool
	)
	half := max(1, h.opts.QueueSize/2)
	for {
		// An idle writer waits for the first item. A busy one that finds
		// items less than batchWindow after its last write waits for the
		// rest of the window, or until the queue is half full, and then
		// takes everything at once. (Two writes in quick succession make a
		// writer busy: an occasional event, or one right after the join's,
		// goes out at once.)
		// (arm runs with c.mu held, before wakeAt says the writer waits.)
		c.mu.Lock()
		if c.pooled || c.flushedAt != 0 || len(c.pending) > 0 {
			if !h.withPool(l, c, &lastWrite, &busy) {
				return
			}
			continue
		}
		n := len(c.queue)
		switch {
		case c.closing:
		case n == 0 && !busy && c.raw != nil:
			c.enterPool() // see withPool
			c.mu.Unlock()
			continue
		case n == 0:
			if c.raw == nil {
				if c.raw = l.rawConn(); c.raw != nil && !busy {
					c.mu.Unlock()
					continue // hand c to the pool
				}
			}
			l.arm(time.Time{})
			c.wakeAt = 1
		case n < half && busy:
			if u := lastWrite.Add(batchWindow); time.Until(u) > 0 {
				l.arm(u)
				c.wakeAt = half
			}
		}
		if c.wakeAt > 0 {
			c.mu.Unlock()
			if !l.wait() {
				return
			}
			c.mu.Lock()
			c.wakeAt = 0
			c.mu.Unlock()
			continue
		}
		batch, c.queue = c.queue, batch[:0]
		c.initial = 0
		closing := c.closing
		c.mu.Unlock()
		if len(batch) == 0 {
			if closing {
				return
			}
			continue
		}
		buf = buf[:0]
		for i := range batch {
			buf = appendFrame(buf, &batch[i])
			if len(buf) >= maxWrite || i == len(batch)-1 {
				if !l.write(buf) {
					return
				}
				buf = buf[:0]
			}
		}
		now := time.Now()
		busy = !lastWrite.IsZero() && now.Sub(lastWrite) < 2*batchWindow
		lastWrite = now
		h.delivered.Add(uint64(len(batch)))
		clear(batch)
		// Give a burst's memory back: an idle connection keeps little.
		if cap(batch) > 16 {
			batch = nil
		}
		if cap(buf) > 4<<10 {
			buf = nil
		}
	}
}

// withPool is serveClient's side of the writer pool (c.mu held, released
// on return): while c is pooled it waits for the client to leave or the
// pool to hand c back; it takes over a busy client's batching and writes
// what the pool could not. It reports false when the client is gone.
// (Out of serveClient to keep that frame, under which an idle connection
// waits, small: the idle goroutine's stack stays at its first 2 KiB.)
//
//go:noinline
func (h *Hub) withPool(l link, c *conn, lastWrite *time.Time, busy *bool) bool {
	if c.pooled {
		// Also a wake-up left over from before a hand-over: wait again.
		l.arm(time.Time{})
		c.mu.Unlock()
		return l.wait()
	}
	if c.flushedAt != 0 {
		// The pool handed c over because it is being sent events at a
		// high rate: batch them, counting from the pool's last write.
		*lastWrite, *busy = time.Unix(0, c.flushedAt), true
		c.flushedAt = 0
	}
	p := c.pending
	c.pending = nil
	c.mu.Unlock()
	// What the pool could not write at once goes first.
	return len(p) == 0 || l.write(p)
}

// httpLink writes through net/http's ResponseWriter (HTTP/2, or a writer
// that cannot be hijacked) and learns of the client's departure from the
// request's context.
type httpLink struct {
	h     *Hub
	w     http.ResponseWriter
	rc    *http.ResponseController
	ctx   context.Context
	wake  <-chan struct{}
	until time.Time
	timer *time.Timer
}

func (l *httpLink) arm(until time.Time) { l.until = until }

func (l *httpLink) rawConn() syscall.RawConn { return nil }

func (l *httpLink) wait() bool {
	if l.until.IsZero() {
		select {
		case <-l.wake:
			return true
		case <-l.ctx.Done():
			return false
		}
	}
	d := time.Until(l.until)
	if d <= 0 {
		return true
	}
	if l.timer == nil {
		l.timer = time.NewTimer(d)
	} else {
		l.timer.Reset(d)
	}
	defer l.timer.Stop()
	select {
	case <-l.wake:
	case <-l.timer.C:
	case <-l.ctx.Done():
		return false
	}
	return true
}

// write writes and flushes p under a write deadline. A failed or timed-out
// write means the client is gone or stuck: the connection ends now.
func (l *httpLink) write(p []byte) bool {
	err := l.rc.SetWriteDeadline(l.h.writeDeadline())
	if err != nil && !errors.Is(err, http.ErrNotSupported) {
		return false
	}
	if _, err := l.w.Write(p); err != nil {
		return false
	}
	return l.rc.Flush() == nil
}

// netLink writes to a hijacked HTTP/1.x connection. The writer waits in a
// one-byte read of the connection: it returns when the client leaves, and
// a signal (or the end of a batch window) ends it through the read
// deadline, so one goroutine both waits for events and watches the client.
type netLink struct {
	h    *Hub
	nc   net.Conn
	head []byte // the response header, written with the first events
	b    [1]byte
	junk int // bytes the client sent after its request
}

// maxJunk is how much a client may send after its request (an event stream
// expects nothing) before it is dropped: reading it byte by byte forever
// would let one client keep a core busy.
const maxJunk = 1 << 10

// aLongTimeAgo is a read deadline that ends a read at once.
var aLongTimeAgo = time.Unix(1, 0)

func (l *netLink) arm(until time.Time) { _ = l.nc.SetReadDeadline(until) }

// rawConn is nc's descriptor once the response header has gone out, when
// nc is a socket (not TLS) on a system where the pool can write to it.
func (l *netLink) rawConn() syscall.RawConn {
	if !canPool || l.head != nil {
		return nil
	}
	sc, ok := l.nc.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

func (l *netLink) wait() bool {
	for {
		n, err := l.nc.Read(l.b[:])
		switch {
		case n > 0 || err == nil:
			// A client has nothing to send on an event stream: ignore a
			// little of it, drop a client that keeps sending.
			if l.junk += n; l.junk > maxJunk {
				return false
			}
		case errors.Is(err, os.ErrDeadlineExceeded):
			return true
		default:
			return false
		}
	}
}

func (l *netLink) write(p []byte) bool {
	if l.head != nil {
		p = append(l.head, p...)
		l.head = nil
	}
	if err := l.nc.SetWriteDeadline(l.h.writeDeadline()); err != nil {
		return false
	}
	_, err := l.nc.Write(p)
	return err == nil
}
