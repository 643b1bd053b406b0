// Package mysql reads a MySQL or MariaDB server's row-based binary log as a
// replica would (go-mysql's raw replication.BinlogSyncer) and hands every
// committed transaction's row changes to a cdc.Handler. After the pipeline
// acknowledges a transaction, its GTID set and file:pos are written to a
// checkpoint file so that a restart resumes where the hub left off.
package mysql

import (
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ErrConfig is wrapped by configuration problems: a bad DSN or option, a
// server setting or grant that the reader needs (the CLI exits 2).
var ErrConfig = errors.New("mysql: configuration")

// Config configures a Reader.
type Config struct {
	// DSN is mysql://user:pass@host:port/db or mariadb://…; db is the
	// default schema for unqualified table names in rules.
	DSN string
	// ServerID identifies this replica to the server; it must differ from
	// every other replica's. 0: derived from the host name.
	ServerID uint32
	// StateDir holds the checkpoint file (default ./.tagstream), one file
	// per source (host, port, database).
	StateDir string
	// Heartbeat is the period the server sends heartbeats at when idle
	// (default 5 s, or a third of ReadTimeout when that is shorter);
	// ReadTimeout drops a connection that stays silent longer (default
	// 3 × Heartbeat).
	Heartbeat, ReadTimeout time.Duration
	// BackoffMin and BackoffMax bound the jittered exponential backoff
	// between reconnects (default 250 ms and 30 s).
	BackoffMin, BackoffMax time.Duration
	// RetentionInterval is how often the binlog after the checkpoint is
	// measured for RetainedBytes (default 15s).
	RetentionInterval time.Duration
	// FenceTimeout bounds WaitVisible: how long it waits for the engine
	// commit of a batch to be proven (default 1s).
	FenceTimeout time.Duration
	// DryRun (`tagstream tail`) starts at the binlog head and reads or
	// writes no checkpoint file: it leaves nothing behind. Give it a
	// ServerID of its own: a replica registering with another's server_id
	// disconnects that one.
	DryRun bool
	Logger *slog.Logger
}

// Defaults.
const (
	DefaultStateDir   = ".tagstream"
	DefaultHeartbeat  = 5 * time.Second
	DefaultBackoffMin = 250 * time.Millisecond
	DefaultBackoffMax = 30 * time.Second
)

// drainTimeout bounds how long a stopping reader waits for its handler to
// finish the transactions it was handed: what is not acknowledged by then is
// re-read at the next start.
const drainTimeout = 10 * time.Second

// DSN is a parsed mysql:// or mariadb:// connection string.
type DSN struct {
	User     string
	Password string
	Host     string
	Port     int
	Database string
}

// Addr is host:port.
func (d DSN) Addr() string { return net.JoinHostPort(d.Host, strconv.Itoa(d.Port)) }

// String renders the DSN without its password.
func (d DSN) String() string {
	return "mysql://" + url.User(d.User).String() + "@" + d.Addr() + "/" + d.Database
}

// ParseDSN parses mysql://user:pass@host:port/db (or mariadb://…). The port
// defaults to 3306; the database may be empty (rules then name schemas).
func ParseDSN(dsn string) (DSN, error) {
	bad := func(format string, args ...any) (DSN, error) {
		return DSN{}, fmt.Errorf("%w: dsn: %s (want mysql://user:pass@host:port/db)", ErrConfig, fmt.Sprintf(format, args...))
	}
	u, err := url.Parse(dsn)
	if err != nil {
		// url's error repeats the whole DSN, password included.
		return bad("not a URL")
	}
	if u.Scheme != "mysql" && u.Scheme != "mariadb" {
		return bad("scheme %q is neither mysql nor mariadb", u.Scheme)
	}
	if u.Opaque != "" {
		return bad("missing // after the scheme")
	}
	if u.User == nil || u.User.Username() == "" {
		return bad("missing user")
	}
	d := DSN{User: u.User.Username(), Host: u.Hostname(), Port: 3306}
	d.Password, _ = u.User.Password()
	if d.Host == "" {
		return bad("missing host")
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return bad("port %q is not a number in 1..65535", p)
		}
		d.Port = n
	}
	d.Database = strings.TrimPrefix(u.Path, "/")
	if strings.Contains(d.Database, "/") {
		return bad("database %q contains '/'", d.Database)
	}
	if len(u.Query()) > 0 {
		return bad("parameters are not supported (%s)", u.RawQuery)
	}
	if u.Fragment != "" {
		return bad("unexpected fragment")
	}
	return d, nil
}

// DefaultServerID derives a server_id in 1000..2^31 from host, stable
// across restarts, so that two tagstream processes on different hosts do
// not evict each other's binlog connection.
func DefaultServerID(host string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(host))
	return 1000 + h.Sum32()%(1<<31-1000+1)
}

func (c *Config) withDefaults() error {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = DefaultHeartbeat
		if c.ReadTimeout > 0 {
			// Three heartbeats per read timeout: one lost is not a timeout.
			c.Heartbeat = min(DefaultHeartbeat, c.ReadTimeout/3)
		}
	}
	if c.ReadTimeout == 0 {
		c.ReadTimeout = 3 * c.Heartbeat
	}
	if c.BackoffMin == 0 {
		c.BackoffMin = DefaultBackoffMin
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = DefaultBackoffMax
	}
	if c.RetentionInterval <= 0 {
		c.RetentionInterval = DefaultRetentionInterval
	}
	if c.FenceTimeout == 0 {
		c.FenceTimeout = DefaultFenceTimeout
	}
	switch {
	case c.Heartbeat < time.Millisecond:
		return fmt.Errorf("%w: heartbeat %v is too short", ErrConfig, c.Heartbeat)
	case c.ReadTimeout <= c.Heartbeat:
		return fmt.Errorf("%w: read timeout %v must exceed the heartbeat %v", ErrConfig, c.ReadTimeout, c.Heartbeat)
	case c.FenceTimeout < 0:
		return fmt.Errorf("%w: fence timeout %v is negative", ErrConfig, c.FenceTimeout)
	case c.BackoffMin <= 0 || c.BackoffMax < c.BackoffMin:
		return fmt.Errorf("%w: backoff %v..%v is not a range", ErrConfig, c.BackoffMin, c.BackoffMax)
	}
	if c.ServerID == 0 {
		host, err := os.Hostname()
		if err != nil {
			host = "localhost"
		}
		c.ServerID = DefaultServerID(host)
	}
	return nil
}

// checkpointPath names the checkpoint file of one source.
func checkpointPath(dir string, d DSN) string {
	name := fmt.Sprintf("mysql-%s-%d-%s.json", d.Host, d.Port, d.Database)
	var b strings.Builder
	for _, r := range name {
		if r == '.' || r == '-' || r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return filepath.Join(dir, b.String())
}
