package stream

import (
	"runtime"
	"sync"
	"syscall"
	"time"
)

// The writer pool: a few goroutines that write the events of every idle
// HTTP/1.x connection, so that an event costs one write(2) on its
// connection and nothing else — no goroutine wake-up, no deadline change,
// no read(2) that finds nothing, per connection per event.
//
// A connection is in one of two modes (conn.pooled, under conn.mu):
//
//   - pooled: its queue is written by its flusher (connection id modulo the
//     number of flushers, so one flusher writes a given connection and its
//     events stay in order). Its own goroutine only waits in a read, to learn
//     that the client left. The flusher's writes never block: what the
//     socket does not take at once goes to conn.pending and the connection
//     is handed to its own goroutine.
//   - own: the connection's goroutine writes (serveClient), with a write
//     deadline, batching a busy client's events: the join's replay and
//     `ready`, a client whose socket is full (slow, or a burst), the
//     writes after Close or the end of a grant, HTTP/2 and TLS connections
//     always. Once its queue is empty it hands itself back to the pool.
//
// Slow clients keep their guarantees: a full socket never blocks a flusher
// (the client's own goroutine waits for it, under the write timeout), and
// the queue bound and its reset on overflow are the same in both modes.

// maxFlushers bounds the pool: the writes are the kernel's work, and more
// goroutines than cores only add switches.
const maxFlushers = 8

// flusher is one writer of the pool.
type flusher struct {
	mu   sync.Mutex
	list []*conn // connections with something to write (conn.scheduled)
	kick chan struct{}
}

func (h *Hub) startFlushers() {
	n := min(max(runtime.GOMAXPROCS(0), 1), maxFlushers)
	h.flushers = make([]*flusher, n)
	h.flushStop = make(chan struct{})
	for i := range h.flushers {
		f := &flusher{kick: make(chan struct{}, 1)}
		h.flushers[i] = f
		h.flushWG.Add(1)
		go h.runFlusher(f)
	}
}

// stopFlushers ends the pool once every connection has gone.
func (h *Hub) stopFlushers() {
	close(h.flushStop)
	h.flushWG.Wait()
}

// enterPool hands c to the writer pool (c.mu held, c.raw set, the queue
// empty).
func (c *conn) enterPool() { c.pooled = true }

// schedule puts a pooled c on its flusher's list (c.mu held, c.scheduled
// just set).
func (h *Hub) schedule(c *conn) {
	f := h.flushers[c.id%uint64(len(h.flushers))]
	f.mu.Lock()
	f.list = append(f.list, c)
	f.mu.Unlock()
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

func (h *Hub) runFlusher(f *flusher) {
	defer h.flushWG.Done()
	var (
		work []*conn
		buf  []byte
	)
	for {
		select {
		case <-f.kick:
		case <-h.flushStop:
			return
		}
		for {
			f.mu.Lock()
			work, f.list = f.list, work[:0]
			f.mu.Unlock()
			if len(work) == 0 {
				break
			}
			now := time.Now().UnixNano()
			for i, c := range work {
				buf = h.flushConn(c, now, buf[:0])
				work[i] = nil
			}
		}
		if cap(buf) > 64<<10 {
			buf = nil
		}
		if cap(work) > 1024 {
			work = nil
		}
	}
}

// flushConn writes what c has queued without blocking, and hands c to its
// own goroutine when the socket did not take everything, the write failed
// (the goroutine then ends the connection), or the hub is closing c. buf
// is scratch space, returned for reuse.
//
// A connection the pool wrote to less than batchWindow ago is being sent
// events at a high rate: it is handed to its goroutine, which gathers them
// into batches (one write per batch window instead of one per event).
func (h *Hub) flushConn(c *conn, now int64, buf []byte) []byte {
	c.mu.Lock()
	c.scheduled = false
	if !c.pooled {
		c.mu.Unlock()
		return buf
	}
	if c.flushedAt != 0 && now-c.flushedAt < int64(batchWindow) && !c.closing {
		c.pooled = false
		c.wakeAt = 0
		c.mu.Unlock()
		c.signal()
		return buf
	}
	n := len(c.queue)
	var p []byte
	if n == 1 && c.queue[0].kind == kindInvalidate {
		p = c.queue[0].p.frame() // shared by every connection it goes to
	} else {
		for i := range c.queue {
			buf = appendFrame(buf, &c.queue[i])
		}
		p = buf
	}
	clear(c.queue)
	if cap(c.queue) > 16 {
		c.queue = nil // give a burst's memory back
	}
	c.queue = c.queue[:0]
	c.initial = 0
	if len(p) > 0 {
		c.flushedAt = now
	}
	closing := c.closing
	raw := c.raw
	c.mu.Unlock()

	var rest []byte
	if len(p) > 0 {
		w, err := writeNow(raw, p)
		h.delivered.Add(uint64(n))
		if err != nil || w < len(p) {
			rest = p[w:]
		}
	}
	if rest == nil && !closing {
		return buf
	}
	c.mu.Lock()
	c.pooled = false
	c.flushedAt = 0
	c.pending = append(c.pending, rest...)
	c.wakeAt = 0
	c.mu.Unlock()
	c.signal()
	return buf
}

// writeNow writes as much of p as the socket takes at once. It writes
// through Control, not RawConn.Write: no write lock, no deadline check
// (the pool's writes never wait, and only one writer, the pool or c's
// goroutine, writes to a connection at a time); Control keeps the
// descriptor open while it runs.
func writeNow(raw syscall.RawConn, p []byte) (n int, err error) {
	var werr error
	err = raw.Control(func(fd uintptr) {
		n, werr = writeFD(fd, p)
	})
	if err == nil {
		err = werr
	}
	return n, err
}
