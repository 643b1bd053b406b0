package stream

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestHTTP2 serves /events over HTTP/2, where the connection cannot be taken
// over from net/http: the same events, ids and headers, a live event after
// `ready`, and Close ending the stream.
func TestHTTP2(t *testing.T) {
	h := NewHub(Options{})
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	t.Cleanup(h.Close)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/events?tags=a,b:*", nil)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusOK ||
		resp.Header.Get("Content-Type") != "text/event-stream" || resp.Header.Get("Cache-Control") != "no-cache" ||
		resp.Header.Get("X-Accel-Buffering") != "no" {
		t.Fatalf("%s %s %v", resp.Proto, resp.Status, resp.Header)
	}
	rd := bufio.NewReader(resp.Body)
	frame := func() string {
		t.Helper()
		var lines []string
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				t.Fatalf("after %q: %v", lines, err)
			}
			if line == "\n" {
				return strings.Join(lines, "")
			}
			lines = append(lines, line)
		}
	}
	if got, want := frame(), "id: 0\ndata: {\"resumed\":false}\nevent: ready\n"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	publish(t, h, 5, "b:1", "c")
	if got, want := frame(), "id: 5\ndata: {\"tags\":[\"b:1\"],\"ts\":\""+tsJSON+"\"}\nevent: invalidate\n"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	h.Close()
	// A last ping carries the head, then the stream ends.
	if got, want := frame(), "id: 5\ndata: {}\nevent: ping\n"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if line, err := rd.ReadString('\n'); err == nil {
		t.Fatalf("after Close: %q", line)
	}
}
