// Package backoff is tagstream's one retry delay: a jittered exponential
// backoff shared by the readers' reconnects and the sinks' retries.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff yields delays that double from Min up to Max, each drawn
// uniformly from the upper half of the current step, so that many clients
// retrying at once spread out. The zero value is not usable: set Min and Max.
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Next returns the delay before the next attempt.
func (b *Backoff) Next() time.Duration {
	if b.cur == 0 {
		b.cur = max(b.Min, time.Nanosecond)
	} else {
		b.cur = min(2*b.cur, max(b.Max, b.Min))
	}
	return b.cur/2 + rand.N(b.cur/2+1)
}

// Reset starts the sequence again at Min (after a success).
func (b *Backoff) Reset() { b.cur = 0 }

// Sleep waits d or until ctx ends; it reports whether the full d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
