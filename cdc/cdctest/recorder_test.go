package cdctest

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tagstream/tagstream/cdc"
)

// failures is a testing.TB that collects Error calls instead of failing.
type failures struct {
	testing.TB
	errs []string
}

func (f *failures) Error(args ...any) { f.errs = append(f.errs, fmt.Sprint(args...)) }

var tbl = &cdc.Table{Schema: "s", Name: "t", Columns: []string{"id", "v"}}

func change(op cdc.Op, id string) *cdc.Change {
	img := []cdc.Value{{Kind: cdc.Text, Text: []byte(id)}, {Kind: cdc.Null}}
	c := &cdc.Change{Table: tbl, Op: op, New: img}
	if op == cdc.Delete {
		c.Old, c.New = img, nil
	}
	return c
}

func commit(t *testing.T, r *Recorder, tx cdc.Tx, pos cdc.Position) error {
	t.Helper()
	return r.Commit(context.Background(), tx, cdc.Commit{Position: pos, Time: time.Now()})
}

func TestRecorderCountsLinesAndMerges(t *testing.T) {
	r := New(t)
	var acked []cdc.Position
	r.Ack = func(p cdc.Position) { acked = append(acked, p) }
	tx := r.Begin()
	for range 3 {
		tx.Add(change(cdc.Insert, "1"))
	}
	tx.Add(change(cdc.Delete, "2"))
	sub := r.Begin()
	sub.Add(change(cdc.Insert, "1"))
	sub.Add(change(cdc.Insert, "3"))
	tx.Merge(sub)
	if err := commit(t, r, tx, 10); err != nil {
		t.Fatal(err)
	}
	r.SetAckMax(10)
	if err := commit(t, r, r.Begin(), 11); err != nil {
		t.Fatal(err)
	}
	AssertCommits(t, r.WaitCommits(t, 2),
		"insert s.t new=[id=1 v=NULL] x4 | delete s.t old=[id=2 v=NULL] | insert s.t new=[id=3 v=NULL]",
		"")
	if !slices.Equal(acked, []cdc.Position{10}) {
		t.Errorf("acked %v, want [10] (11 is past AckMax)", acked)
	}
	if s := r.Snapshot(); s.Begins != 3 {
		t.Errorf("Begins = %d, want 3", s.Begins)
	}
}

func TestRecorderSchemaAndSkipEmpty(t *testing.T) {
	r := New(t)
	r.Schema, r.SkipEmpty = "other", true
	tx := r.Begin()
	tx.Add(change(cdc.Insert, "1"))
	if err := commit(t, r, tx, 1); err != nil {
		t.Fatal(err)
	}
	r.Schema = "s"
	tx = r.Begin()
	tx.Add(change(cdc.Insert, "2"))
	if err := commit(t, r, tx, 2); err != nil {
		t.Fatal(err)
	}
	got := r.Snapshot().Commits
	AssertCommits(t, got, "insert s.t new=[id=2 v=NULL]")
	if got[0].Pos != 2 || r.Table("t") != tbl {
		t.Errorf("commit at %d, table %v", got[0].Pos, r.Table("t"))
	}
}

func TestRecorderRefusesBrokenPromises(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    cdc.Commit
	}{
		{"position not increasing", cdc.Commit{Position: 5, Time: time.Now()}},
		{"no time", cdc.Commit{Position: 6}},
		{"time hours away", cdc.Commit{Position: 6, Time: time.Now().Add(-3 * time.Hour)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &failures{TB: t}
			r := New(f)
			if err := commit(t, r, r.Begin(), 5); err != nil {
				t.Fatal(err)
			}
			if err := r.Commit(context.Background(), r.Begin(), tc.c); err == nil || len(f.errs) != 1 {
				t.Errorf("Commit = %v, reported %q; want an error, reported once", err, f.errs)
			}
			if n := len(r.Snapshot().Commits); n != 1 {
				t.Errorf("%d commits recorded, want 1", n)
			}
		})
	}
}

func TestRecorderHandlerEvents(t *testing.T) {
	r := New(t)
	r.Resumed(3)
	r.Progress(9)
	if err := r.Lost(context.Background(), "slot dropped"); err != nil {
		t.Fatal(err)
	}
	r.Drain(context.Background())
	r.WaitFor(t, "everything", func(s *State) bool {
		return slices.Equal(s.Resumed, []cdc.Position{3}) && s.Progress == 9 &&
			slices.Equal(s.Lost, []string{"slot dropped"}) && s.Drains == 1
	})
	if s := r.Snapshot(); s.ResumedAfterLost() {
		t.Error("ResumedAfterLost before a Resumed that follows the loss")
	}
	r.Resumed(4)
	if s := r.Snapshot(); !s.ResumedAfterLost() || !slices.Equal(s.LostAfter, []int{1}) {
		t.Errorf("after Lost and Resumed: ResumedAfterLost %v, LostAfter %v", s.ResumedAfterLost(), s.LostAfter)
	}
	if got := r.WaitResumed(t, 2); !slices.Equal(got, []cdc.Position{3, 4}) {
		t.Errorf("WaitResumed = %v", got)
	}
}

// A Recorder is a cdc.Handler, and with Reads its transactions are
// projections.
var _ cdc.Handler = (*Recorder)(nil)

func TestRecorderProjection(t *testing.T) {
	r := New(t)
	r.Reads = func(*cdc.Table, cdc.Op) []bool { return []bool{true, false} }
	p, ok := r.Begin().(cdc.Projection)
	if !ok {
		t.Fatal("Tx is not a cdc.Projection with Reads set")
	}
	if got := p.Reads(tbl, cdc.Insert); !slices.Equal(got, []bool{true, false}) {
		t.Errorf("Reads = %v", got)
	}
	if _, ok := New(t).Begin().(cdc.Projection); ok {
		t.Error("Tx is a cdc.Projection without Reads")
	}
}
