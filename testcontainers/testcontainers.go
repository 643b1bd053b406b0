// Package testcontainers hands out fresh, isolated databases to tests (and to
// the demo and benchmarks) by a ladder:
//
//  1. TAGSTREAM_TEST_POSTGRES_DSN / TAGSTREAM_TEST_MYSQL_DSN: an admin DSN to
//     an existing server; a database is created per test.
//  2. A Docker engine answers: containers through testcontainers-go.
//  3. Server binaries on this machine: a private throwaway instance in a temp
//     dir on a free loopback port, shared by the package's tests and stopped
//     by Main.
//  4. None: the test is skipped with a message saying how to get one — or
//     fails when CI is set.
package testcontainers

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	cleanupMu sync.Mutex
	cleanups  []func()
)

// registerCleanup adds fn to what Main (or Shutdown) runs at the end, last
// registered first.
func registerCleanup(fn func()) {
	cleanupMu.Lock()
	defer cleanupMu.Unlock()
	cleanups = append(cleanups, fn)
}

// Shutdown stops every server this process started. Main calls it; programs
// that are not tests (the demo, benchmarks) call it before they exit.
func Shutdown() {
	cleanupMu.Lock()
	fns := cleanups
	cleanups = nil
	cleanupMu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
}

// Main runs a package's tests and then stops the servers they started:
//
//	func TestMain(m *testing.M) { testcontainers.Main(m) }
func Main(m *testing.M) {
	code := m.Run()
	Shutdown()
	os.Exit(code)
}

// unavailable skips t, or fails it when CI is set, because no database of
// the given kind could be had.
func unavailable(t testing.TB, kind, envVar, why string) {
	t.Helper()
	msg := fmt.Sprintf("no %s for tests: %s; set %s to an admin DSN, start a Docker engine, or install the server binaries (make deps)", kind, why, envVar)
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// dockerAvailable reports whether a Docker engine answers a ping, without
// linking a Docker client: step 2 of the ladder is taken only then.
func dockerAvailable() bool {
	dockerOnce.Do(func() {
		network, addr := "unix", "/var/run/docker.sock"
		if h := os.Getenv("DOCKER_HOST"); h != "" {
			switch {
			case strings.HasPrefix(h, "unix://"):
				addr = strings.TrimPrefix(h, "unix://")
			case strings.HasPrefix(h, "tcp://"):
				network, addr = "tcp", strings.TrimPrefix(h, "tcp://")
			default:
				return
			}
		}
		client := &http.Client{
			Timeout: 2 * time.Second,
			Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, addr)
			}},
		}
		resp, err := client.Get("http://docker/_ping")
		if err != nil {
			return
		}
		resp.Body.Close()
		dockerUp = resp.StatusCode == http.StatusOK
	})
	return dockerUp
}

var (
	dockerOnce sync.Once
	dockerUp   bool
)

// freePort returns a loopback TCP port that was free a moment ago and that
// this process has not handed out before: servers started at the same
// time must not be given the port the kernel just freed for the other.
func freePort() (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !portsGiven[port] {
			portsGiven[port] = true
			return port, nil
		}
	}
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// waitPort waits until something accepts connections on addr.
func waitPort(ctx context.Context, addr string) error {
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", addr, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// dbName returns a database name unique to this test: lower-case letters,
// digits and underscores, at most 63 bytes.
func dbName(t testing.TB) string {
	var b strings.Builder
	b.WriteString("t_")
	for _, r := range strings.ToLower(t.Name()) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	name := b.String()
	if len(name) > 40 {
		name = name[:40]
	}
	seqMu.Lock()
	seq++
	n := seq
	seqMu.Unlock()
	return fmt.Sprintf("%s_%d_%d", name, os.Getpid()%100000, n)
}

var (
	seqMu sync.Mutex
	seq   int
)
