package stream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// refused reads a refusal and checks its status, plain-text body (so no
// event was written) and the given headers ("" : absent).
func refused(t *testing.T, resp *http.Response, status int, body string, headers map[string]string) {
	t.Helper()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d (%q)", resp.StatusCode, status, got)
	}
	if string(got) != body+"\n" {
		t.Fatalf("body %q, want %q", got, body+"\n")
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	for k, v := range headers {
		if got := strings.Join(resp.Header.Values(k), ", "); got != v {
			t.Errorf("%s: %q, want %q", k, got, v)
		}
	}
}

// testAuthorize grants by the X-Grant request header: "none" 401, "deny"
// 403 naming the first entry, "boom" an unexpected error, anything else a
// grant without expiry. It records the entries it was given.
func testAuthorize(seen *[]string) func(*http.Request, []string) (time.Time, error) {
	return func(r *http.Request, entries []string) (time.Time, error) {
		*seen = slices.Clone(entries)
		switch r.Header.Get("X-Grant") {
		case "none":
			return time.Time{}, &textErr{ErrUnauthorized, "invalid token: expired"}
		case "deny":
			return time.Time{}, &textErr{ErrForbidden, fmt.Sprintf("tag %q is not allowed by the token", entries[0])}
		case "boom":
			return time.Time{}, errors.New("key store down")
		}
		return time.Time{}, nil
	}
}

type textErr struct {
	kind error
	msg  string
}

func (e *textErr) Error() string { return e.msg }
func (e *textErr) Unwrap() error { return e.kind }

func TestAuthorizeRefusals(t *testing.T) {
	var seen []string
	h, b := setup(t, Options{Authorize: testAuthorize(&seen)})
	publish(t, h, 1, "user:7:todos")

	c := b.dialRaw(t, "tags=user:7:todos,user:*,user:7:todos", "X-Grant: none")
	refused(t, c.resp, http.StatusUnauthorized, "invalid token: expired",
		map[string]string{"WWW-Authenticate": `Bearer error="invalid_token"`, "X-Content-Type-Options": "nosniff"})
	// The hook gets the entries parsed, in the request's order.
	if want := []string{"user:7:todos", "user:*", "user:7:todos"}; !slices.Equal(seen, want) {
		t.Fatalf("Authorize got %q, want %q", seen, want)
	}

	c = b.dialRaw(t, "tags=user:*,user:7:todos", "X-Grant: deny")
	refused(t, c.resp, http.StatusForbidden, `tag "user:*" is not allowed by the token`,
		map[string]string{"WWW-Authenticate": ""})

	c = b.dialRaw(t, "tags=a", "X-Grant: boom")
	refused(t, c.resp, http.StatusInternalServerError, "authorization failed", nil)

	// Invalid requests are 400 before the hook runs.
	seen = nil
	c = b.dialRaw(t, "tags=a,,b", "X-Grant: none")
	refused(t, c.resp, http.StatusBadRequest, "invalid tag 2: empty entry", nil)
	if seen != nil {
		t.Fatalf("Authorize called for a bad request")
	}

	// Granted: the stream as usual, with the entries sorted.
	b.dial(t, "tags=user:7:todos,a", "Last-Event-ID: 0").expect(inv(1, "user:7:todos"), ready(1, true))

	want := AccessStats{BadRequest: 1, Unauthorized: 1, Forbidden: 1}
	if st := h.Stats(); st.Access != want || st.Subscribers != 1 {
		t.Fatalf("stats %+v, want %+v and 1 subscriber", st, want)
	}
}

// TestGrantExpiryClosesConnection: a connection ends within one heartbeat
// slice after its grant ends, after what was queued; one without an end
// stays.
func TestGrantExpiryClosesConnection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		authorize := func(r *http.Request, _ []string) (time.Time, error) {
			if r.Header.Get("X-Forever") != "" {
				return time.Time{}, nil
			}
			return start.Add(time.Minute), nil
		}
		h, ln, stop := servePipe(Options{Authorize: authorize, Heartbeat: 16 * time.Second, WriteTimeout: time.Hour})
		defer stop()
		conn := ln.dial()
		defer conn.Close()
		c := newClient(t, conn, "tags=a")
		c.wait = time.Hour
		c.expect(ready(0, false))
		conn2 := ln.dial()
		defer conn2.Close()
		forever := newClient(t, conn2, "tags=a", "X-Forever: 1")
		forever.wait = time.Hour
		forever.expect(ready(0, false))

		publish(t, h, 5, "a")
		c.expect(inv(5, "a"))
		forever.expect(inv(5, "a"))
		for range 4 {
			c.expect(ping(5)) // at 1 s, 17 s, 33 s, 49 s: its slice of each period
		}
		c.eof()
		if d := time.Since(start); d < time.Minute || d > time.Minute+time.Second {
			t.Fatalf("closed after %v, want within a second after 1m", d)
		}
		synctest.Wait()
		if st := h.Stats(); st.Access.Expired != 1 || st.Subscribers != 1 {
			t.Fatalf("stats %+v", st)
		}
		publish(t, h, 6, "a")
		for {
			if e := forever.next(); e.Event != "ping" {
				if e != inv(6, "a") {
					t.Fatalf("got %v", e)
				}
				break
			}
		}
	})
}

func TestMaxConnections(t *testing.T) {
	h, b := setup(t, Options{MaxConnections: 2})
	left := make(chan struct{}, 10)
	h.testHookLeave = func() { left <- struct{}{} }
	c1 := b.dial(t, "tags=a")
	b.dial(t, "tags=b").expect(ready(0, false))
	c1.expect(ready(0, false))
	resp := b.dialRaw(t, "tags=a").resp
	refused(t, resp, http.StatusServiceUnavailable, "too many connections: retry later", map[string]string{"Retry-After": "5"})
	if !resp.Close {
		t.Error("503 without Connection: close")
	}
	c1.conn.Close()
	<-left
	c3 := b.dial(t, "tags=a")
	c3.expect(ready(0, false))
	publish(t, h, 1, "a")
	c3.expect(inv(1, "a"))
	if st := h.Stats(); st.Access.MaxConnections != 1 || st.Subscribers != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestMaxConnectionsPerIP(t *testing.T) {
	h, b := setup(t, Options{MaxConnectionsPerIP: 1})
	left := make(chan struct{}, 10)
	h.testHookLeave = func() { left <- struct{}{} }
	c1 := newClient(t, b.dialFrom(t, "127.0.0.1"), "tags=a")
	c1.expect(ready(0, false))
	refused(t, newClient(t, b.dialFrom(t, "127.0.0.1"), "tags=a").resp, http.StatusServiceUnavailable,
		"too many connections from your address: retry later", map[string]string{"Retry-After": "5"})
	// Another address has its own allowance.
	newClient(t, b.dialFrom(t, "127.0.0.2"), "tags=a").expect(ready(0, false))
	c1.conn.Close()
	<-left
	newClient(t, b.dialFrom(t, "127.0.0.1"), "tags=a").expect(ready(0, false))
	h.mu.Lock()
	if len(h.perIP) != 2 {
		t.Errorf("perIP %v", h.perIP)
	}
	h.mu.Unlock()
	if st := h.Stats(); st.Access.MaxConnectionsPerIP != 1 || st.Access.MaxConnections != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestLimitOverHTTP2: the refusal inside net/http (no hijacking).
func TestLimitOverHTTP2(t *testing.T) {
	h := NewHub(Options{MaxConnections: 1})
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	t.Cleanup(h.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	get := func() *http.Response {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/events?tags=a", nil)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		if resp.ProtoMajor != 2 {
			t.Fatalf("%s", resp.Proto)
		}
		return resp
	}
	if resp := get(); resp.StatusCode != http.StatusOK {
		t.Fatalf("first: %s", resp.Status)
	}
	refused(t, get(), http.StatusServiceUnavailable, "too many connections: retry later", map[string]string{"Retry-After": "5"})
}

func TestCORS(t *testing.T) {
	var seen []string
	h := NewHub(Options{Authorize: testAuthorize(&seen), MaxConnections: 1})
	cors, err := NewCORS([]string{"https://app.example.com", "HTTP://LOCALHOST:3000", "https://b.example.com:443"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(cors.Handler(h))
	t.Cleanup(srv.Close)
	t.Cleanup(h.Close)
	b := &bundle{srv: srv, addr: srv.Listener.Addr().String()}

	allowed := map[string]string{
		"Access-Control-Allow-Origin":      "https://app.example.com",
		"Access-Control-Allow-Credentials": "true",
		"Vary":                             "Origin",
		"Access-Control-Expose-Headers":    "Retry-After, WWW-Authenticate",
	}
	none := map[string]string{"Access-Control-Allow-Origin": "", "Access-Control-Allow-Credentials": "", "Vary": "",
		"Access-Control-Expose-Headers": "", "Access-Control-Allow-Headers": ""}
	check := func(resp *http.Response, want map[string]string) {
		t.Helper()
		for k, v := range want {
			if got := strings.Join(resp.Header.Values(k), ", "); got != v {
				t.Errorf("%s: %q, want %q", k, got, v)
			}
		}
	}

	// Errors carry the CORS headers, so that the page can read them.
	refused(t, b.dialRaw(t, "tags=a", "Origin: https://app.example.com", "X-Grant: none").resp, 401, "invalid token: expired", allowed)
	refused(t, b.dialRaw(t, "tags=a", "Origin: https://app.example.com", "X-Grant: deny").resp, 403, `tag "a" is not allowed by the token`, allowed)
	refused(t, b.dialRaw(t, "tags=", "Origin: https://app.example.com").resp, 400, "invalid tag 1: empty entry", allowed)
	refused(t, b.dialRaw(t, "tags=a", "Origin: https://evil.example.com", "X-Grant: none").resp, 401, "invalid token: expired", none)

	c := b.dial(t, "tags=a", "Origin: https://app.example.com")
	check(c.resp, allowed)
	c.expect(ready(0, false))
	// The 503 written on a taken-over connection carries them too.
	refused(t, b.dialRaw(t, "tags=a", "Origin: https://app.example.com").resp, 503, "too many connections: retry later", allowed)
	c.conn.Close()

	// Configured in upper case and with the default port: matched as a
	// browser sends it.
	for _, o := range []string{"http://localhost:3000", "https://b.example.com"} {
		req, _ := http.NewRequest(http.MethodOptions, srv.URL+"/events", nil)
		req.Header.Set("Origin", o)
		req.Header.Set("Access-Control-Request-Method", "GET")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.Header.Get("Access-Control-Allow-Origin") != o {
			t.Errorf("%s: not allowed: %v", o, resp.Header)
		}
	}

	preflight := func(origin string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodOptions, srv.URL+"/events?tags=a", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "GET")
		req.Header.Set("Access-Control-Request-Headers", "authorization,last-event-id")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent || len(body) != 0 {
			t.Fatalf("preflight: %s %q", resp.Status, body)
		}
		return resp
	}
	check(preflight("https://app.example.com"), map[string]string{
		"Access-Control-Allow-Origin":      "https://app.example.com",
		"Access-Control-Allow-Credentials": "true",
		"Vary":                             "Origin",
		"Access-Control-Allow-Methods":     "GET",
		"Access-Control-Allow-Headers":     "Authorization, Last-Event-ID, Cache-Control",
		"Access-Control-Max-Age":           "600",
	})
	check(preflight("https://evil.example.com"), map[string]string{
		"Access-Control-Allow-Origin": "", "Access-Control-Allow-Methods": "", "Access-Control-Allow-Headers": "", "Vary": "",
	})
}

func TestCORSAnyOrigin(t *testing.T) {
	h := NewHub(Options{})
	cors, err := NewCORS([]string{"*"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(cors.Handler(h))
	t.Cleanup(srv.Close)
	t.Cleanup(h.Close)
	b := &bundle{srv: srv, addr: srv.Listener.Addr().String()}
	c := b.dial(t, "tags=a", "Origin: https://anyone.example")
	c.expect(ready(0, false))
	if got := c.resp.Header.Get("Access-Control-Allow-Origin"); got != "*" {
		t.Errorf("Allow-Origin %q", got)
	}
	if got := c.resp.Header.Values("Access-Control-Allow-Credentials"); got != nil {
		t.Errorf("credentials with *: %q", got)
	}
	if got := c.resp.Header.Values("Vary"); got != nil {
		t.Errorf("Vary with *: %q", got)
	}
	// No Origin (not a browser's cross-origin request): no CORS headers.
	c2 := b.dial(t, "tags=a")
	if got := c2.resp.Header.Get("Access-Control-Allow-Origin"); got != "" {
		t.Errorf("without Origin: %q", got)
	}
}

func TestNewCORSErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"https://app.example.com/", `origin "https://app.example.com/" has more than scheme://host[:port] (an origin has no path, not even a trailing /)`},
		{"app.example.com", `origin "app.example.com": want scheme://host[:port], e.g. https://app.example.com`},
		{"*,https://a.example", `"*" must stand alone`},
	} {
		_, err := NewCORS(strings.Split(tc.in, ","))
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q: %v, want %s", tc.in, err, tc.want)
		}
	}
}

// TestRefusedBeforeReady: before the hub knows where the source resumed, a
// valid request waits (Options.Ready), but a bad or unauthorized one is
// answered at once instead of being held.
func TestRefusedBeforeReady(t *testing.T) {
	var seen []string
	gate := make(chan struct{})
	_, b := setup(t, Options{Authorize: testAuthorize(&seen), Ready: func() <-chan struct{} { return gate }})
	refused(t, b.dialRaw(t, "tags=a", "X-Grant: none").resp, http.StatusUnauthorized, "invalid token: expired", nil)
	refused(t, b.dialRaw(t, "tags=a,,b").resp, http.StatusBadRequest, "invalid tag 2: empty entry", nil)
	valid := sendPending(t, b.dialFrom(t, "127.0.0.1"), "tags=a")
	time.Sleep(200 * time.Millisecond)
	if valid.answeredYet() {
		t.Fatal("a valid request was answered before the hub was ready")
	}
	close(gate)
	valid.answered(t).expect(ready(0, false))
}

// TestLimitsCountWaiting: requests waiting for Options.Ready count against
// MaxConnections and MaxConnectionsPerIP as admitted ones do (a daemon slow
// to start gathers no unbounded backlog); one that gives up frees its
// place, and the waiting ones are admitted once the hub is ready.
func TestLimitsCountWaiting(t *testing.T) {
	gate := make(chan struct{})
	h, b := setup(t, Options{MaxConnections: 3, MaxConnectionsPerIP: 2, Ready: func() <-chan struct{} { return gate }})
	waiting := func(want int) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			h.mu.Lock()
			n := h.waiting
			h.mu.Unlock()
			if n == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d requests waiting, want %d", n, want)
			}
		}
	}
	wait := func(ip string) pending { return sendPending(t, b.dialFrom(t, ip), "tags=a") }
	gaveUp := b.dialFrom(t, "127.0.0.1")
	if _, err := gaveUp.Write([]byte("GET /events?tags=a HTTP/1.1\r\nHost: tagstream\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	waiting(1)
	second := wait("127.0.0.1")
	waiting(2)
	refused(t, newClient(t, b.dialFrom(t, "127.0.0.1"), "tags=a").resp, http.StatusServiceUnavailable,
		"too many connections from your address: retry later", map[string]string{"Retry-After": "5"})
	third := wait("127.0.0.2")
	waiting(3)
	refused(t, newClient(t, b.dialFrom(t, "127.0.0.3"), "tags=a").resp, http.StatusServiceUnavailable,
		"too many connections: retry later", map[string]string{"Retry-After": "5"})

	// A client that gives up while waiting frees its place, in all and
	// for its address.
	gaveUp.Close()
	waiting(2)
	fourth := wait("127.0.0.1")
	waiting(3)
	if second.answeredYet() {
		t.Fatal("answered before the hub was ready")
	}
	close(gate)
	var clients []*client
	for _, p := range []pending{second, third, fourth} {
		c := p.answered(t)
		c.expect(ready(0, false))
		clients = append(clients, c)
	}
	publish(t, h, 1, "a")
	for _, c := range clients {
		c.expect(inv(1, "a"))
	}
	h.mu.Lock()
	if h.waiting != 0 || h.perIP[netip.MustParseAddr("127.0.0.1")] != 2 || h.perIP[netip.MustParseAddr("127.0.0.2")] != 1 || len(h.perIP) != 2 {
		t.Errorf("waiting %d, perIP %v", h.waiting, h.perIP)
	}
	h.mu.Unlock()
	if st := h.Stats(); st.Access.MaxConnections != 1 || st.Access.MaxConnectionsPerIP != 1 || st.Subscribers != 3 {
		t.Fatalf("stats %+v", st)
	}
}

// TestWaitingRefusedAtClose: a request waiting for Options.Ready when the
// hub closes is answered 503 "shutting down" at once (a standby that never
// became active would otherwise hold it, and the server's shutdown, until
// the client gave up).
func TestWaitingRefusedAtClose(t *testing.T) {
	h, b := setup(t, Options{MaxConnections: 5, MaxConnectionsPerIP: 5, Ready: func() <-chan struct{} { return nil }})
	waiting := sendPending(t, b.dialFrom(t, "127.0.0.1"), "tags=a")
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		h.mu.Lock()
		n := h.waiting
		h.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the request is not waiting")
		}
	}
	h.Close()
	refused(t, waiting.answered(t).resp, http.StatusServiceUnavailable, "shutting down", map[string]string{"Retry-After": "5"})
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.waiting != 0 || len(h.perIP) != 0 {
		t.Fatalf("after close: waiting %d, perIP %v", h.waiting, h.perIP)
	}
}
