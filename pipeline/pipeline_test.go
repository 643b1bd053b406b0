package pipeline

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/rules"
	"github.com/tagstream/tagstream/sink"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// source records acknowledgements; with proof set it is a cdc.Fence too.
type source struct {
	mu    sync.Mutex
	acked cdc.Position
	acks  []cdc.Position
}

func (s *source) Run(context.Context, cdc.Handler) error { return nil }
func (s *source) Ready() bool                            { return true }
func (s *source) Ack(pos cdc.Position) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if pos <= s.acked {
		panic(fmt.Sprintf("ack went backwards: %d after %d", pos, s.acked))
	}
	s.acked = pos
	s.acks = append(s.acks, pos)
}

func (s *source) ackedPos() cdc.Position {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked
}

// fencedSource proves visibility only when the test allows it.
type fencedSource struct {
	source
	allow   chan struct{}
	mu2     sync.Mutex
	batches [][]cdc.Position
	err     error
}

func (f *fencedSource) WaitVisible(ctx context.Context, cs []cdc.Commit) error {
	var ps []cdc.Position
	for _, c := range cs {
		ps = append(ps, c.Position)
	}
	f.mu2.Lock()
	f.batches = append(f.batches, ps)
	f.mu2.Unlock()
	select {
	case <-f.allow:
		return f.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// recorder is a sink that records what it accepted, in a string form, and
// fails while fail > 0.
type recorder struct {
	mu     sync.Mutex
	events []string
	fail   int
	failOn func() bool // fails while this says so (when set)
	block  chan struct{}
	calls  int
	// Deliver and Reset calls under way, and the most at once.
	inFlight, most atomic.Int32
}

func (r *recorder) enter() func() {
	n := r.inFlight.Add(1)
	for m := r.most.Load(); n > m && !r.most.CompareAndSwap(m, n); m = r.most.Load() {
	}
	return func() { r.inFlight.Add(-1) }
}

func (r *recorder) failing() bool {
	if r.failOn != nil {
		return r.failOn()
	}
	if r.fail > 0 {
		r.fail--
		return true
	}
	return false
}

func (r *recorder) Deliver(ctx context.Context, batch []sink.Txn) error {
	defer r.enter()()
	if r.block != nil {
		select {
		case <-r.block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.failing() {
		return errors.New("503 from the target")
	}
	for _, t := range batch {
		r.events = append(r.events, fmt.Sprintf("%d%v", t.Position, t.Tags))
	}
	return nil
}

func (r *recorder) Reset(_ context.Context, reason string, pos cdc.Position) error {
	defer r.enter()()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.failing() {
		return errors.New("503 from the target")
	}
	r.events = append(r.events, fmt.Sprintf("reset@%d", pos))
	return nil
}

func (r *recorder) Resumed(pos cdc.Position) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf("floor@%d", pos))
}

func (r *recorder) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// tx is a cdc.Tx with fixed tags.
type tx []string

func (t tx) Add(*cdc.Change) {}
func (t tx) Merge(cdc.Tx)    {}
func (t tx) Tags() []string  { return t }
func commit(pos int) cdc.Commit {
	return cdc.Commit{Position: cdc.Position(pos), Time: time.Unix(int64(pos), 0)}
}

func newPipeline(t *testing.T, src cdc.Source, opts Options, targets ...Target) *Pipeline {
	t.Helper()
	engine := rules.Compile(&rules.Set{}, rules.Options{})
	p := New(src, engine, targets, opts)
	t.Cleanup(p.Close)
	return p
}

func mustCommit(t *testing.T, p *Pipeline, pos int, tags ...string) {
	t.Helper()
	if err := p.Commit(context.Background(), tx(tags), commit(pos)); err != nil {
		t.Fatalf("commit %d: %v", pos, err)
	}
}

func TestAckWaitsForEverySink(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &source{}
		fast := &recorder{}
		slow := &recorder{block: make(chan struct{})}
		p := newPipeline(t, src, Options{}, Target{Name: "slow", Sink: slow}, Target{Name: "fast", Sink: fast})
		p.Resumed(10)
		mustCommit(t, p, 11, "a")
		mustCommit(t, p, 12)
		mustCommit(t, p, 13, "b", "c")
		synctest.Wait()
		if want := []string{"floor@10", "11[a]", "12[]", "13[b c]"}; !slices.Equal(fast.got(), want) {
			t.Fatalf("fast sink got %q, want %q", fast.got(), want)
		}
		if got := src.ackedPos(); got != 0 {
			t.Fatalf("acknowledged %d while a sink has accepted nothing", got)
		}
		close(slow.block)
		synctest.Wait()
		if got := src.ackedPos(); got != 13 {
			t.Fatalf("acknowledged %d after both sinks accepted 13", got)
		}
		if want := []string{"floor@10", "11[a]", "12[]", "13[b c]"}; !slices.Equal(slow.got(), want) {
			t.Fatalf("slow sink got %q, want %q", slow.got(), want)
		}
	})
}

func TestFailingSinkIsRetriedInOrderAndHoldsTheAck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &source{}
		hub := &recorder{}
		hook := &recorder{fail: 3}
		p := newPipeline(t, src, Options{}, Target{Name: "sse", Sink: hub}, Target{Name: "webhook", Sink: hook, MaxBatch: 1})
		p.Resumed(0)
		mustCommit(t, p, 1, "a")
		mustCommit(t, p, 2, "b")
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if got := src.ackedPos(); got != 0 {
			t.Fatalf("acknowledged %d while the webhook still fails", got)
		}
		time.Sleep(5 * time.Second) // three backoffs
		synctest.Wait()
		if want := []string{"floor@0", "1[a]", "2[b]"}; !slices.Equal(hook.got(), want) {
			t.Fatalf("webhook got %q, want %q", hook.got(), want)
		}
		if got := src.ackedPos(); got != 2 {
			t.Fatalf("acknowledged %d, want 2", got)
		}
		st := p.Stats().Sinks[1]
		if st.Failures != 3 || st.Delivered != 2 || st.GivenUp {
			t.Fatalf("webhook stats %+v", st)
		}
	})
}

func TestGivenUpSinkStopsHoldingTheAckAndIsResetWhenBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &source{}
		down := true
		var mu sync.Mutex
		hook := &recorder{failOn: func() bool { mu.Lock(); defer mu.Unlock(); return down }}
		p := newPipeline(t, src, Options{},
			Target{Name: "sse", Sink: &recorder{}},
			Target{Name: "webhook", Sink: hook, GiveUp: time.Minute, BackoffMax: 5 * time.Second})
		p.Resumed(0)
		mustCommit(t, p, 1, "a")
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if got := src.ackedPos(); got != 0 {
			t.Fatalf("acknowledged %d before the give-up bound", got)
		}
		time.Sleep(40 * time.Second)
		synctest.Wait()
		if got := src.ackedPos(); got != 1 {
			t.Fatalf("acknowledged %d after giving up, want 1", got)
		}
		if !p.Stats().Sinks[1].GivenUp {
			t.Fatal("stats do not say the webhook was given up on")
		}
		mustCommit(t, p, 2, "b") // dropped for the webhook: its reset covers it
		synctest.Wait()
		if got := src.ackedPos(); got != 2 {
			t.Fatalf("acknowledged %d while given up, want 2", got)
		}
		mu.Lock()
		down = false
		mu.Unlock()
		time.Sleep(10 * time.Second)
		synctest.Wait()
		mustCommit(t, p, 3, "c")
		synctest.Wait()
		if want := []string{"floor@0", "reset@2", "3[c]"}; !slices.Equal(hook.got(), want) {
			t.Fatalf("webhook got %q, want %q", hook.got(), want)
		}
		if st := p.Stats().Sinks[1]; st.GivenUp || st.GiveUps != 1 || st.Resets != 1 {
			t.Fatalf("webhook stats %+v", st)
		}
	})
}

func TestFullQueueHoldsTheReader(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &source{}
		slow := &recorder{block: make(chan struct{})}
		p := newPipeline(t, src, Options{}, Target{Name: "slow", Sink: slow, QueueSize: 2, MaxBatch: 1})
		mustCommit(t, p, 1) // taken by the worker, blocked in Deliver
		synctest.Wait()
		mustCommit(t, p, 2)
		mustCommit(t, p, 3)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- p.Commit(ctx, tx{"d"}, commit(4)) }()
		synctest.Wait()
		select {
		case err := <-done:
			t.Fatalf("commit into a full queue returned %v instead of waiting", err)
		default:
		}
		close(slow.block)
		if err := <-done; err != nil {
			t.Fatalf("commit after room was freed: %v", err)
		}
		cancel()
		synctest.Wait()
		if got := src.ackedPos(); got != 4 {
			t.Fatalf("acknowledged %d, want 4", got)
		}
	})
}

func TestLostResetsAfterEarlierCommitsAndDuplicatesAreDropped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &source{}
		r := &recorder{}
		p := newPipeline(t, src, Options{}, Target{Name: "r", Sink: r})
		p.Resumed(5)
		mustCommit(t, p, 6, "a")
		mustCommit(t, p, 6, "a") // re-read after a reconnect
		if err := p.Lost(context.Background(), "slot invalidated"); err != nil {
			t.Fatal(err)
		}
		p.Resumed(100)
		mustCommit(t, p, 101, "b")
		synctest.Wait()
		if want := []string{"floor@5", "6[a]", "reset@6", "floor@100", "101[b]"}; !slices.Equal(r.got(), want) {
			t.Fatalf("got %q, want %q", r.got(), want)
		}
		if st := p.Stats(); st.Duplicates != 1 || st.Transactions != 2 || st.Acknowledged != 101 {
			t.Fatalf("stats %+v", st)
		}
	})
}

func TestReadyOnceEverySinkHasTheFloor(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		slow := &recorder{block: make(chan struct{})}
		p := newPipeline(t, &source{}, Options{}, Target{Name: "a", Sink: &recorder{}}, Target{Name: "b", Sink: slow})
		mustCommit(t, p, 1) // occupies b
		p.Resumed(1)
		synctest.Wait()
		select {
		case <-p.Ready():
			t.Fatal("ready before sink b learnt the floor")
		default:
		}
		close(slow.block)
		synctest.Wait()
		select {
		case <-p.Ready():
		default:
			t.Fatal("not ready after every sink learnt the floor")
		}
	})
}

func TestFenceHoldsCommitsUntilProvenAndBatchesThem(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &fencedSource{allow: make(chan struct{})}
		r := &recorder{}
		p := newPipeline(t, src, Options{Fence: true}, Target{Name: "r", Sink: r})
		if !p.Fenced() {
			t.Fatal("a source with a fence is not fenced")
		}
		mustCommit(t, p, 1, "a")
		synctest.Wait() // the fence is waiting for 1
		mustCommit(t, p, 2, "b")
		mustCommit(t, p, 3, "c")
		synctest.Wait()
		if got := r.got(); len(got) != 0 {
			t.Fatalf("the sink got %q before the fence proved anything", got)
		}
		src.allow <- struct{}{}
		synctest.Wait()
		if want := []string{"1[a]"}; !slices.Equal(r.got(), want) {
			t.Fatalf("after the first proof the sink got %q, want %q", r.got(), want)
		}
		src.err = fmt.Errorf("postgres: %w after 1s", cdc.ErrNotVisible)
		src.allow <- struct{}{}
		synctest.Wait()
		if want := []string{"1[a]", "2[b]", "3[c]"}; !slices.Equal(r.got(), want) {
			t.Fatalf("the sink got %q, want %q", r.got(), want)
		}
		if want := [][]cdc.Position{{1}, {2, 3}}; !slices.EqualFunc(src.batches, want, slices.Equal) {
			t.Fatalf("fence batches %v, want %v", src.batches, want)
		}
		if st := p.Stats(); st.FenceWaits != 2 || st.FencedCommits != 1 || st.FenceTimeouts != 1 || st.Acknowledged != 3 {
			t.Fatalf("stats %+v", st)
		}
	})
}

func TestDrainWaitsForEverySink(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &source{}
		slow := &recorder{block: make(chan struct{})}
		p := newPipeline(t, src, Options{}, Target{Name: "slow", Sink: slow})
		mustCommit(t, p, 7, "a")
		drained := make(chan struct{})
		go func() { p.Drain(context.Background()); close(drained) }()
		synctest.Wait()
		select {
		case <-drained:
			t.Fatal("drained before the sink accepted")
		default:
		}
		close(slow.block)
		<-drained
		if got := src.ackedPos(); got != 7 {
			t.Fatalf("acknowledged %d, want 7", got)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		blocked := &recorder{block: make(chan struct{})}
		q := newPipeline(t, &source{}, Options{}, Target{Name: "down", Sink: blocked})
		mustCommit(t, q, 1)
		q.Drain(ctx) // returns at the deadline
		if ctx.Err() == nil {
			t.Fatal("Drain returned before its deadline although nothing was accepted")
		}
	})
}

// TestAbandonDropsWhatIsInFlight: a writer that lost its broker lease
// abandons: Drain returns at once, nothing more is accepted or
// acknowledged, and Commit fails.
func TestAbandonDropsWhatIsInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &source{}
		fast := &recorder{}
		refused := &recorder{failOn: func() bool { return true }}
		p := newPipeline(t, src, Options{}, Target{Name: "sse", Sink: fast}, Target{Name: "broker", Sink: refused})
		p.Resumed(1)
		mustCommit(t, p, 2, "a")
		mustCommit(t, p, 3, "b")
		synctest.Wait()
		p.Abandon()
		p.Drain(context.Background()) // returns: the sinks are stopped
		if got := src.ackedPos(); got != 0 {
			t.Fatalf("acknowledged %d although the broker accepted nothing", got)
		}
		if err := p.Commit(context.Background(), tx{"c"}, commit(4)); !errors.Is(err, context.Canceled) {
			t.Fatalf("commit after Abandon: %v, want context.Canceled", err)
		}
		if want := []string{"floor@1", "2[a]", "3[b]"}; !slices.Equal(fast.got(), want) {
			t.Fatalf("the hub got %q, want %q", fast.got(), want)
		}
	})
}

// TestNilEngineForTaggedCommits: a source that commits transactions
// already tagged (an edge reading the broker) needs no rules.
func TestNilEngineForTaggedCommits(t *testing.T) {
	src := &source{}
	rec := &recorder{}
	p := New(src, nil, []Target{{Name: "sse", Sink: rec}}, Options{})
	defer p.Close()
	p.Resumed(5)
	mustCommit(t, p, 6, "x")
	p.Drain(context.Background())
	if got := src.ackedPos(); got != 6 {
		t.Fatalf("acknowledged %d, want 6", got)
	}
	if st := p.RulesStats(); st.LongTags != 0 || st.Collapses != 0 {
		t.Fatalf("rules stats without rules: %+v", st)
	}
	p.SetEngine(rules.Compile(&rules.Set{}, rules.Options{}))
	if want := []string{"floor@5", "6[x]"}; !slices.Equal(rec.got(), want) {
		t.Fatalf("got %q, want %q", rec.got(), want)
	}
}

// idleRecorder is a recorder that is a sink.Idler too.
type idleRecorder struct{ *recorder }

func (r idleRecorder) Idle(pos cdc.Position) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf("idle@%d", pos))
}

// TestIdleIsAcknowledgedAfterEverySink: an idle position goes to the sinks
// in order with the commits and is acknowledged only once every sink has
// taken it; one at or below what was handed over is ignored.
func TestIdleIsAcknowledgedAfterEverySink(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &source{}
		fast := idleRecorder{&recorder{}}
		slow := &recorder{block: make(chan struct{})}
		p := newPipeline(t, src, Options{}, Target{Name: "slow", Sink: slow}, Target{Name: "fast", Sink: fast})
		p.Resumed(10)
		mustCommit(t, p, 11, "a")
		p.Idle(20)
		p.Idle(15)
		synctest.Wait()
		if want := []string{"floor@10", "11[a]", "idle@20"}; !slices.Equal(fast.got(), want) {
			t.Fatalf("fast sink got %q, want %q", fast.got(), want)
		}
		if got := src.ackedPos(); got != 0 {
			t.Fatalf("acknowledged %d while a sink has accepted nothing", got)
		}
		close(slow.block)
		synctest.Wait()
		if got := src.ackedPos(); got != 20 {
			t.Fatalf("acknowledged %d after both sinks took idle 20", got)
		}
		mustCommit(t, p, 21, "b")
		synctest.Wait()
		if want := []string{"floor@10", "11[a]", "idle@20", "21[b]"}; !slices.Equal(fast.got(), want) {
			t.Fatalf("fast sink got %q, want %q", fast.got(), want)
		}
	})
}

// TestObserveSourceGetsEachCommitsAge: the source delay is the commit's
// age when the source hands it over, once per commit (not for one read
// again after a reconnect), before any fence or sink.
func TestObserveSourceGetsEachCommitsAge(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var got []time.Duration
		src := &fencedSource{allow: make(chan struct{})}
		p := newPipeline(t, src, Options{Fence: true, ObserveSource: func(d time.Duration) { got = append(got, d) }},
			Target{Name: "r", Sink: &recorder{}})
		p.Resumed(1)
		now := time.Now()
		for i, age := range []time.Duration{3 * time.Millisecond, 250 * time.Millisecond} {
			c := cdc.Commit{Position: cdc.Position(2 + i), Time: now.Add(-age)}
			if err := p.Commit(context.Background(), tx{"a"}, c); err != nil {
				t.Fatal(err)
			}
		}
		if err := p.Commit(context.Background(), tx{"a"}, cdc.Commit{Position: 3, Time: now}); err != nil {
			t.Fatal(err)
		}
		// Observed while the fence still holds both commits.
		if want := []time.Duration{3 * time.Millisecond, 250 * time.Millisecond}; !slices.Equal(got, want) {
			t.Fatalf("observed %v, want %v", got, want)
		}
		close(src.allow)
	})
}

// TestOneDeliveryAtATime: Part B — never two requests to a target at once:
// what comes while a delivery hangs waits for it, then goes in order.
func TestOneDeliveryAtATime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		slow := &recorder{block: make(chan struct{})}
		p := newPipeline(t, &source{}, Options{}, Target{Name: "slow", Sink: slow})
		p.Resumed(0)
		mustCommit(t, p, 1, "a")
		synctest.Wait() // the first delivery hangs
		mustCommit(t, p, 2, "b")
		mustCommit(t, p, 3, "c")
		synctest.Wait()
		if n := slow.most.Load(); n != 1 {
			t.Fatalf("%d deliveries at once", n)
		}
		close(slow.block)
		synctest.Wait()
		if want := []string{"floor@0", "1[a]", "2[b]", "3[c]"}; !slices.Equal(slow.got(), want) {
			t.Fatalf("got %q, want %q", slow.got(), want)
		}
		if n := slow.most.Load(); n != 1 {
			t.Fatalf("%d deliveries at once", n)
		}
	})
}

// TestRetryBackoffCapsAt30s: Part B — a failing target is retried with
// exponential backoff, capped at 30 s (the default BackoffMax).
func TestRetryBackoffCapsAt30s(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls []time.Time
		hook := &recorder{failOn: func() bool { calls = append(calls, time.Now()); return true }}
		p := newPipeline(t, &source{}, Options{}, Target{Name: "webhook", Sink: hook})
		p.Resumed(0)
		mustCommit(t, p, 1, "a")
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		if len(calls) < 20 {
			t.Fatalf("%d attempts in 10 minutes", len(calls))
		}
		var longest time.Duration
		for i := 1; i < len(calls); i++ {
			longest = max(longest, calls[i].Sub(calls[i-1]))
		}
		// Full steps of 30 s draw from 15–30 s.
		if longest > 30*time.Second || longest < 15*time.Second {
			t.Fatalf("longest wait between attempts %v, want the 30 s cap's 15–30 s", longest)
		}
		if last := calls[len(calls)-1].Sub(calls[len(calls)-2]); last < 15*time.Second {
			t.Fatalf("waits did not grow to the cap: the last was %v", last)
		}
	})
}
