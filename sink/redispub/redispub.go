// Package redispub is a sink that PUBLISHes every tag of each committed
// transaction, as the bare tag string, on a Redis channel: the payload
// Redwood's RedisLiveQueryStore expects on `live-query-invalidations`
// ("Auction:42", "Query.auctions"), and what anything that SUBSCRIBEs can
// read.
//
// Redwood's store matches a published key against the keys of its live
// queries exactly: a wildcard tag such as `Auction:*` (a change whose key
// tagstream could not know, a truncate) reaches no query. So whenever a
// batch holds a wildcard tag, the reset keys are published with it
// (`--redis-reset-keys Query.auctions,…`: the keys that make every live
// query refetch). Without reset keys a wildcard tag under-invalidates, which
// New warns about once.
package redispub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/sink"
)

// DefaultChannel is the channel Redwood's live-query store listens on.
const DefaultChannel = "live-query-invalidations"

// NoResetKeysWarning is logged by New when no reset keys are configured.
const NoResetKeysWarning = "redis publish: no reset keys: wildcard tags (Auction:*) and resets cannot reach Redwood live queries, which match keys exactly; set --redis-reset-keys to the keys your live queries watch (Query.auctions,…)"

// ErrConfig is wrapped by configuration errors.
var ErrConfig = errors.New("redis publish: invalid configuration")

// Config configures a Sink.
type Config struct {
	URL     string // redis://[user:pass@]host:port[/db] (rediss:// for TLS)
	Channel string // default DefaultChannel
	// ResetKeys are published when continuity is lost, and with every
	// batch that holds a wildcard tag (nothing when empty).
	ResetKeys []string
	// Logger receives the warning that, without ResetKeys, wildcard tags
	// and resets reach no Redwood live query (nil: no warning).
	Logger *slog.Logger
	// Timeout bounds each round trip (default 5 s).
	Timeout time.Duration
}

// Sink publishes to one Redis server.
type Sink struct {
	cfg    Config
	client *redis.Client
	target string
}

var _ sink.Sink = (*Sink)(nil)

// New validates cfg and returns a Sink; it connects lazily.
func New(cfg Config) (*Sink, error) {
	opts, err := redis.ParseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("%w: want redis://[user:pass@]host:port[/db]: %w", ErrConfig, err)
	}
	if cfg.Channel == "" {
		cfg.Channel = DefaultChannel
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	// The pipeline retries with its own backoff: one attempt per call.
	opts.MaxRetries = -1
	opts.DialTimeout = cfg.Timeout
	opts.ReadTimeout = cfg.Timeout
	opts.WriteTimeout = cfg.Timeout
	opts.PoolSize = 2
	if len(cfg.ResetKeys) == 0 && cfg.Logger != nil {
		cfg.Logger.Warn(NoResetKeysWarning, "channel", cfg.Channel)
	}
	return &Sink{cfg: cfg, client: redis.NewClient(opts), target: opts.Addr}, nil
}

// String names the server.
func (s *Sink) String() string { return "redis " + s.target }

// Deliver publishes the union of the batch's tags in one pipelined round
// trip, and the reset keys too when a tag is a wildcard; Redis has accepted
// them when it returns nil.
func (s *Sink) Deliver(ctx context.Context, batch []sink.Txn) error {
	return s.publish(ctx, s.withResetKeys(sink.Union(batch)))
}

// withResetKeys appends the reset keys tags lacks when one of tags is a
// wildcard. tags may be shared: a new slice is returned.
func (s *Sink) withResetKeys(tags []string) []string {
	if len(s.cfg.ResetKeys) == 0 || !slices.ContainsFunc(tags, func(t string) bool { return strings.Contains(t, "*") }) {
		return tags
	}
	out := slices.Clip(tags)
	for _, k := range s.cfg.ResetKeys {
		if !slices.Contains(tags, k) && !slices.Contains(out[len(tags):], k) {
			out = append(out, k)
		}
	}
	return out
}

// Reset publishes every reset key.
func (s *Sink) Reset(ctx context.Context, _ string, _ cdc.Position) error {
	return s.publish(ctx, s.cfg.ResetKeys)
}

func (s *Sink) publish(ctx context.Context, msgs []string) error {
	if len(msgs) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, m := range msgs {
			p.Publish(ctx, s.cfg.Channel, m)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("redis publish to %s: %w", s.target, err)
	}
	return nil
}

// Close closes the connections.
func (s *Sink) Close() error { return s.client.Close() }
