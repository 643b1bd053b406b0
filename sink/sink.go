// Package sink defines where committed transactions' tags go: the SSE hub
// (stream.Hub), webhooks (sink/webhook), Redis PUBLISH (sink/redispub) and
// the Redis Streams broker (broker). The pipeline hands every committed
// transaction to every sink, in position order, and acknowledges a position
// to the database only once every sink has accepted it.
package sink

import (
	"context"
	"slices"
	"time"

	"github.com/tagstream/tagstream/cdc"
)

// Txn is one committed transaction as the sinks see it.
type Txn struct {
	Position cdc.Position
	Time     time.Time // commit time reported by the database
	// Tags are sorted and de-duplicated; empty when the transaction
	// produced none (it still advances the position). Shared by every
	// sink: read-only.
	Tags []string
}

// Sink receives committed transactions. The pipeline calls its methods from
// one goroutine per sink, one call at a time, in position order.
type Sink interface {
	// Deliver hands over one or more consecutive transactions (some may
	// have no tags) and returns nil once the destination has accepted all
	// of them. An error means the batch is not known to be accepted: the
	// pipeline retries it with backoff (or, past the sink's give-up bound,
	// stops holding the database for it and resets the sink once it
	// answers again).
	Deliver(ctx context.Context, batch []Txn) error
	// Reset tells the destination that continuity was lost up to pos:
	// whatever it caches must be treated as invalidated. Errors are
	// retried like Deliver's.
	Reset(ctx context.Context, reason string, pos cdc.Position) error
}

// Resumer is implemented by sinks that need the continuity floor: the
// position the source (re)started from, after which every transaction is
// delivered. It is called in order with Deliver and Reset.
type Resumer interface {
	Resumed(pos cdc.Position)
}

// Idler is implemented by sinks that track positions reached without a
// transaction (cdc.Idler): every transaction up to pos was delivered before.
// It is called in order with Deliver and Reset.
type Idler interface {
	Idle(pos cdc.Position)
}

// Progresser is implemented by sinks that track the source's current end
// (the server's WAL end or binlog head) ahead of the delivered transactions.
// It may be called from the reader's goroutine, out of order with Deliver.
type Progresser interface {
	Progress(end cdc.Position)
}

// Union returns the sorted, de-duplicated union of the batch's tags. A
// single transaction's tags are returned as they are (not copied).
func Union(batch []Txn) []string {
	var (
		only  []string
		count int
	)
	for _, t := range batch {
		if len(t.Tags) > 0 {
			if count == 0 {
				only = t.Tags
			}
			count++
		}
	}
	if count <= 1 {
		return only
	}
	seen := make(map[string]struct{})
	var out []string
	for _, t := range batch {
		for _, tag := range t.Tags {
			if _, ok := seen[tag]; !ok {
				seen[tag] = struct{}{}
				out = append(out, tag)
			}
		}
	}
	slices.Sort(out)
	return out
}
