package stream

import (
	"bytes"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/tagstream/tagstream/cdc"
)

// ServeHTTP serves GET /events.
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "method not allowed: use GET", http.StatusMethodNotAllowed)
		return
	}
	req, ok := h.check(w, r)
	if !ok {
		return
	}
	var ip netip.Addr // the client's address, with a per-address limit
	if h.opts.MaxConnectionsPerIP > 0 {
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			ip = ap.Addr().Unmap()
		}
	}
	held, ok := h.waitReady(w, r, ip)
	if !ok {
		return
	}

	// HTTP/1.x: take the connection over from net/http, so that an idle
	// client costs one goroutine and no net/http buffers (their reader
	// and writer are 8 KiB; its handler and background reader, two
	// stacks). HTTP/2, or a writer that cannot be hijacked: stay inside
	// net/http.
	var nc net.Conn
	if r.ProtoMajor == 1 {
		if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
			nc = c
		}
	}
	c := &conn{entries: req.entries, nc: nc, ip: ip}
	if !req.expires.IsZero() {
		c.expires = max(req.expires.UnixNano(), 1)
	}
	if nc == nil {
		c.wake = make(chan struct{}, 1)
	}
	if reason := h.admit(c, req, held); reason != "" {
		h.refuse(w, nc, reason)
		return
	}

	hdr := w.Header()
	hdr.Set("Content-Type", "text/event-stream")
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("X-Accel-Buffering", "no")
	if nc == nil {
		defer h.wg.Done()
		defer h.leave(c)
		w.WriteHeader(http.StatusOK)
		h.serveClient(&httpLink{h: h, w: w, rc: http.NewResponseController(w), ctx: r.Context(), wake: c.wake}, c)
		return
	}
	// The body is delimited by the connection's end (no chunked
	// encoding), so the response says the connection closes.
	hdr.Set("Connection", "close")
	hdr.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	var head bytes.Buffer
	head.WriteString("HTTP/1.1 200 OK\r\n")
	_ = hdr.Write(&head)
	head.WriteString("\r\n")
	// The handler returns and net/http lets go of the connection's state;
	// the hub's own goroutine (waited for by Close) writes the stream.
	go func() {
		defer h.wg.Done()
		defer nc.Close()
		defer h.leave(c)
		h.serveClient(&netLink{h: h, nc: nc, head: head.Bytes()}, c)
	}()
}

// request is what a valid, authorized /events request asks for.
type request struct {
	entries   []string // sorted, de-duplicated
	cursor    cdc.Position
	hasCursor bool
	// badCursor is why the cursor could not be parsed ("" when it could).
	// Such a cursor is not a 400: a browser's EventSource stops
	// reconnecting for good on an error status. Continuity cannot be
	// proven from it, so the client gets `reset`, then `ready`
	// resumed:false.
	badCursor string
	expires   time.Time // when the grant ends (zero: never)
}

// check parses and authorizes r. When it returns false it has answered
// (400, 401, 403), before anything about the stream was written.
func (h *Hub) check(w http.ResponseWriter, r *http.Request) (req request, ok bool) {
	q := r.URL.Query()
	entries, err := splitTags(q["tags"])
	if err != nil {
		h.access.badRequest.Add(1)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return req, false
	}
	if h.opts.Authorize != nil {
		req.expires, err = h.opts.Authorize(r, entries)
		switch {
		case err == nil:
		case errors.Is(err, ErrUnauthorized):
			h.access.unauthorized.Add(1)
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return req, false
		case errors.Is(err, ErrForbidden):
			h.access.forbidden.Add(1)
			http.Error(w, err.Error(), http.StatusForbidden)
			return req, false
		default:
			h.log.Error("stream: authorize", "err", err)
			http.Error(w, "authorization failed", http.StatusInternalServerError)
			return req, false
		}
	}
	req.entries = sortUnique(entries)
	if req.cursor, req.hasCursor, err = cursorFrom(r, q); err != nil {
		req.badCursor = err.Error()
	}
	return req, true
}

// admit registers c unless the hub is closed or a connection limit is
// reached; then it returns the reason for a 503. held: c's request was
// counted while it waited (waitReady); its place passes to c.
func (h *Hub) admit(c *conn, req request, held bool) (refused string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if held {
		h.release(c.ip)
	}
	if refused := h.limit(c.ip); refused != "" {
		return refused
	}
	if c.ip.IsValid() {
		h.perIP[c.ip]++
	}
	h.wg.Add(1)
	h.nextID++
	c.id = h.nextID
	h.join(c, req.cursor, req.hasCursor)
	if req.badCursor != "" {
		// join queued `ready` resumed:false as for a connection without a
		// cursor; the unparseable cursor puts a `reset` before it. Hub.mu
		// is held, so no publish has reached c's queue yet.
		c.queue = slices.Insert(c.queue, 0, item{kind: kindReset, id: c.lastID, data: resetData(req.badCursor)})
		c.initial = len(c.queue)
		h.resetCount.Add(1)
	}
	return ""
}

// waitReady holds a valid request until the hub knows where the source
// resumed (Options.Ready). A request waiting counts against the connection
// limits as one admitted would (held: admit takes its place over): a
// daemon that takes long to start gathers no unbounded backlog. ok is
// false when it has answered (503: over a limit, or the hub closing) or
// the client has gone.
func (h *Hub) waitReady(w http.ResponseWriter, r *http.Request, ip netip.Addr) (held, ok bool) {
	if h.opts.Ready == nil {
		return false, true
	}
	ready := h.opts.Ready()
	select {
	case <-ready:
		return false, true
	default:
	}
	h.mu.Lock()
	reason := h.limit(ip)
	if reason == "" {
		h.waiting++
		if ip.IsValid() {
			h.perIP[ip]++
		}
	}
	h.mu.Unlock()
	if reason != "" {
		h.refuse(w, nil, reason)
		return false, false
	}
	select {
	case <-ready:
		return true, true
	case <-h.stop:
		h.mu.Lock()
		h.release(ip)
		h.mu.Unlock()
		h.refuse(w, nil, "shutting down")
		return false, false
	case <-r.Context().Done():
		h.mu.Lock()
		h.release(ip)
		h.mu.Unlock()
		return false, false
	}
}

// release lets go of the place a waiting request from ip held (h.mu held).
func (h *Hub) release(ip netip.Addr) {
	h.waiting--
	if ip.IsValid() {
		if h.perIP[ip]--; h.perIP[ip] <= 0 {
			delete(h.perIP, ip)
		}
	}
}

// limit says why one more connection from ip is refused ("" when it is
// not), counting it (h.mu held).
func (h *Hub) limit(ip netip.Addr) string {
	switch {
	case h.closed:
		return "shutting down"
	case h.opts.MaxConnections > 0 && len(h.conns)+h.waiting >= h.opts.MaxConnections:
		h.access.maxConns.Add(1)
		return "too many connections: retry later"
	case ip.IsValid() && h.perIP[ip] >= h.opts.MaxConnectionsPerIP:
		h.access.maxConnsPerIP.Add(1)
		return "too many connections from your address: retry later"
	}
	return ""
}

// retryAfter is the Retry-After (seconds) of a 503.
const retryAfter = "5"

// refuse answers 503 with reason: through net/http, or on the connection
// taken over from it, with the headers set so far (CORS) either way.
func (h *Hub) refuse(w http.ResponseWriter, nc net.Conn, reason string) {
	hdr := w.Header()
	hdr.Set("Retry-After", retryAfter)
	if nc == nil {
		http.Error(w, reason, http.StatusServiceUnavailable)
		return
	}
	body := reason + "\n"
	hdr.Set("Content-Type", "text/plain; charset=utf-8")
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	hdr.Set("Connection", "close")
	var b bytes.Buffer
	b.WriteString("HTTP/1.1 503 Service Unavailable\r\n")
	_ = hdr.Write(&b)
	b.WriteString("\r\n" + body)
	_ = nc.SetWriteDeadline(time.Now().Add(h.opts.WriteTimeout))
	_, _ = nc.Write(b.Bytes())
	_ = nc.Close()
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

// appendInvalidateData appends {"tags":[…],"ts":"<RFC3339Nano>"} to b.
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
