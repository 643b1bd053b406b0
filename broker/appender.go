package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/sink"
)

// appendScript appends entries for the lease holder of the right epoch,
// skipping those at or below the stream's top (already there: a writer
// that took over reads again from the database's acknowledged position).
// A reset goes just above the top when its own id is not. Redis scripts do
// not roll back, so nothing may fail half-way: ids are compared here rather
// than left to XADD.
//
//	KEYS  lease, stream, epoch
//	ARGV  token, epoch, maxlen, then per entry: id, kind, ts, tags, reason
//	reply the number of entries added; errors FENCED, EPOCH
var appendScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('FENCED lease not held') end
if redis.call('GET', KEYS[3]) ~= ARGV[2] then return redis.error_reply('EPOCH history replaced') end
local top = ''
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #last > 0 then top = last[1][1] end
local function parse(id)
  local d = string.find(id, '-', 1, true)
  return string.sub(id, 1, d - 1), tonumber(string.sub(id, d + 1))
end
local function above(a, b)
  if b == '' then return true end
  local am, as = parse(a)
  local bm, bs = parse(b)
  if #am ~= #bm then return #am > #bm end
  if am ~= bm then return am > bm end
  return as > bs
end
local added = 0
for i = 4, #ARGV, 5 do
  local id, kind = ARGV[i], ARGV[i + 1]
  if kind == 'r' and not above(id, top) then
    local m, s = parse(top)
    id = m .. '-' .. string.format('%d', s + 1)
  end
  if above(id, top) then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], id, 'k', kind, 'e', ARGV[2], 'p', top,
      'w', ARGV[1], 'ts', ARGV[i + 2], 'g', ARGV[i + 3], 'r', ARGV[i + 4])
    top = id
    added = added + 1
  end
end
return added`)

// AppenderConfig configures an Appender.
type AppenderConfig struct {
	URL    string // redis://…
	Stream string // default DefaultStream
	// MaxLen trims the stream to about this many entries (XADD MAXLEN ~):
	// about the replay window. Default 20000.
	MaxLen int64
	// Token returns the lease's fencing token (Lease.Token).
	Token func() string
	// Timeout bounds each round trip (default 5 s).
	Timeout time.Duration
	Logger  *slog.Logger
}

// Appender is the pipeline sink of the writer: each Deliver appends the
// batch in one script call and returns nil once Redis has them, so the
// database is acknowledged only after the broker accepted.
//
// Every transaction with tags is appended; of those without, the last of
// each batch is (a client's cursor may be such a position: an edge must
// know it). The position the source resumed from is appended as a floor
// entry before the next batch.
type Appender struct {
	cfg    AppenderConfig
	client *redis.Client
	keys   keys
	log    *slog.Logger
	target string

	epoch     string
	delivered cdc.Position // last position the broker accepted
	floor     cdc.Position // Resumed, to append before the next batch
	hasFloor  bool
	args      []any // scratch
}

var (
	_ sink.Sink    = (*Appender)(nil)
	_ sink.Resumer = (*Appender)(nil)
	_ sink.Idler   = (*Appender)(nil)
)

// NewAppender validates cfg; it connects lazily.
func NewAppender(cfg AppenderConfig) (*Appender, error) {
	if cfg.Stream == "" {
		cfg.Stream = DefaultStream
	}
	if cfg.MaxLen <= 0 {
		cfg.MaxLen = 20000
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Token == nil {
		return nil, fmt.Errorf("%w: an appender needs the lease's token", ErrConfig)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c, err := newClient(cfg.URL, cfg.Timeout)
	if err != nil {
		return nil, err
	}
	return &Appender{cfg: cfg, client: c, keys: keysFor(cfg.Stream), log: log, target: c.Options().Addr}, nil
}

// String names the sink in logs and metrics.
func (a *Appender) String() string { return "broker " + a.target }

// Resumed appends the position the source resumed from as a floor entry
// (skipped when the stream is already past it, as after a takeover), so
// that edges judge cursors by it before the first transaction arrives.
// When the broker does not take it now, it goes before the next batch.
func (a *Appender) Resumed(pos cdc.Position) {
	a.floor, a.hasFloor = pos, true
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.Timeout)
	defer cancel()
	if err := a.append(ctx, []any{entryID(pos), kindFloor, now(), "", ""}); err != nil {
		a.log.Warn("broker: appending the floor failed; it goes with the next transaction", logErr, err)
		return
	}
	a.hasFloor = false
}

// Deliver appends the batch.
func (a *Appender) Deliver(ctx context.Context, batch []sink.Txn) error {
	if len(batch) == 0 {
		return nil
	}
	args := a.args[:0]
	if a.hasFloor {
		args = append(args, entryID(a.floor), kindFloor, now(), "", "")
	}
	for i, t := range batch {
		if len(t.Tags) == 0 && i < len(batch)-1 {
			continue
		}
		g := "[]"
		if len(t.Tags) > 0 {
			b, err := json.Marshal(t.Tags)
			if err != nil {
				return err
			}
			g = string(b)
		}
		args = append(args, entryID(t.Position), kindCommit, strconv.FormatInt(t.Time.UnixNano(), 10), g, "")
	}
	a.args = args
	if err := a.append(ctx, args); err != nil {
		return err
	}
	a.hasFloor = false
	a.delivered = batch[len(batch)-1].Position
	clear(a.args)
	return nil
}

// Idle appends an empty transaction at pos, a position the source reached
// with nothing to deliver (a quiet Postgres reports its WAL end), so that the
// edges' ends follow the writer's: a client of the writer whose ping carried
// pos resumes on an edge instead of being reset. Best effort: the next batch
// moves the edges on as well.
func (a *Appender) Idle(pos cdc.Position) {
	if pos <= a.delivered {
		return
	}
	// An empty transaction, as Deliver appends the last of a batch.
	if err := a.Deliver(context.Background(), []sink.Txn{{Position: pos, Time: time.Now()}}); err != nil {
		a.log.Debug("broker: appending an idle position failed; the next transaction moves the edges on", logErr, err)
	}
}

// Reset appends a reset entry: every edge resets its clients.
func (a *Appender) Reset(ctx context.Context, reason string, pos cdc.Position) error {
	return a.append(ctx, []any{strconv.FormatUint(uint64(pos), 10) + "-1", kindReset, now(), "", reason})
}

// now is the ts of entries that are not transactions.
func now() string { return strconv.FormatInt(time.Now().UnixNano(), 10) }

// append runs the script, first learning (or starting) the epoch. When
// the epoch changed under it (the broker lost its history), the new
// history starts with a floor entry at the last position the broker had
// accepted: every later transaction follows it.
func (a *Appender) append(ctx context.Context, entries []any) error {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.Timeout)
	defer cancel()
	for attempt := 0; ; attempt++ {
		if a.epoch == "" {
			if err := a.learnEpoch(ctx); err != nil {
				return err
			}
		}
		args := append([]any{a.cfg.Token(), a.epoch, a.cfg.MaxLen}, entries...)
		err := appendScript.Run(ctx, a.client, []string{a.keys.lease, a.keys.stream, a.keys.epoch}, args...).Err()
		switch {
		case err == nil:
			return nil
		case strings.HasPrefix(err.Error(), "FENCED"):
			return ErrFenced
		case strings.HasPrefix(err.Error(), "EPOCH") && attempt == 0:
			a.log.Warn("broker: the stream's history was replaced (broker restarted without persistence, or its keys deleted): edges reset their clients", logEpoch, a.epoch)
			a.epoch = ""
			if !a.hasFloor { // a pending floor is in entries already
				entries = append([]any{entryID(a.delivered), kindFloor, now(), "", ""}, entries...)
			}
		default:
			return fmt.Errorf("broker: append to %s: %w", a.target, err)
		}
	}
}

// learnEpoch reads the epoch, creating one when there is none.
func (a *Appender) learnEpoch(ctx context.Context) error {
	fresh := randomID()
	created, err := a.client.SetNX(ctx, a.keys.epoch, fresh, 0).Result()
	if err != nil {
		return fmt.Errorf("broker: epoch on %s: %w", a.target, err)
	}
	if created {
		a.epoch = fresh
		a.log.Info("broker: new history epoch", logEpoch, fresh, logStream, a.keys.stream)
		return nil
	}
	ep, err := a.client.Get(ctx, a.keys.epoch).Result()
	if errors.Is(err, redis.Nil) {
		return fmt.Errorf("broker: epoch on %s vanished; retrying", a.target)
	}
	if err != nil {
		return fmt.Errorf("broker: epoch on %s: %w", a.target, err)
	}
	a.epoch = ep
	return nil
}

// Close closes the connections.
func (a *Appender) Close() error { return a.client.Close() }
