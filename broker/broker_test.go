package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/sink"
	"github.com/tagstream/tagstream/testcontainers"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// handler records what a Reader hands over, one line per call.
type handler struct {
	mu     sync.Mutex
	events []string
	sig    chan struct{}
}

func newHandler() *handler { return &handler{sig: make(chan struct{}, 1)} }

func (h *handler) add(s string) {
	h.mu.Lock()
	h.events = append(h.events, s)
	h.mu.Unlock()
	select {
	case h.sig <- struct{}{}:
	default:
	}
}

func (h *handler) Begin() cdc.Tx { panic("an edge commits tagged transactions") }
func (h *handler) Commit(_ context.Context, tx cdc.Tx, c cdc.Commit) error {
	h.add(fmt.Sprintf("%d%v", c.Position, tx.Tags()))
	return nil
}
func (h *handler) Resumed(pos cdc.Position) { h.add(fmt.Sprintf("floor@%d", pos)) }
func (h *handler) Progress(cdc.Position)    {}
func (h *handler) Lost(_ context.Context, reason string) error {
	h.add("lost: " + reason)
	return nil
}
func (h *handler) Drain(context.Context) {}

// wait returns the events once there are n of them.
func (h *handler) wait(t *testing.T, n int) []string {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		h.mu.Lock()
		got := slices.Clone(h.events)
		h.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-h.sig:
		case <-timeout:
			t.Fatalf("got %q, waiting for %d events", got, n)
		}
	}
}

func (h *handler) expect(t *testing.T, want ...string) {
	t.Helper()
	if got := h.wait(t, len(want)); !slices.Equal(got, want) {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
}

type bundle struct {
	rs    *testcontainers.RedisServer
	url   string
	admin *redis.Client
}

func setup(t *testing.T) *bundle {
	t.Helper()
	rs := testcontainers.Redis(t)
	admin := redis.NewClient(&redis.Options{Addr: rs.Addr})
	t.Cleanup(func() { admin.Close() })
	return &bundle{rs: rs, url: rs.URL(0), admin: admin}
}

// writer acquires a lease and returns it with an appender using it.
func (b *bundle) writer(t *testing.T, ttl time.Duration) (*Lease, *Appender) {
	t.Helper()
	l, err := NewLease(LeaseConfig{URL: b.url, TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := l.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	a, err := NewAppender(AppenderConfig{URL: b.url, Token: l.Token, MaxLen: 100})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return l, a
}

// read runs a Reader into a new handler until the test ends.
func (b *bundle) read(t *testing.T) *handler {
	t.Helper()
	_, h := b.readEvery(t, 100*time.Millisecond)
	return h
}

// readEvery is read with the Reader's Block, returning the Reader too.
func (b *bundle) readEvery(t *testing.T, block time.Duration) (*Reader, *handler) {
	t.Helper()
	r, err := NewReader(ReaderConfig{URL: b.url, Block: block})
	if err != nil {
		t.Fatal(err)
	}
	h := newHandler()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = r.Run(ctx, h); close(done) }()
	t.Cleanup(func() { cancel(); <-done; r.Close() })
	return r, h
}

func txn(pos int, tags ...string) sink.Txn {
	return sink.Txn{Position: cdc.Position(pos), Time: time.Unix(0, int64(pos)), Tags: tags}
}

func deliver(t *testing.T, a *Appender, batch ...sink.Txn) {
	t.Helper()
	if err := a.Deliver(context.Background(), batch); err != nil {
		t.Fatalf("deliver: %v", err)
	}
}

// ids lists the stream's entries as "id kind writer-token".
func (b *bundle) ids(t *testing.T) []string {
	t.Helper()
	ms, err := b.admin.XRange(context.Background(), DefaultStream, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range ms {
		out = append(out, fmt.Sprintf("%s %s", m.ID, m.Values["k"]))
	}
	return out
}

// TestAppendAndRead: commits reach a reader with their tags; a batch's
// transactions without tags are skipped but its last; the floor comes
// first; ids are the positions.
func TestAppendAndRead(t *testing.T) {
	b := setup(t)
	_, a := b.writer(t, 10*time.Second)
	a.Resumed(100)
	deliver(t, a, txn(101, "a", "b"), txn(102), txn(103, "c"), txn(104))
	deliver(t, a, txn(105), txn(106))
	h := b.read(t)
	h.expect(t, "floor@100", "100[]", "101[a b]", "103[c]", "104[]", "106[]")
	if got, want := b.ids(t), []string{"100-0 f", "101-0 c", "103-0 c", "104-0 c", "106-0 c"}; !slices.Equal(got, want) {
		t.Fatalf("stream %q, want %q", got, want)
	}
	// Live, after the reader caught up; a position at or below the top
	// (a writer that took over reads again from the database's ack) is
	// skipped without an error.
	deliver(t, a, txn(103, "c"), txn(107, "d"))
	h.expect(t, "floor@100", "100[]", "101[a b]", "103[c]", "104[]", "106[]", "107[d]")
}

// TestIdleMovesTheEdgesOn: a position the source reached without a
// transaction reaches the edges as an empty one, once.
func TestIdleMovesTheEdgesOn(t *testing.T) {
	b := setup(t)
	_, a := b.writer(t, 10*time.Second)
	a.Resumed(100)
	deliver(t, a, txn(101, "a"))
	a.Idle(150)
	a.Idle(150) // nothing new: not appended again
	a.Idle(120) // behind what the broker has: skipped
	deliver(t, a, txn(160, "b"))
	h := b.read(t)
	h.expect(t, "floor@100", "100[]", "101[a]", "150[]", "160[b]")
	if got, want := b.ids(t), []string{"100-0 f", "101-0 c", "150-0 c", "160-0 c"}; !slices.Equal(got, want) {
		t.Fatalf("stream %q, want %q", got, want)
	}
}

// TestFencedWriterCannotAppend: once another process holds the lease, the
// old writer's appends are refused and its Keep reports the loss.
func TestFencedWriterCannotAppend(t *testing.T) {
	b := setup(t)
	old, a := b.writer(t, 300*time.Millisecond)
	a.Resumed(1)
	deliver(t, a, txn(2, "x"))
	// The old writer stops renewing (paused); its lease expires and a
	// standby takes it.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	standby, err := NewLease(LeaseConfig{URL: b.url, TTL: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer standby.Close()
	tok, err := standby.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tok == old.Token() || !strings.HasPrefix(tok, "2:") {
		t.Fatalf("standby token %q after %q: want the next fencing number", tok, old.Token())
	}
	if err := a.Deliver(ctx, []sink.Txn{txn(3, "y")}); !errors.Is(err, ErrFenced) {
		t.Fatalf("append by the old writer: %v, want ErrFenced", err)
	}
	if err := old.Keep(ctx); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("Keep of the old writer: %v, want ErrLeaseLost", err)
	}
	na, err := NewAppender(AppenderConfig{URL: b.url, Token: standby.Token})
	if err != nil {
		t.Fatal(err)
	}
	defer na.Close()
	na.Resumed(2)
	deliver(t, na, txn(3, "y"))
	if got, want := b.ids(t), []string{"1-0 f", "2-0 c", "3-0 c"}; !slices.Equal(got, want) {
		t.Fatalf("stream %q, want %q", got, want)
	}
	w, _ := b.admin.XRange(ctx, DefaultStream, "3-0", "3-0").Result()
	if w[0].Values["w"] != tok {
		t.Fatalf("entry 3 written by %v, want the standby's %s", w[0].Values["w"], tok)
	}
}

// TestKeepRenewsAndReleaseHandsOver: a kept lease outlives its TTL; after
// Release a standby takes it at once.
func TestKeepRenewsAndReleaseHandsOver(t *testing.T) {
	b := setup(t)
	l, _ := b.writer(t, 3*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	kept := make(chan error, 1)
	go func() { kept <- l.Keep(ctx) }()
	standby, err := NewLease(LeaseConfig{URL: b.url, TTL: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer standby.Close()
	// For longer than the lease: the holder's renewals keep it.
	short, cancelShort := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancelShort()
	if _, err := standby.Acquire(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("standby acquired a kept lease: %v", err)
	}
	cancel()
	if err := <-kept; err != nil {
		t.Fatalf("Keep: %v", err)
	}
	l.Release(context.Background())
	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel2()
	if _, err := standby.Acquire(ctx2); err != nil {
		t.Fatal(err)
	}
}

// TestBrokerRestartedEmptyResets: the broker loses everything; the writer
// takes its lease back, starts a new epoch with a floor, and the reader
// resets its clients, then goes on with the new history.
func TestBrokerRestartedEmptyResets(t *testing.T) {
	b := setup(t)
	l, a := b.writer(t, 2*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	kept := make(chan error, 1)
	go func() { kept <- l.Keep(ctx) }()
	defer func() { cancel(); <-kept }()
	a.Resumed(10)
	deliver(t, a, txn(11, "a"))
	h := b.read(t)
	h.expect(t, "floor@10", "10[]", "11[a]")
	if err := b.rs.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	lost := "lost: the broker lost its history (restarted without persistence, or its stream was deleted): events may be missing"
	h.expect(t, "floor@10", "10[]", "11[a]", lost)
	// The pipeline retries until the lease is back; then the new history
	// starts at the last position the broker had accepted.
	eventually(t, func() bool { return a.Deliver(context.Background(), []sink.Txn{txn(12, "b")}) == nil })
	h.expect(t, "floor@10", "10[]", "11[a]", lost, "floor@11", "11[]", "12[b]")
}

// TestGapResets: entries trimmed or deleted past a reader's cursor reset
// its clients; a reset appended by the writer does too.
func TestGapResets(t *testing.T) {
	b := setup(t)
	_, a := b.writer(t, 10*time.Second)
	a.Resumed(1)
	deliver(t, a, txn(2, "a"))
	h := b.read(t)
	h.expect(t, "floor@1", "1[]", "2[a]")
	// Delete the stream (not the epoch): the next entry has no predecessor.
	if err := b.admin.Del(context.Background(), DefaultStream).Err(); err != nil {
		t.Fatal(err)
	}
	deliver(t, a, txn(3, "b"))
	gap := "lost: the broker's stream has a gap after 2-0 (trimmed or deleted): events may be missing"
	h.expect(t, "floor@1", "1[]", "2[a]", gap, "floor@3", "3[b]")
	if err := a.Reset(context.Background(), "slot dropped", 3); err != nil {
		t.Fatal(err)
	}
	deliver(t, a, txn(4, "c"))
	h.expect(t, "floor@1", "1[]", "2[a]", gap, "floor@3", "3[b]", "lost: slot dropped", "floor@3", "4[c]")
	if got, want := b.ids(t), []string{"3-0 c", "3-1 r", "4-0 c"}; !slices.Equal(got, want) {
		t.Fatalf("stream %q, want %q", got, want)
	}
	// An entry someone else wrote: a reset, and reading goes on after it.
	ep := b.admin.Get(context.Background(), DefaultStream+":epoch").Val()
	if err := b.admin.XAdd(context.Background(), &redis.XAddArgs{Stream: DefaultStream, ID: "5-0",
		Values: []any{"k", "c", "e", ep, "p", "4-0", "ts", "0", "g", "not json"}}).Err(); err != nil {
		t.Fatal(err)
	}
	deliver(t, a, txn(6, "d"))
	h.expect(t, "floor@1", "1[]", "2[a]", gap, "floor@3", "3[b]", "lost: slot dropped", "floor@3", "4[c]",
		"lost: unreadable broker entry: broker: entry 5-0: tags: invalid character 'o' in literal null (expecting 'u')", "floor@5", "6[d]")
}

// TestKeepSurvivesBrokerRestart: the holder takes a vanished lease back and
// goes on renewing it.
func TestKeepSurvivesBrokerRestart(t *testing.T) {
	b := setup(t)
	l, _ := b.writer(t, 2*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	kept := make(chan error, 1)
	go func() { kept <- l.Keep(ctx) }()
	if err := b.rs.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Wait for the lease to be back, then for three TTLs of renewals.
	eventually(t, func() bool { return b.admin.Get(context.Background(), DefaultStream+":lease").Val() == l.Token() })
	select {
	case err := <-kept:
		t.Fatalf("Keep returned %v after the broker restarted", err)
	case <-time.After(5 * time.Second):
	}
	if got := b.admin.Get(context.Background(), DefaultStream+":lease").Val(); got != l.Token() {
		t.Fatalf("lease %q, want %q", got, l.Token())
	}
	// The fencing counter restarted with the broker; it is moved past the
	// token taken back, so the next token is still a larger number.
	if got := b.admin.Get(context.Background(), DefaultStream+":fence").Val(); got != "1" {
		t.Fatalf("fence counter %q after taking back token %q, want 1", got, l.Token())
	}
	cancel()
	if err := <-kept; err != nil {
		t.Fatal(err)
	}
}

// TestReaderReady: an edge is ready while it reads the broker and a writer
// holds the lease; not before a writer came, nor once none holds it.
func TestReaderReady(t *testing.T) {
	b := setup(t)
	r, h := b.readEvery(t, 50*time.Millisecond)
	if r.Ready() {
		t.Fatal("ready without a writer")
	}
	l, a := b.writer(t, 10*time.Second)
	a.Resumed(7)
	h.expect(t, "floor@7", "7[]")
	eventually(t, r.Ready)
	l.Release(context.Background())
	// The lease is gone: within the writer window the edge says so.
	eventually(t, func() bool { return !r.Ready() })
}

// eventually polls cond for up to 20 s.
func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
