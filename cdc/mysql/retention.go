package mysql

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
)

// DefaultRetentionInterval is how often the reader measures the binlog
// after its checkpoint.
const DefaultRetentionInterval = 15 * time.Second

// RetainedBytes returns the binlog bytes between the checkpoint a restart
// would resume from and the server's head, as last measured, and false
// before the first measurement.
func (r *Reader) RetainedBytes() (int64, bool) {
	return r.retained.Load(), r.retainedKnown.Load()
}

// setDurable records the position a restart resumes from.
func (r *Reader) setDurable(file string, pos uint32) {
	r.mu.Lock()
	r.durableFile, r.durablePos = file, pos
	r.mu.Unlock()
}

// watchRetention measures the binlog after the checkpoint at once and then
// every RetentionInterval until ctx ends, on a connection of its own.
func (r *Reader) watchRetention(ctx context.Context) {
	var c *client.Conn
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	t := time.NewTicker(r.cfg.RetentionInterval)
	defer t.Stop()
	warned := false
	for {
		var err error
		if c == nil {
			c, err = connect(ctx, r.dsn)
		}
		if err == nil {
			err = r.measureRetention(c)
		}
		if err != nil {
			if c != nil {
				c.Close()
				c = nil
			}
			if !warned && ctx.Err() == nil {
				warned = true
				r.log.Warn("mysql: cannot measure the binlog after the checkpoint", logErr, errText(err))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// measureRetention sums the binlog files from the checkpoint's to the head.
// A checkpoint file the server no longer lists (purged) leaves the gauge as
// it was: the stream reports that loss itself.
func (r *Reader) measureRetention(c *client.Conn) error {
	res, err := c.Execute("SHOW BINARY LOGS")
	if err != nil {
		return fmt.Errorf("show binary logs: %w", err)
	}
	defer res.Close()
	r.mu.Lock()
	file, pos := r.durableFile, r.durablePos
	r.mu.Unlock()
	var total int64
	found := false
	for i := range res.RowNumber() {
		name, _ := res.GetString(i, 0)
		size, _ := res.GetInt(i, 1)
		switch {
		case strings.EqualFold(name, file):
			found = true
			total += max(size-int64(pos), 0)
		case found:
			total += size
		}
	}
	if found {
		r.retained.Store(total)
		r.retainedKnown.Store(true)
	}
	return nil
}
