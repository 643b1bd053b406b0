package stream

import (
	"bytes"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"

	"github.com/tagstream/tagstream/cdc"
)

// The pool never waits for a socket: what a full socket does not take is
// handed to the connection's own goroutine, byte for byte.
func TestPoolHandsOverWhatTheSocketDoesNotTake(t *testing.T) {
	if !canPool {
		t.Skip("no writer pool on this system")
	}
	cli, srv, raw := tcpPair(t)
	_ = srv.(*net.TCPConn).SetWriteBuffer(4096)
	h := NewHub(Options{})
	defer h.Close()
	ev := &event{pos: 7, ts: ts0, tags: []string{strings.Repeat("t", 1<<20)}}
	ev.full.ev = ev
	frame := ev.full.frame()
	c := &conn{id: 1, nc: srv, raw: raw, pooled: true}
	c.queue = []item{{kind: kindInvalidate, id: 7, p: &ev.full}}
	h.flushConn(c, 1, nil)

	if c.pooled || len(c.pending) == 0 || len(c.pending) >= len(frame) || len(c.queue) != 0 {
		t.Fatalf("after a partial write: pooled %v, %d of %d bytes pending, %d queued", c.pooled, len(c.pending), len(frame), len(c.queue))
	}
	if !bytes.Equal(c.pending, frame[len(frame)-len(c.pending):]) {
		t.Fatal("pending is not the frame's tail")
	}
	go func() { _, _ = srv.Write(c.pending) }()
	got := make([]byte, len(frame))
	if _, err := io.ReadFull(cli, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, frame) {
		t.Fatal("the client did not get the frame")
	}
	if st := h.Stats(); st.Delivered != 1 {
		t.Fatalf("delivered %d, want 1", st.Delivered)
	}
}

// A client that stops reading neither holds up the others nor the
// publisher; it gets a reset once its queue overflows.
func TestSlowClientDoesNotHoldOthers(t *testing.T) {
	h, b := setup(t, Options{QueueSize: 4})
	slowTag := "s" + strings.Repeat("x", 200)
	slow := b.dial(t, "tags="+slowTag)
	slow.expect(ready(0, false))
	fast := b.dial(t, "tags=f")
	fast.expect(ready(0, false))
	last := overflow(t, h, func(pos cdc.Position) { fast.expect(inv(pos, "f")) }, slowTag, "f")
	readToReset(t, slow, slowTag, last)
	publish(t, h, last+1, slowTag, "f")
	slow.expect(inv(last+1, slowTag))
	fast.expect(inv(last+1, "f"))
}

// A connection handed to the pool after its goroutine's last write (whose
// deadline passes later) is still written by the pool: the pool's writes
// do not wait, and no deadline stops them.
func TestPoolClearsTheWriteDeadline(t *testing.T) {
	if !canPool {
		t.Skip("no writer pool on this system")
	}
	cli, srv, raw := tcpPair(t)
	h := NewHub(Options{})
	defer h.Close()
	_ = srv.SetWriteDeadline(aLongTimeAgo) // as if it had passed
	c := &conn{id: 1, nc: srv, raw: raw}
	c.mu.Lock()
	c.enterPool()
	c.mu.Unlock()
	c.queue = []item{{kind: kindPing, id: 3}}
	h.flushConn(c, 1, nil)
	if !c.pooled || len(c.pending) != 0 {
		t.Fatalf("pooled %v, %d bytes pending", c.pooled, len(c.pending))
	}
	want := "id: 3\ndata: {}\nevent: ping\n\n"
	got := make([]byte, len(want))
	if _, err := io.ReadFull(cli, got); err != nil || string(got) != want {
		t.Fatalf("read %q %v", got, err)
	}
}

// tcpPair is a loopback TCP connection: the client's end, the server's
// end and the server end's descriptor.
func tcpPair(t *testing.T) (cli, srv net.Conn, raw syscall.RawConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cli, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	srv, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	raw, err = srv.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return cli, srv, raw
}
