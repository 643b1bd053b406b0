package testcontainers

import (
	"bufio"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// echoServer answers every line with the same line.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

func roundTrip(c net.Conn, r *bufio.Reader, line string) (string, error) {
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		return "", err
	}
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	return r.ReadString('\n')
}

// TestProxyCutAndStall: Cut closes open connections, Stall silences one
// direction of open connections; later connections forward normally.
func TestProxyCutAndStall(t *testing.T) {
	t.Parallel()
	p := NewProxy(t, echoServer(t))
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, bufio.NewReader(c)
	}
	c, r := dial()
	if got, err := roundTrip(c, r, "a"); got != "a\n" || err != nil {
		t.Fatalf("before cut: %q %v", got, err)
	}
	n, changed := p.Accepted()
	if n != 1 {
		t.Fatalf("accepted %d, want 1", n)
	}
	p.Cut()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("a cut connection still reads")
	}

	for _, d := range []Direction{ToServer, ToClient} {
		c, r = dial()
		<-changed
		_, changed = p.Accepted()
		if got, err := roundTrip(c, r, "b"); got != "b\n" || err != nil {
			t.Fatalf("%s: before stall: %q %v", d, got, err)
		}
		p.Stall(d)
		// A deadline is the only way to observe silence; the assertion is
		// on what arrives, not on how fast.
		if got, err := roundTrip(c, r, "c"); err == nil {
			t.Fatalf("%s: stalled connection answered %q", d, got)
		}
		if p.Open() != 1 {
			t.Fatalf("%s: stalled connection closed", d)
		}
		c2, r2 := dial()
		if got, err := roundTrip(c2, r2, "d"); got != "d\n" || err != nil {
			t.Fatalf("%s: new connection after stall: %q %v", d, got, err)
		}
		p.Cut()
		<-changed
		_, changed = p.Accepted()
	}
}

// TestPrivatePostgresRestart: data and port survive fast and immediate
// restarts.
func TestPrivatePostgresRestart(t *testing.T) {
	t.Parallel()
	srv := NewPrivatePostgres(t)
	ctx := context.Background()
	exec := func(sql string) {
		t.Helper()
		c, err := pgx.Connect(ctx, srv.AdminDSN())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	exec(`CREATE TABLE kept (id int)`)
	for _, mode := range []ShutdownMode{Fast, Immediate} {
		if err := srv.Restart(ctx, mode); err != nil {
			t.Fatal(err)
		}
		exec(`INSERT INTO kept VALUES (1)`)
	}
}

// TestPrivateMySQLRestart: data and port survive a clean restart and a kill.
func TestPrivateMySQLRestart(t *testing.T) {
	t.Parallel()
	srv := NewPrivateMySQL(t)
	ctx := context.Background()
	if err := srv.Exec(ctx, "CREATE DATABASE kept", "CREATE TABLE kept.t (id int)"); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []ShutdownMode{Fast, Immediate} {
		if err := srv.Restart(ctx, mode); err != nil {
			t.Fatal(err)
		}
		if err := srv.Exec(ctx, "INSERT INTO kept.t VALUES (1)"); err != nil {
			t.Fatal(err)
		}
	}
}
