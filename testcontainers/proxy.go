package testcontainers

import (
	"net"
	"sync"
	"testing"
)

// Direction selects the half of a proxied connection that Stall silences.
type Direction uint8

const (
	// ToServer is what the client sends (queries, status updates).
	ToServer Direction = 1 << iota
	// ToClient is what the server sends (rows, keepalives, heartbeats).
	ToClient
)

func (d Direction) String() string {
	switch d {
	case ToServer:
		return "to-server"
	case ToClient:
		return "to-client"
	case ToServer | ToClient:
		return "both"
	}
	return "none"
}

// Proxy forwards TCP connections from a loopback port to a database, so
// that tests can break the network path between a reader and its server:
// Cut closes every open connection (a reset), Stall silences them in one
// direction (a half-open path: nothing arrives, nothing fails). Both act on
// the connections open at that moment; later connections work, so a reader
// that notices reconnects through the proxy.
type Proxy struct {
	ln     net.Listener
	target string

	mu       sync.Mutex
	conns    map[*proxyConn]struct{}
	accepted int
	changed  chan struct{} // closed and replaced whenever accepted changes
	closed   bool
	wg       sync.WaitGroup
}

type proxyConn struct {
	client, server net.Conn
	done           chan struct{} // closed when the pair is closed
	once           sync.Once

	mu      sync.Mutex
	stalled Direction
}

func (c *proxyConn) close() {
	c.once.Do(func() {
		close(c.done)
		c.client.Close()
		c.server.Close()
	})
}

func (c *proxyConn) isStalled(d Direction) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stalled&d != 0
}

// NewProxy listens on a free loopback port and forwards every connection to
// target (host:port). It is closed when t ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target, conns: map[*proxyConn]struct{}{}, changed: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's host:port: point the reader's DSN at it.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Accepted returns how many connections the proxy has accepted so far and a
// channel closed when that number changes: wait on it for a reconnect.
func (p *Proxy) Accepted() (int, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted, p.changed
}

// Open returns the number of connections open now.
func (p *Proxy) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Cut closes every open connection; the peers see a reset or EOF.
func (p *Proxy) Cut() {
	for _, c := range p.snapshot() {
		c.close()
	}
}

// Stall stops forwarding direction d on every open connection: bytes sent
// that way from now on are swallowed, and the connection stays open until
// Cut, Close, or the peers give up on it.
func (p *Proxy) Stall(d Direction) {
	for _, c := range p.snapshot() {
		c.mu.Lock()
		c.stalled |= d
		c.mu.Unlock()
	}
}

// Close stops accepting, closes every connection and waits for the
// forwarding goroutines. Safe to call twice.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.ln.Close()
	p.Cut()
	p.wg.Wait()
}

func (p *Proxy) snapshot() []*proxyConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	cs := make([]*proxyConn, 0, len(p.conns))
	for c := range p.conns {
		cs = append(cs, c)
	}
	return cs
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		c := &proxyConn{client: client, server: server, done: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.close()
			return
		}
		p.conns[c] = struct{}{}
		p.accepted++
		close(p.changed)
		p.changed = make(chan struct{})
		p.wg.Add(2)
		p.mu.Unlock()
		go p.forward(c, client, server, ToServer)
		go p.forward(c, server, client, ToClient)
	}
}

// forward copies src to dst until either side fails; while d is stalled,
// what it reads is dropped and it waits for the pair to close.
func (p *Proxy) forward(c *proxyConn, src, dst net.Conn, d Direction) {
	defer p.wg.Done()
	defer func() {
		c.close()
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if c.isStalled(d) {
				<-c.done
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or a reset: close both sides
		}
	}
}
