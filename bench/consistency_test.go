package main

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/tagstream/tagstream/internal/launch"
	"github.com/tagstream/tagstream/testcontainers"
)

func TestMain(m *testing.M) { testcontainers.Main(m) }

// TestConsistencyWithFence: the checker's cache ends with no stale row on a
// short run against each database, with the fence on and one kill -9 of
// tagstream in the middle. Not timed: the figures are the benchmark's.
func TestConsistencyWithFence(t *testing.T) {
	if testing.Short() {
		t.Skip("builds tagstream and writes for seconds")
	}
	ctx := context.Background()
	dir := t.TempDir()
	bin, err := launch.BuildTagstream(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	b := &bench{tmp: dir, tagstream: bin, log: io.Discard}
	for _, tc := range []struct {
		name  string
		store func(t *testing.T) *kvStore
	}{
		{"PostgreSQL", func(t *testing.T) *kvStore {
			return &kvStore{db: "PostgreSQL", dsn: testcontainers.Postgres(t), pg: true, extra: []string{"--slot", "consistency", "--publication", "consistency"}}
		}},
		{"MariaDB", func(t *testing.T) *kvStore {
			return &kvStore{db: "MariaDB", dsn: testcontainers.MySQL(t), extra: []string{"--state-dir", t.TempDir(), "--server-id", "7777"}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run := consistencyRun{store: tc.store(t), name: "consistency-" + tc.name, rate: 500, dur: 3 * time.Second, kills: 1, fence: true}
			row, err := b.consistency(ctx, run)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%d updates at %.0f/s; window p50 %s p99 %s; reconnects %d (resumed %d, resets %d)",
				row.Updates, row.Achieved, row.P50, row.P99, row.Reconnects, row.Resumed, row.Resets)
			if row.Stale != 0 {
				t.Errorf("%d stale rows after %d updates with the fence on", row.Stale, row.Updates)
			}
			if row.Updates == 0 {
				t.Error("no updates written")
			}
		})
	}
}
