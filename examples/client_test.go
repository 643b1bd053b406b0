package examples

import (
	"io"
	"testing"
	"time"
)

// TestClientAgainstTagstream: @tagstream/client against the real binary.
// An unparseable cursor (a stored id from who knows where) gets reset and
// ready resumed:false; after a restart of tagstream the client reconnects
// with its last id, resumes (no reset) and receives the change it missed.
func TestClientAgainstTagstream(t *testing.T) {
	need(t, "node", "to run @tagstream/client")
	dsn, db, rules := postgres(t, todoSchema, todoRules)
	addr := freeAddr(t)
	args := []string{"--db", dsn, "--rules", rules}
	ts := startTagstreamOn(t, addr, args...)

	c := newProc(t, "client", "../clients/js", nil, true, "node", "test/live/follow.mjs", "http://"+addr+"/events", "not-a-position")
	c.run(t)
	said := readLines(io.TeeReader(c.Stdout(), c.Log()))
	said.expect(t, c, "reset")
	said.expect(t, c, "ready false")
	execSQL(t, db, `INSERT INTO todos (id, title) VALUES (2, 'two')`)
	said.expect(t, c, "invalidate todos,todo:*")

	ts.stop(t)
	execSQL(t, db, `INSERT INTO todos (id, title) VALUES (3, 'three')`)
	startTagstreamOn(t, addr, args...)
	// Replayed before ready, or streamed live just after it: no reset either way.
	said.expectAnyOrder(t, c, "invalidate todos,todo:*", "ready true")
}

// stop sends SIGTERM (launch's Stop) and asserts a clean exit within 30 s.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	if err := p.Stop(30 * time.Second); err != nil {
		t.Fatalf("%s stop: %v\n%s", p.name, err, p.Log())
	}
}
