package postgres

import (
	"testing"
	"time"
)

// TestRetainedBytes: the WAL the slot holds back grows while nothing is
// acknowledged, and is read on the reader's own connection.
func TestRetainedBytes(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.exec(`CREATE TABLE t (id int PRIMARY KEY, pad text)`)
	cfg := f.config()
	cfg.RetentionInterval = 50 * time.Millisecond
	rec := newRecorder(t)
	rec.SetAckMax(1) // acknowledge nothing
	run := f.startStreaming(cfg, rec)
	f.exec(`INSERT INTO t SELECT g, repeat('x', 1000) FROM generate_series(1, 2000) g`)
	rec.WaitCommits(t, 1)
	deadline := time.Now().Add(waitTimeout)
	for {
		n, ok := run.reader.RetainedBytes()
		if ok && n >= 2_000_000 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("RetainedBytes() = %d, %v; want at least the 2 MB just written", n, ok)
		}
		time.Sleep(20 * time.Millisecond) // polling the server's state; there is no signal to wait on
	}
}
