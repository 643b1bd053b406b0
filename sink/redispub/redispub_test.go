package redispub

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/sink"
	"github.com/tagstream/tagstream/testcontainers"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// subscribe returns a function that waits for the next n messages on
// channel of the server at url.
func subscribe(t *testing.T, url, channel string) func(n int) []string {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()
	ps := c.Subscribe(ctx, channel)
	t.Cleanup(func() { ps.Close() })
	if _, err := ps.Receive(ctx); err != nil { // the subscription confirmation
		t.Fatal(err)
	}
	msgs := ps.Channel()
	return func(n int) []string {
		t.Helper()
		var got []string
		for len(got) < n {
			select {
			case m := <-msgs:
				got = append(got, m.Payload)
			case <-time.After(10 * time.Second):
				t.Fatalf("got %q, waiting for %d messages", got, n)
			}
		}
		return got
	}
}

func TestPublishesBareTagsAndResetKeys(t *testing.T) {
	srv := testcontainers.Redis(t)
	next := subscribe(t, srv.URL(0), DefaultChannel)
	s, err := New(Config{URL: srv.URL(0), ResetKeys: []string{"Query.auctions", "Query.bids"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	batch := []sink.Txn{
		{Position: 1, Time: time.Now(), Tags: []string{"Auction:42", "Query.auctions"}},
		{Position: 2, Time: time.Now()},
		{Position: 3, Time: time.Now(), Tags: []string{"Query.auctions", "Bid:7"}},
	}
	if err := s.Deliver(ctx, batch); err != nil {
		t.Fatal(err)
	}
	if got, want := next(3), []string{"Auction:42", "Bid:7", "Query.auctions"}; !slices.Equal(got, want) {
		t.Fatalf("published %q, want %q", got, want)
	}
	if err := s.Reset(ctx, "binlog purged", 3); err != nil {
		t.Fatal(err)
	}
	if got, want := next(2), []string{"Query.auctions", "Query.bids"}; !slices.Equal(got, want) {
		t.Fatalf("reset published %q, want %q", got, want)
	}
}

func TestServerDownIsAnErrorThenWorksAfterRestart(t *testing.T) {
	srv := testcontainers.Redis(t)
	s, err := New(Config{URL: srv.URL(0), Channel: "inv", Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	one := []sink.Txn{{Position: cdc.Position(1), Time: time.Now(), Tags: []string{"a"}}}
	if err := s.Deliver(ctx, one); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	err = s.Deliver(ctx, one)
	if err == nil || !strings.HasPrefix(err.Error(), "redis publish to "+srv.Addr+": ") {
		t.Fatalf("publish to a dead server: %v", err)
	}
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	next := subscribe(t, srv.URL(0), "inv")
	if err := s.Deliver(ctx, one); err != nil {
		t.Fatalf("publish after restart: %v", err)
	}
	if got := next(1); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("published %q after restart", got)
	}
}

func TestConfigError(t *testing.T) {
	_, err := New(Config{URL: "http://localhost:6379"})
	if !errors.Is(err, ErrConfig) || err.Error() != "redis publish: invalid configuration: want redis://[user:pass@]host:port[/db]: redis: invalid URL scheme: http" {
		t.Fatalf("error %v", err)
	}
}

// TestWildcardPublishesResetKeys: Redwood matches keys exactly, so a batch
// with a wildcard tag also publishes the reset keys (once each, after the
// tags), and one without a wildcard does not.
func TestWildcardPublishesResetKeys(t *testing.T) {
	srv := testcontainers.Redis(t)
	next := subscribe(t, srv.URL(0), DefaultChannel)
	var logs strings.Builder
	s, err := New(Config{URL: srv.URL(0), ResetKeys: []string{"Query.auctions", "Query.bids"},
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	shared := []string{"Auction:*", "Query.auctions"}
	if err := s.Deliver(ctx, []sink.Txn{{Position: 1, Time: time.Now(), Tags: shared}}); err != nil {
		t.Fatal(err)
	}
	if got, want := next(3), []string{"Auction:*", "Query.auctions", "Query.bids"}; !slices.Equal(got, want) {
		t.Fatalf("published %q, want %q", got, want)
	}
	if !slices.Equal(shared, []string{"Auction:*", "Query.auctions"}) {
		t.Fatalf("the batch's shared tags were changed: %q", shared)
	}
	if err := s.Deliver(ctx, []sink.Txn{{Position: 2, Time: time.Now(), Tags: []string{"Bid:7"}}}); err != nil {
		t.Fatal(err)
	}
	if got, want := next(1), []string{"Bid:7"}; !slices.Equal(got, want) {
		t.Fatalf("published %q, want %q", got, want)
	}
	if logs.Len() != 0 {
		t.Fatalf("logged with reset keys: %s", logs.String())
	}

	// Without reset keys: the wildcard as it is, and the warning once, at New.
	logs.Reset()
	s2, err := New(Config{URL: srv.URL(0), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if err := s2.Deliver(ctx, []sink.Txn{{Position: 3, Time: time.Now(), Tags: []string{"Auction:*"}}}); err != nil {
		t.Fatal(err)
	}
	if got, want := next(1), []string{"Auction:*"}; !slices.Equal(got, want) {
		t.Fatalf("published %q, want %q", got, want)
	}
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 || !strings.Contains(logs.String(), "--redis-reset-keys") {
		t.Fatalf("want one warning naming --redis-reset-keys, got:\n%s", logs.String())
	}
}
