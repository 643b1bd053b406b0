// Package cdctest is the conformance kit for cdc readers: one recording
// cdc.Handler (Recorder) and the scenarios every reader must pass
// (Exercise), in the manner of River's riverdrivertest. Only tests import it.
package cdctest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tagstream/tagstream/cdc"
)

// WaitTimeout bounds every wait of a Recorder: a reader that has not
// delivered by then is broken, not slow.
const WaitTimeout = 30 * time.Second

// Committed is one transaction as the Recorder saw it.
type Committed struct {
	Pos   cdc.Position
	Xid   uint64
	Time  time.Time
	Lines []string // one per distinct rendered change, in first-seen order; "line xN" when seen N > 1 times
}

// State is what a Recorder has received so far. WaitFor hands it to its
// condition under the Recorder's lock; the slices must not be kept.
type State struct {
	Commits []Committed
	Resumed []cdc.Position
	Lost    []string
	// LostAfter holds, per Lost call, how many Resumed calls came before
	// it: the source resumed after the loss once len(Resumed) exceeds it.
	LostAfter []int
	Progress  cdc.Position
	Begins    int
	Drains    int
}

// Recorder is a cdc.Handler that renders each committed transaction as text
// lines. Its transactions keep one entry per distinct line with a count, so
// a transaction of a million rows that render alike stays one entry.
//
// Commit checks what every reader owes its handler: a commit time (within
// an hour of now, which catches time zone mistakes), and positions that
// strictly increase; a violation fails the test and stops the
// reader. Set the options before the reader starts.
type Recorder struct {
	// Render turns a change into a line; nil: Render.
	Render func(*cdc.Change) string
	// Schema, when set, keeps only the changes of tables in this schema
	// (MySQL's binlog carries the whole server).
	Schema string
	// SkipEmpty leaves out commits without a (kept) change.
	SkipEmpty bool
	// Ack, when set, is called with each commit's position up to AckMax
	// (usually the reader's Ack).
	Ack func(cdc.Position)
	// Reads, when set, makes every Tx a cdc.Projection answering with it.
	Reads func(t *cdc.Table, op cdc.Op) []bool

	t       testing.TB
	mu      sync.Mutex
	ackMax  cdc.Position
	st      State
	tables  map[string]*cdc.Table
	changed chan struct{}
}

// New returns a Recorder that reports broken reader promises to t.
func New(t testing.TB) *Recorder {
	return &Recorder{t: t, tables: map[string]*cdc.Table{}, changed: make(chan struct{}, 1)}
}

// SetAckMax stops acknowledging past pos (0: acknowledge everything), to
// leave transactions delivered but unacknowledged.
func (r *Recorder) SetAckMax(pos cdc.Position) {
	r.mu.Lock()
	r.ackMax = pos
	r.mu.Unlock()
}

// recTx accumulates one transaction's lines.
type recTx struct {
	r      *Recorder
	keys   []string
	counts map[string]int
	merged bool
}

// projTx is a recTx that is a cdc.Projection.
type projTx struct{ *recTx }

func (t projTx) Reads(tbl *cdc.Table, op cdc.Op) []bool { return t.r.Reads(tbl, op) }

// Begin implements cdc.Handler.
func (r *Recorder) Begin() cdc.Tx {
	r.mu.Lock()
	r.st.Begins++
	r.mu.Unlock()
	tx := &recTx{r: r, counts: map[string]int{}}
	if r.Reads != nil {
		return projTx{tx}
	}
	return tx
}

func (t *recTx) Add(c *cdc.Change) {
	if t.merged {
		t.r.t.Error("cdctest: Add on a merged Tx")
		return
	}
	if t.r.Schema != "" && c.Table.Schema != t.r.Schema {
		return
	}
	t.r.mu.Lock()
	t.r.tables[c.Table.Name] = c.Table
	t.r.mu.Unlock()
	render := t.r.Render
	if render == nil {
		render = Render
	}
	t.add(render(c), 1)
}

func (t *recTx) add(k string, n int) {
	if _, ok := t.counts[k]; !ok {
		t.keys = append(t.keys, k)
	}
	t.counts[k] += n
}

func (t *recTx) Merge(other cdc.Tx) {
	o := unwrap(other)
	for _, k := range o.keys {
		t.add(k, o.counts[k])
	}
	o.merged = true
}

func (t *recTx) Tags() []string { return nil }

func (t *recTx) lines() []string {
	out := make([]string, 0, len(t.keys))
	for _, k := range t.keys {
		if n := t.counts[k]; n > 1 {
			out = append(out, fmt.Sprintf("%s x%d", k, n))
		} else {
			out = append(out, k)
		}
	}
	return out
}

func unwrap(tx cdc.Tx) *recTx {
	if p, ok := tx.(projTx); ok {
		return p.recTx
	}
	return tx.(*recTx)
}

// Commit implements cdc.Handler.
func (r *Recorder) Commit(_ context.Context, tx cdc.Tx, c cdc.Commit) error {
	t := unwrap(tx)
	if t.merged {
		return r.fail("Commit of a merged Tx")
	}
	if c.Time.IsZero() {
		return r.fail("commit %d without a time", c.Position)
	}
	if d := time.Since(c.Time); d > time.Hour || d < -time.Hour {
		return r.fail("commit %d at %v: not within an hour of now (time zone?)", c.Position, c.Time)
	}
	r.mu.Lock()
	if n := len(r.st.Commits); n > 0 && c.Position <= r.st.Commits[n-1].Pos {
		prev := r.st.Commits[n-1].Pos
		r.mu.Unlock()
		return r.fail("position %d after %d: not increasing", c.Position, prev)
	}
	if lines := t.lines(); len(lines) > 0 || !r.SkipEmpty {
		r.st.Commits = append(r.st.Commits, Committed{Pos: c.Position, Xid: c.Xid, Time: c.Time, Lines: lines})
	}
	ack := r.Ack != nil && (r.ackMax == 0 || c.Position <= r.ackMax)
	r.mu.Unlock()
	if ack {
		r.Ack(c.Position)
	}
	r.signal()
	return nil
}

func (r *Recorder) fail(format string, a ...any) error {
	err := fmt.Errorf("cdctest: "+format, a...)
	r.t.Error(err)
	r.signal()
	return err
}

// Resumed implements cdc.Handler.
func (r *Recorder) Resumed(pos cdc.Position) {
	r.mu.Lock()
	r.st.Resumed = append(r.st.Resumed, pos)
	r.mu.Unlock()
	r.signal()
}

// Progress implements cdc.Handler.
func (r *Recorder) Progress(end cdc.Position) {
	r.mu.Lock()
	r.st.Progress = end
	r.mu.Unlock()
	r.signal()
}

// Lost implements cdc.Handler.
func (r *Recorder) Lost(_ context.Context, reason string) error {
	r.mu.Lock()
	r.st.Lost = append(r.st.Lost, reason)
	r.st.LostAfter = append(r.st.LostAfter, len(r.st.Resumed))
	r.mu.Unlock()
	r.signal()
	return nil
}

// Drain implements cdc.Handler: every commit was accepted when Commit
// returned, so there is nothing to wait for; it is counted.
func (r *Recorder) Drain(context.Context) {
	r.mu.Lock()
	r.st.Drains++
	r.mu.Unlock()
	r.signal()
}

// Signal wakes the waiters to check their condition again (a test calls it
// when something the condition reads outside the Recorder changed).
func (r *Recorder) Signal() { r.signal() }

func (r *Recorder) signal() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// Snapshot returns a copy of the state.
func (r *Recorder) Snapshot() State {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.st
	s.Commits = slices.Clone(s.Commits)
	s.Resumed = slices.Clone(s.Resumed)
	s.Lost = slices.Clone(s.Lost)
	s.LostAfter = slices.Clone(s.LostAfter)
	return s
}

// Table returns the last *cdc.Table seen under name (nil: none).
func (r *Recorder) Table(name string) *cdc.Table {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tables[name]
}

// WaitFor waits until cond holds (it is called under the Recorder's lock),
// failing t after WaitTimeout.
func (r *Recorder) WaitFor(t testing.TB, what string, cond func(s *State) bool) {
	t.Helper()
	deadline := time.After(WaitTimeout)
	for {
		r.mu.Lock()
		ok := cond(&r.st)
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-r.changed:
		case <-deadline:
			s := r.Snapshot()
			t.Fatalf("timed out waiting for %s; commits:\n%s resumed %v, lost %q", what, Format(s.Commits), s.Resumed, s.Lost)
		}
	}
}

// WaitCommits waits for at least n commits and returns them all.
func (r *Recorder) WaitCommits(t testing.TB, n int) []Committed {
	t.Helper()
	r.WaitFor(t, fmt.Sprintf("%d commits", n), func(s *State) bool { return len(s.Commits) >= n })
	return r.Snapshot().Commits
}

// ResumedAfterLost reports whether the source resumed after its last Lost.
func (s *State) ResumedAfterLost() bool {
	n := len(s.LostAfter)
	return n > 0 && len(s.Resumed) > s.LostAfter[n-1]
}

// WaitResumed waits for at least n calls of Resumed and returns them all.
func (r *Recorder) WaitResumed(t testing.TB, n int) []cdc.Position {
	t.Helper()
	r.WaitFor(t, fmt.Sprintf("%d resumes", n), func(s *State) bool { return len(s.Resumed) >= n })
	return r.Snapshot().Resumed
}

// Lines waits for at least n commits and returns them one string each,
// their lines joined by " | ".
func (r *Recorder) Lines(t testing.TB, n int) []string {
	t.Helper()
	return Joined(r.WaitCommits(t, n))
}

// Positions returns the positions of the commits so far.
func (r *Recorder) Positions() []cdc.Position {
	var out []cdc.Position
	for _, c := range r.Snapshot().Commits {
		out = append(out, c.Pos)
	}
	return out
}

// Joined renders commits one string each, lines joined by " | ".
func Joined(cs []Committed) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = strings.Join(c.Lines, " | ")
	}
	return out
}

// Format renders commits one per line with their positions, for failures.
func Format(cs []Committed) string {
	var b strings.Builder
	for _, c := range cs {
		fmt.Fprintf(&b, "  %d: %s\n", c.Pos, strings.Join(c.Lines, " | "))
	}
	return b.String()
}

// AssertCommits fails t unless the commits' lines are exactly want (one
// string per commit, lines joined by " | ").
func AssertCommits(t testing.TB, got []Committed, want ...string) {
	t.Helper()
	if g := Joined(got); !slices.Equal(g, want) {
		t.Fatalf("commits:\n%s\nwant:\n  %s", Format(got), strings.Join(want, "\n  "))
	}
}

// Render renders a change as `insert schema.table old=[c=v …] new=[…]`:
// NULL, <absent>, <unchanged>, and values over 60 bytes as <N bytes>.
func Render(c *cdc.Change) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s.%s", c.Op, c.Table.Schema, c.Table.Name)
	image(&b, c.Table, " old=", c.Old)
	image(&b, c.Table, " new=", c.New)
	return b.String()
}

func image(b *strings.Builder, t *cdc.Table, prefix string, vals []cdc.Value) {
	if vals == nil {
		return
	}
	b.WriteString(prefix)
	b.WriteByte('[')
	for i, v := range vals {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(t.Columns[i])
		b.WriteByte('=')
		switch v.Kind {
		case cdc.Absent:
			b.WriteString("<absent>")
		case cdc.Null:
			b.WriteString("NULL")
		case cdc.Unchanged:
			b.WriteString("<unchanged>")
		case cdc.Text:
			if len(v.Text) > 60 {
				fmt.Fprintf(b, "<%d bytes>", len(v.Text))
			} else {
				b.Write(v.Text)
			}
		}
	}
	b.WriteByte(']')
}
