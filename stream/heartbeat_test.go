package stream

import (
	"context"
	"net"
	"net/http"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// pipeListener serves connections made with net.Pipe, so that an HTTP server
// runs inside a synctest bubble (real sockets would not let time advance).
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error { l.once.Do(func() { close(l.done) }); return nil }

func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

func (l *pipeListener) dial() net.Conn {
	client, server := net.Pipe()
	l.conns <- server
	return client
}

// servePipe serves a new hub over net.Pipe connections inside a synctest
// bubble; stop closes the hub, then the server.
func servePipe(opts Options) (*Hub, *pipeListener, func()) {
	h := NewHub(opts)
	ln := newPipeListener()
	srv := &http.Server{Handler: h}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ln) }()
	return h, ln, func() {
		h.Close()
		_ = srv.Shutdown(context.Background())
		<-served
	}
}

func TestHeartbeat(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// net.Pipe has no buffer: a ping waits in the writer until the
		// client reads it, so writes must not time out in this test.
		h, ln, stop := servePipe(Options{WriteTimeout: time.Hour})
		defer stop()

		conn := ln.dial()
		defer conn.Close()
		c := newClient(t, conn, "tags=a")
		c.wait = time.Hour
		start := time.Now()
		c.expect(ready(0, false))
		c.expect(ping(0))
		if d := time.Since(start); d <= 0 || d > DefaultHeartbeat {
			t.Fatalf("first ping after %v, want within one period", d)
		}

		// The head moves without anything matching: the ping carries it.
		publish(t, h, 7, "b")
		publish(t, h, 9, "b")
		c.expect(ping(9))

		// A client that resumed ahead of the head never sees a lower id.
		h.SetEnd(20)
		conn2 := ln.dial()
		defer conn2.Close()
		c2 := newClient(t, conn2, "tags=a", "Last-Event-ID: 15")
		c2.wait = time.Hour
		c2.expect(ready(15, true))
		publish(t, h, 16, "a")
		c.expect(inv(16, "a"))
		c2.expect(inv(16, "a"))
		publish(t, h, 17, "b")
		c.expect(ping(17))
		c2.expect(ping(17))

		// Exactly one ping per period, each connection on its own slice
		// of the period so that pings to many clients are spread out.
		c.expect(ping(17))
		start = time.Now()
		for range 3 {
			c.expect(ping(17))
		}
		if d := time.Since(start); d != 3*DefaultHeartbeat {
			t.Fatalf("3 pings in %v", d)
		}
	})
}

// TestPingsSpreadOverThePeriod: connections in different slices are pinged
// at different instants, each once per period.
func TestPingsSpreadOverThePeriod(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, ln, stop := servePipe(Options{Heartbeat: 16 * time.Second, WriteTimeout: time.Hour})
		defer stop()
		start := time.Now()
		var clients []*client
		for range 3 { // ids 1, 2, 3: slices 1, 2, 3
			conn := ln.dial()
			defer conn.Close()
			c := newClient(t, conn, "tags=a")
			c.wait = time.Hour
			c.expect(ready(0, false))
			clients = append(clients, c)
		}
		for i, c := range clients {
			c.expect(ping(0))
			if got, want := time.Since(start), time.Duration(i+1)*time.Second; got != want {
				t.Errorf("client %d: first ping at %v, want %v", i+1, got, want)
			}
		}
		for i, c := range clients {
			c.expect(ping(0))
			if got, want := time.Since(start), time.Duration(i+17)*time.Second; got != want {
				t.Errorf("client %d: second ping at %v, want %v", i+1, got, want)
			}
		}
	})
}

func TestHeartbeatBeforeAnyPublish(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, ln, stop := servePipe(Options{Heartbeat: time.Second})
		defer stop()
		h.SetFloor(40) // a restart: the source resumed from 40
		h.SetEnd(45)
		conn := ln.dial()
		defer conn.Close()
		c := newClient(t, conn, "tags=a", "Last-Event-ID: 43")
		c.expect(ready(43, true))
		time.Sleep(time.Second)
		c.expect(ping(43))
		conn2 := ln.dial()
		defer conn2.Close()
		c2 := newClient(t, conn2, "tags=a")
		c2.expect(ready(40, false))
		time.Sleep(time.Second)
		c2.expect(ping(40))
		c.expect(ping(43))
	})
}
