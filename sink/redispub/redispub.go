// Package redispub is a sink that PUBLISHes every tag of each committed
// transaction, as the bare tag string, on a Redis channel: the payload
// Redwood's RedisLiveQueryStore expects on `live-query-invalidations`
// ("Auction:42", "Query.auctions"), and what anything that SUBSCRIBEs can
// read.
package redispub

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/sink"
)

// DefaultChannel is the channel Redwood's live-query store listens on.
const DefaultChannel = "live-query-invalidations"

// ErrConfig is wrapped by configuration errors.
var ErrConfig = errors.New("redis publish: invalid configuration")

// Config configures a Sink.
type Config struct {
	URL     string // redis://[user:pass@]host:port[/db] (rediss:// for TLS)
	Channel string // default DefaultChannel
	// ResetKeys are published when continuity is lost (nothing when empty).
	ResetKeys []string
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
		return nil, fmt.Errorf("%w: want redis://[user:pass@]host:port[/db]: %v", ErrConfig, err)
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
	return &Sink{cfg: cfg, client: redis.NewClient(opts), target: opts.Addr}, nil
}

// String names the server.
func (s *Sink) String() string { return "redis " + s.target }

// Deliver publishes the union of the batch's tags in one pipelined round
// trip; Redis has accepted them when it returns nil.
func (s *Sink) Deliver(ctx context.Context, batch []sink.Txn) error {
	return s.publish(ctx, sink.Union(batch))
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
