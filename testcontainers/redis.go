package testcontainers

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RedisEnv names the variable that points tests at an existing Redis server
// (redis://host:port). Tests that restart or kill their server cannot use it.
const RedisEnv = "TAGSTREAM_TEST_REDIS_URL"

// RedisServer is a private redis-server on a loopback port, in a temp dir,
// without persistence: a restart loses every key, as a production Redis
// without RDB/AOF would. One per test; Stop or the test's cleanup ends it.
type RedisServer struct {
	Addr string // host:port

	dir  string
	port int

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// URL returns redis://host:port/db.
func (s *RedisServer) URL(db int) string { return fmt.Sprintf("redis://%s/%d", s.Addr, db) }

// Redis starts a private redis-server for t and returns it; it is stopped
// when t ends. Without a redis-server binary (and no TAGSTREAM_TEST_REDIS_URL)
// t is skipped, or fails when CI is set.
func Redis(t testing.TB) *RedisServer {
	t.Helper()
	if os.Getenv(RedisEnv) != "" {
		t.Skipf("%s names a shared server; this test needs a private redis-server it can restart", RedisEnv)
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		unavailable(t, "redis-server", RedisEnv, "redis-server is not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := StartRedis(ctx)
	if err != nil {
		t.Fatalf("redis: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// StartRedis starts a private redis-server on a free loopback port.
func StartRedis(ctx context.Context) (*RedisServer, error) {
	reapOrphaned(redisDirPrefix, redisPidFile)
	dir, err := os.MkdirTemp("", redisDirPrefix)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s := &RedisServer{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), dir: dir, port: port}
	if err := s.start(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

func (s *RedisServer) start(ctx context.Context, extra ...string) error {
	logPath := filepath.Join(s.dir, "redis.log")
	args := append([]string{
		"--bind", "127.0.0.1", "--port", strconv.Itoa(s.port), "--dir", s.dir,
		"--save", "", "--appendonly", "no", "--daemonize", "no",
		"--logfile", logPath, "--pidfile", filepath.Join(s.dir, redisPidFile), "--protected-mode", "no",
	}, extra...)
	cmd := exec.Command("redis-server", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("redis-server: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	if err := waitRedis(ctx, s.Addr, exited, slices.Contains(extra, "--requirepass")); err != nil {
		s.Kill()
		log, _ := os.ReadFile(logPath)
		return fmt.Errorf("redis-server did not start: %w\n%s", err, tail(log, 2000))
	}
	return nil
}

// waitRedis waits until the server at addr answers PING with PONG (it
// accepts connections while still loading), or, with a password, with the
// authentication error.
func waitRedis(ctx context.Context, addr string, exited <-chan struct{}, password bool) error {
	for {
		if ok := pingRedis(addr, password); ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-exited:
			return errors.New("redis-server exited")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func pingRedis(addr string, password bool) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if password {
		return err == nil && strings.HasPrefix(line, "-NOAUTH")
	}
	return err == nil && strings.HasPrefix(line, "+PONG")
}

const (
	redisDirPrefix = "tagstream-redis-"
	redisPidFile   = "redis.pid"
)

// Kill ends the server at once (SIGKILL): its keys are gone.
func (s *RedisServer) Kill() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-exited
}

// Restart kills the server and starts a new, empty one on the same port,
// with extra redis-server arguments (e.g. "--requirepass", "pw" to keep
// clients out until the test lets them in with CONFIG SET requirepass "").
func (s *RedisServer) Restart(ctx context.Context, extra ...string) error {
	s.Kill()
	return s.start(ctx, extra...)
}

// Stop ends the server and removes its directory.
func (s *RedisServer) Stop() {
	s.Kill()
	os.RemoveAll(s.dir)
}
