package stream

import (
	"context"
	"errors"
	"net/http"
	"time"
	"unicode/utf8"
)

// ServeHTTP serves GET /events.
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "method not allowed: use GET", http.StatusMethodNotAllowed)
		return
	}
	q := r.URL.Query()
	entries, err := ParseTags(q["tags"])
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	cursor, hasCursor, err := cursorFrom(r, q)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}

	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	h.wg.Add(1)
	defer h.wg.Done()
	h.nextID++
	c := &conn{id: h.nextID, entries: entries, wake: make(chan struct{}, 1)}
	h.join(c, cursor, hasCursor)
	h.mu.Unlock()
	defer h.leave(c)

	hdr := w.Header()
	hdr.Set("Content-Type", "text/event-stream")
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	h.stream(w, r.Context(), c)
}

// maxWrite is how much the writer buffers before writing (a long replay is
// written in pieces, each with its own deadline).
const maxWrite = 32 << 10

// stream writes c's queue to w until the client goes, a write fails or the
// hub closes (then after writing what was queued). The headers go out with
// the first events (the join always queues at least `ready`). Everything
// queued since the last write goes out in one write and one flush.
func (h *Hub) stream(w http.ResponseWriter, ctx context.Context, c *conn) {
	rc := http.NewResponseController(w)
	var (
		batch []item
		buf   []byte
	)
	for {
		c.mu.Lock()
		batch, c.queue = c.queue, batch[:0]
		c.initial = 0
		closing := c.closing
		c.mu.Unlock()
		if len(batch) == 0 {
			if closing {
				return
			}
			select {
			case <-c.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		buf = buf[:0]
		for i := range batch {
			buf = appendFrame(buf, &batch[i])
			if len(buf) >= maxWrite || i == len(batch)-1 {
				if !h.write(w, rc, buf) {
					return
				}
				buf = buf[:0]
			}
		}
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

// write writes and flushes p under a write deadline. A failed or timed-out
// write means the client is gone or stuck: the connection ends now.
func (h *Hub) write(w http.ResponseWriter, rc *http.ResponseController, p []byte) bool {
	err := rc.SetWriteDeadline(time.Now().Add(h.opts.WriteTimeout))
	if err != nil && !errors.Is(err, http.ErrNotSupported) {
		return false
	}
	if _, err := w.Write(p); err != nil {
		return false
	}
	return rc.Flush() == nil
}

// Healthz answers 200 while the process is alive.
func Healthz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		_, _ = w.Write([]byte("ok\n"))
	})
}

// Readyz answers 200 when ready reports true (the source is streaming),
// 503 otherwise.
func Readyz(ready func() bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		if ready == nil || !ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready\n"))
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
}

// invalidateData encodes {"tags":[…],"ts":"<RFC3339Nano>"}.
func invalidateData(tags []string, ts time.Time) []byte {
	n := 40
	for _, t := range tags {
		n += len(t) + 3
	}
	return appendInvalidateData(make([]byte, 0, n), tags, ts)
}

func appendInvalidateData(b []byte, tags []string, ts time.Time) []byte {
	b = append(b, `{"tags":[`...)
	for i, t := range tags {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, t)
	}
	b = append(b, `],"ts":"`...)
	b = ts.UTC().AppendFormat(b, time.RFC3339Nano)
	return append(b, `"}`...)
}

// resetData encodes {"reason":"…"}.
func resetData(reason string) []byte {
	b := append([]byte(`{"reason":`), nil...)
	b = appendJSONString(b, reason)
	return append(b, '}')
}

// appendJSONString appends s as a JSON string: quotes, backslashes and
// control characters escaped, U+2028/U+2029 escaped for JavaScript, invalid
// UTF-8 replaced by U+FFFD; no HTML escaping.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
