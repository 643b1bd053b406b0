package mysql

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// syncBuffer is a log sink for tests.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestStateDirNotWritableIsAConfigError: a state dir that cannot be made
// (its parent is a file) is ErrConfig, naming the dir.
func TestStateDirNotWritableIsAConfigError(t *testing.T) {
	parent := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(parent, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(parent, "state")
	err := checkStateDir(filepath.Join(dir, "cp.json"))
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "state dir "+dir+" is not writable") {
		t.Fatalf("checkStateDir: %v", err)
	}
	if err := checkStateDir(filepath.Join(t.TempDir(), "sub", "cp.json")); err != nil {
		t.Fatalf("a writable dir: %v", err)
	}
}

// TestCheckpointWriteFailureLoggedOnceAndRetried: failing writes log one
// error until a write succeeds (then one info line); the failed checkpoint
// is written by the retry, and nothing is recorded as durable meanwhile.
func TestCheckpointWriteFailureLoggedOnceAndRetried(t *testing.T) {
	base := t.TempDir()
	blocker := filepath.Join(base, "state")
	if err := os.WriteFile(blocker, nil, 0o644); err != nil { // a file where the dir should be
		t.Fatal(err)
	}
	var logs syncBuffer
	r := &Reader{path: filepath.Join(blocker, "cp.json"), log: slog.New(slog.NewTextHandler(&logs, nil))}
	for gen := uint64(1); gen <= 5; gen++ {
		r.writeCheckpoint(checkpoint{Flavor: "mariadb", File: "binlog.000001", Pos: uint32(100 * gen), Position: makePosition(1, uint32(100*gen))}, gen)
		r.retryFailed()
	}
	if n := strings.Count(logs.String(), "checkpoint not written"); n != 1 {
		t.Fatalf("%d error lines for 5 failing writes and retries, want 1:\n%s", n, logs.String())
	}
	if r.durableFile != "" {
		t.Fatalf("durable %s:%d without a written checkpoint", r.durableFile, r.durablePos)
	}
	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	r.retryFailed()
	cp, err := loadCheckpoint(r.path)
	if err != nil || cp == nil || cp.Pos != 500 {
		t.Fatalf("after the retry: %+v, %v", cp, err)
	}
	if n := strings.Count(logs.String(), "checkpoint written again"); n != 1 || r.durablePos != 500 {
		t.Fatalf("recovery: %d info lines, durable %d\n%s", n, r.durablePos, logs.String())
	}
}
