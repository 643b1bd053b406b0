package main

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// metricLine returns the sample line of a metric, "" when absent.
func metricLine(t *testing.T, base, name string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for line := range strings.SplitSeq(string(body), "\n") {
		if strings.HasPrefix(line, name+" ") {
			return line
		}
	}
	return ""
}

// TestVisibilityFenceThroughTheBinary: by default every transaction is
// proven visible before it is published (the fence's counters move, none
// times out); TAGSTREAM_VISIBILITY_FENCE=false turns it off.
func TestVisibilityFenceThroughTheBinary(t *testing.T) {
	dsn, db, rulesFile := setupPG(t)
	args := []string{"--db", dsn, "--rules", rulesFile, "--slot", "fence", "--publication", "fence"}
	d := startDaemon(t, args...)
	c := subscribe(t, d.base, "tags=todo:*", "")
	c.expect(t, `ready {"resumed":false}`)
	execSQL(t, db, `INSERT INTO todos (id, user_id) VALUES (1, 1)`, `INSERT INTO todos (id, user_id) VALUES (2, 1)`)
	c.expect(t, "invalidate todo:1", "invalidate todo:2")
	if got := metricLine(t, d.base, "tagstream_fence_commits_total"); got != "tagstream_fence_commits_total 2" {
		t.Errorf("fence commits: %q, want 2", got)
	}
	if got := metricLine(t, d.base, "tagstream_fence_timeouts_total"); got != "tagstream_fence_timeouts_total 0" {
		t.Errorf("fence timeouts: %q, want 0", got)
	}
	if !strings.Contains(d.Log().String(), "visibility_fence=true") {
		t.Errorf("the start line does not say the fence is on:\n%s", d.Log())
	}
	d.stop(t)

	t.Setenv("TAGSTREAM_VISIBILITY_FENCE", "false")
	d = startDaemon(t, args...)
	c = subscribe(t, d.base, "tags=todo:*", "")
	c.expect(t, `ready {"resumed":false}`)
	execSQL(t, db, `INSERT INTO todos (id, user_id) VALUES (3, 1)`)
	c.expect(t, "invalidate todo:3")
	if got := metricLine(t, d.base, "tagstream_fence_waits_total"); got != "tagstream_fence_waits_total 0" {
		t.Errorf("fence waits with the fence off: %q, want 0", got)
	}
	if !strings.Contains(d.Log().String(), "visibility_fence=false") {
		t.Errorf("the start line does not say the fence is off:\n%s", d.Log())
	}
	d.stop(t)
}
