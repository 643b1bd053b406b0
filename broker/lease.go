package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tagstream/tagstream/internal/backoff"
)

// acquireScript takes the lease when nobody holds it, with a token from
// the fencing counter: KEYS lease, fence; ARGV instance id, lease ms.
var acquireScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local tok = redis.call('INCR', KEYS[2]) .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], tok, 'PX', ARGV[2])
return tok`)

// renewScript extends the lease of its holder: 1. A lease that vanished
// (the broker restarted empty) is taken back by the holder whose own clock
// says it has not expired, and the counter, restarted with the broker, is
// moved past its token so that tokens keep growing: 2. Another holder: 0.
// KEYS lease, fence; ARGV token, ms.
var renewScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if cur then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local n = tonumber(string.match(ARGV[1], '^(%d+):'))
if n and n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
return 2`)

// releaseScript deletes the lease if it is still the caller's.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`)

// LeaseConfig configures a Lease.
type LeaseConfig struct {
	URL    string        // redis://…
	Stream string        // default DefaultStream
	TTL    time.Duration // default DefaultLease
	Logger *slog.Logger
}

// Lease makes one of several processes reading the same database the
// writer: Acquire waits (a standby) until it holds the lease, Keep renews
// it every TTL/3 and returns once it is lost. A process must stop reading
// the database as soon as Keep returns: from then on its appends are
// refused (the append script checks the token) and another process may
// take over.
type Lease struct {
	client *redis.Client
	keys   keys
	ttl    time.Duration
	id     string
	log    *slog.Logger

	mu    sync.Mutex
	token string
	held  atomic.Bool
}

// Held reports whether this process holds the lease (as far as it knows:
// between Acquire and the loss Keep reports, or Release).
func (l *Lease) Held() bool { return l.held.Load() }

// NewLease validates cfg; it connects lazily.
func NewLease(cfg LeaseConfig) (*Lease, error) {
	if cfg.Stream == "" {
		cfg.Stream = DefaultStream
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultLease
	}
	if cfg.TTL < 30*time.Millisecond {
		return nil, fmt.Errorf("%w: lease %s is too short", ErrConfig, cfg.TTL)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c, err := newClient(cfg.URL, max(cfg.TTL/3, time.Second))
	if err != nil {
		return nil, err
	}
	return &Lease{client: c, keys: keysFor(cfg.Stream), ttl: cfg.TTL, id: randomID(), log: log}, nil
}

// Token is the fencing token held, "" before Acquire succeeded.
func (l *Lease) Token() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.token
}

// poll is how often a standby tries: a tenth of the lease, so that it
// takes over well within one lease after the holder's last renewal.
func (l *Lease) poll() time.Duration { return max(l.ttl/10, 10*time.Millisecond) }

// Acquire waits until this process holds the lease, or ctx ends.
func (l *Lease) Acquire(ctx context.Context) (string, error) {
	bo := backoff.Backoff{Min: l.poll(), Max: 5 * time.Second}
	waiting := false
	for {
		tok, err := acquireScript.Run(ctx, l.client, []string{l.keys.lease, l.keys.fence}, l.id, l.ttl.Milliseconds()).Text()
		switch {
		case err == nil:
			l.mu.Lock()
			l.token = tok
			l.mu.Unlock()
			l.held.Store(true)
			l.log.Info("broker: lease acquired: this process is the active writer", logToken, tok)
			return tok, nil
		case errors.Is(err, redis.Nil):
			bo.Reset()
			if !waiting {
				waiting = true
				l.log.Info("broker: standby: another process holds the lease; waiting to take over", logStream, l.keys.stream)
			}
			if !backoff.Sleep(ctx, l.poll()) {
				return "", ctx.Err()
			}
		default:
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			d := bo.Next()
			l.log.Warn("broker: cannot reach the broker for the lease; retrying", logErr, err, "retry_in", d)
			if !backoff.Sleep(ctx, d) {
				return "", ctx.Err()
			}
		}
	}
}

// Keep renews the lease every TTL/3 until ctx ends (nil) or the lease is
// lost (an error wrapping ErrLeaseLost): another token holds it, or no
// renewal succeeded for a whole TTL (this process cannot know whether it
// expired).
func (l *Lease) Keep(ctx context.Context) error {
	err := l.keep(ctx)
	if err != nil {
		l.held.Store(false)
	}
	return err
}

func (l *Lease) keep(ctx context.Context) error {
	tok := l.Token()
	lastOK := time.Now()
	t := time.NewTicker(l.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if since := time.Since(lastOK); since >= l.ttl {
			return fmt.Errorf("%w: not renewed for %s (the lease is %s)", ErrLeaseLost, since.Round(time.Millisecond), l.ttl)
		}
		sent := time.Now()
		rctx, cancel := context.WithTimeout(ctx, l.ttl-time.Since(lastOK))
		n, err := renewScript.Run(rctx, l.client, []string{l.keys.lease, l.keys.fence}, tok, l.ttl.Milliseconds()).Int()
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			l.log.Warn("broker: lease renewal failed; retrying", logErr, err)
		case n == 0:
			return fmt.Errorf("%w: another process holds it now", ErrLeaseLost)
		default:
			if n == 2 {
				l.log.Warn("broker: the lease had vanished (the broker restarted empty?); taken back", logToken, tok)
			}
			l.log.Debug("broker: lease renewed", logToken, tok, "took", time.Since(sent))
			lastOK = sent
		}
	}
}

// Release gives the lease up when this process still holds it, so that a
// standby takes over at once.
func (l *Lease) Release(ctx context.Context) {
	tok := l.Token()
	if tok == "" {
		return
	}
	l.held.Store(false)
	if err := releaseScript.Run(ctx, l.client, []string{l.keys.lease}, tok).Err(); err != nil {
		l.log.Warn("broker: releasing the lease failed; a standby takes over when it expires", logErr, err)
	}
}

// Close closes the connections.
func (l *Lease) Close() error { return l.client.Close() }
