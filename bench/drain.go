package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// markerTag is the tag of the backlog's last transaction (rules.yaml).
const markerTag = "bench-marker:1"

// drainResult is what one tagstream drain measured.
type drainResult struct {
	drain    time.Duration // daemon start → the SSE client has the marker
	startup  time.Duration // daemon start → /readyz answers 200
	peakRSS  int64         // the daemon's VmHWM in KiB when the marker arrived
	cpu      time.Duration // the daemon's CPU time over the same span
	events   int           // invalidate events the client received
	resets   int
	reasons  []string // distinct reset reasons
	markerID string
}

func (r drainResult) describe() string {
	s := fmt.Sprintf("ready after %s, peak RSS %.0f MiB, %d events", r.startup.Round(time.Millisecond), float64(r.peakRSS)/1024, r.events)
	if r.resets > 0 {
		s += fmt.Sprintf(", %d resets", r.resets)
	}
	return s
}

// drainClient is the one SSE client of a tagstream drain.
type drainClient struct {
	label string // for the report
	tags  string // its subscription; it must match markerTag
	// sinks: the daemon also delivers to a webhook and Redis, and the drain
	// ends when all three have the marker.
	sinks bool
}

// drainClients: every event (a worst case: each transaction is written to
// the client), and an application-like subscription to a few tags.
var drainClients = []drainClient{
	{label: "tagstream run + 1 SSE client `*` (every event)", tags: "*"},
	{label: "tagstream run + 1 SSE client of 3 tags", tags: "user:1:todos,post:1:comments," + markerTag},
	{label: "tagstream run + 1 SSE client of 3 tags + webhook + Redis publish", tags: "user:1:todos,post:1:comments," + markerTag, sinks: true},
}

// drainDaemon starts `tagstream run args…`, connects one SSE client with
// the subscription dc and cursor as Last-Event-ID, and stops the clock when
// that client receives the marker's invalidation. The daemon is stopped
// before it returns.
func (b *bench) drainDaemon(ctx context.Context, name string, dc drainClient, cursor string, args ...string) (drainResult, error) {
	var res drainResult
	ctx, cancel := context.WithTimeout(ctx, b.cfg.drainLimit)
	defer cancel()
	var targets *sinkTargets
	if dc.sinks {
		var err error
		if targets, err = b.sinks(ctx); err != nil {
			return res, err
		}
		targets.resetMarkers()
		args = append(args, targets.args()...)
	}
	t0 := time.Now()
	d, err := b.startDaemon(ctx, name, args...)
	if err != nil {
		return res, err
	}
	defer func() {
		if err := d.stop(); err != nil {
			b.logf("tagstream %s: stop: %v", name, err)
		}
	}()
	// Connect once the source streams, as a client of a running daemon
	// would; the clock keeps running meanwhile.
	if err := d.waitHTTP(ctx, "/readyz", b.cfg.drainLimit); err != nil {
		return res, err
	}
	res.startup = time.Since(t0)
	client, err := dialSSE(ctx, d.addr, dc.tags, cursor)
	if err != nil {
		return res, fmt.Errorf("tagstream %s: %w\n%s", name, err, d.logTail())
	}
	defer client.Close()
	deadline, _ := ctx.Deadline()
	for {
		ev, err := client.next(deadline)
		if err != nil {
			return res, fmt.Errorf("tagstream %s: no marker after %s (%d events, %d resets): %w\n%s",
				name, time.Since(t0).Round(time.Millisecond), res.events, res.resets, err, d.logTail())
		}
		switch ev.Name {
		case "reset":
			res.resets++
			var rd struct {
				Reason string `json:"reason"`
			}
			_ = json.Unmarshal([]byte(ev.Data), &rd)
			if !slices.Contains(res.reasons, rd.Reason) {
				res.reasons = append(res.reasons, rd.Reason)
			}
		case "invalidate":
			res.events++
			// Cheap test first: the client must not be the bottleneck.
			if !strings.Contains(ev.Data, markerTag) {
				continue
			}
			inv, err := parseInvalidation(ev.Data)
			if err != nil {
				return res, fmt.Errorf("tagstream %s: invalid event data %q: %w", name, ev.Data, err)
			}
			if slices.Contains(inv.Tags, markerTag) {
				res.drain = ev.At.Sub(t0)
				if targets != nil {
					at, err := targets.waitMarkers(ctx)
					if err != nil {
						return res, fmt.Errorf("tagstream %s: %w\n%s", name, err, d.logTail())
					}
					res.drain = max(res.drain, at.Sub(t0))
				}
				res.cpu = d.cpu()
				res.peakRSS, _ = procStatusKiB(d.cmd.Process.Pid, "VmHWM")
				res.markerID = ev.ID
				return res, nil
			}
		}
	}
}

// noteResets explains resets the drain client saw.
func (b *bench) noteResets(r drainResult) {
	if r.resets > 0 {
		b.note("throughput: the `*` client got `reset` with reason: %s", strings.Join(r.reasons, "; "))
	}
}
