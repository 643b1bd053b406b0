// Package broker scales tagstream out on Redis Streams: the one process
// that reads the database appends every committed transaction to a stream
// (Appender, a sink of its pipeline), and edge nodes read that stream into
// their own hubs (Reader, a cdc.Source) to serve /events without a
// database connection.
//
// Keys, for a stream named S:
//
//	S        the stream. Entry id "<position>-0" for a transaction (ids are
//	         the database's positions, the same on every node; Redis refuses
//	         an id at or below its top, so the stream never goes backwards),
//	         "<position>-<n>" for a reset. Fields: k kind (c commit, f floor,
//	         r reset), e epoch, p the id of the entry before it in the
//	         stream ("" when it was empty), w the writer's lease token, ts
//	         commit time (Unix ns), g tags (JSON array), r reset reason.
//	S:epoch  the history's epoch, a random id created by the writer that
//	         finds none. A new epoch means the broker lost its history
//	         (restarted without persistence, keys deleted): edges reset.
//	S:lease  the writer's lease: its fencing token, with an expiry. The
//	         append script checks it, so a writer whose lease expired (a
//	         paused or partitioned process) cannot append.
//	S:fence  the counter the fencing tokens come from.
//
// The chain of p fields lets an edge prove continuity: an entry whose p is
// not the last id the edge read means entries were trimmed or deleted in
// between, and the edge's clients get a reset.
package broker

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tagstream/tagstream/cdc"
)

// DefaultStream is the stream's default key.
const DefaultStream = "tagstream"

// DefaultLease is the default lease of the writer.
const DefaultLease = 10 * time.Second

// Errors callers branch on.
var (
	// ErrConfig is wrapped by configuration errors.
	ErrConfig = errors.New("broker: invalid configuration")
	// ErrLeaseLost means another process may be the writer now: this one
	// must stop reading the database.
	ErrLeaseLost = errors.New("broker: lease lost")
	// ErrFenced is returned by an append refused because the lease's token
	// is not this writer's.
	ErrFenced = errors.New("broker: append refused: this process does not hold the lease")
)

// Log keys.
const (
	logErr    = "err"
	logToken  = "token"
	logEpoch  = "epoch"
	logStream = "stream"
	logReason = "reason"
)

// Entry kinds.
const (
	kindCommit = "c"
	kindFloor  = "f"
	kindReset  = "r"
)

// keys names the keys of one stream.
type keys struct {
	stream, epoch, lease, fence string
}

func keysFor(stream string) keys {
	return keys{stream: stream, epoch: stream + ":epoch", lease: stream + ":lease", fence: stream + ":fence"}
}

// newClient parses url (redis://[user:pass@]host:port[/db], rediss:// for
// TLS) into a client whose commands are tried once: callers retry with
// their own backoff.
func newClient(url string, timeout time.Duration) (*redis.Client, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("%w: want redis://[user:pass@]host:port[/db]: %w", ErrConfig, err)
	}
	opts.MaxRetries = -1
	opts.DialTimeout = timeout
	opts.ReadTimeout = timeout
	opts.WriteTimeout = timeout
	opts.PoolSize = 4
	return redis.NewClient(opts), nil
}

// entryID is the stream id of a transaction at pos. Position 0 has no
// valid id of its own ("0-0" is refused): it becomes "0-1".
func entryID(pos cdc.Position) string {
	if pos == 0 {
		return "0-1"
	}
	return strconv.FormatUint(uint64(pos), 10) + "-0"
}

// idPosition is the position of a stream id: its first part.
func idPosition(id string) (cdc.Position, error) {
	ms, _, _ := strings.Cut(id, "-")
	n, err := strconv.ParseUint(ms, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("broker: stream id %q is not a position", id)
	}
	return cdc.Position(n), nil
}

func randomID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
