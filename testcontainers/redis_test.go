package testcontainers

import (
	"context"
	"testing"
	"time"
)

func TestRedisRestartLosesKeys(t *testing.T) {
	s := Redis(t)
	if !pingRedis(s.Addr, false) {
		t.Fatal("no PONG from the private redis-server")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if !pingRedis(s.Addr, false) {
		t.Fatal("no PONG after restart on the same port")
	}
	s.Kill()
	if pingRedis(s.Addr, false) {
		t.Fatal("PONG after Kill")
	}
}
