package stream

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
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
	if _, ok := w.(http.Flusher); !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
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
	c := &conn{
		id:      h.nextID,
		entries: entries,
		wake:    make(chan struct{}, 1),
	}
	c.streamID = strconv.FormatUint(c.id, 10)
	c.ctx, c.cancel = context.WithCancel(r.Context())
	h.join(c, cursor, hasCursor)
	h.mu.Unlock()
	defer h.leave(c)
	defer c.cancel()

	// The stream must exist before the handler runs: a Publish to a stream
	// that does not exist yet is silently dropped.
	h.srv.CreateStream(c.streamID)
	dw := &deadlineWriter{
		ResponseWriter: w,
		rc:             http.NewResponseController(w),
		timeout:        h.opts.WriteTimeout,
		registered:     make(chan struct{}),
		hub:            h,
		conn:           c,
	}
	done := make(chan struct{})
	go h.pump(c, dw.registered, done)

	// r3labs gets only what it needs: the connection's context (cancelling
	// it ends the connection), its stream's id and no Last-Event-ID.
	r2 := r.WithContext(c.ctx)
	r2.URL = &url.URL{Path: r.URL.Path, RawQuery: "stream=" + c.streamID}
	r2.Header = nil
	h.srv.ServeHTTP(dw, r2)
	c.cancel()
	<-done
}

// deadlineWriter is the ResponseWriter r3labs writes to: it arms a write
// deadline before each event's first write, and its first Flush (r3labs
// flushes the headers right after registering the subscriber) starts the
// pump.
type deadlineWriter struct {
	http.ResponseWriter
	rc         *http.ResponseController
	timeout    time.Duration
	armed      bool
	flushes    int
	registered chan struct{}
	hub        *Hub
	conn       *conn
}

func (d *deadlineWriter) arm() {
	if d.armed {
		return
	}
	d.armed = true
	err := d.rc.SetWriteDeadline(time.Now().Add(d.timeout))
	if err != nil && !errors.Is(err, http.ErrNotSupported) {
		d.conn.cancel()
	}
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	d.arm()
	return d.ResponseWriter.Write(p)
}

func (d *deadlineWriter) Flush() {
	d.arm()
	err := d.rc.Flush()
	d.armed = false
	if err != nil {
		// A failed or timed-out write: the client is gone or stuck. End
		// the connection now rather than at the next write.
		d.conn.cancel()
	}
	d.flushes++
	if d.flushes == 1 {
		close(d.registered)
		return
	}
	if err == nil {
		d.hub.delivered.Add(1)
	}
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
	b := make([]byte, 0, n)
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
