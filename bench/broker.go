package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tagstream/tagstream/testcontainers"
)

// runBroker measures commit → SSE client through the scale-out path: one
// `run --broker` appending to a private redis-server and two `serve` edges
// reading it, the subscribers spread over the edges (subscriber k on each
// edge watches user:k:todos, so each targeted transaction reaches one
// client per edge). It also reads an edge's memory per idle subscriber.
func (b *bench) runBroker(ctx context.Context) error {
	srv, err := testcontainers.StartPostgres(ctx)
	if err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	defer srv.Close()
	rs, err := testcontainers.StartRedis(ctx)
	if err != nil {
		return fmt.Errorf("start redis: %w", err)
	}
	defer rs.Stop()
	dsn, err := brokerDatabase(ctx, srv)
	if err != nil {
		return err
	}
	writer, edges, stopNodes, err := b.startBrokerNodes(ctx, dsn, rs.URL(0))
	if err != nil {
		return err
	}
	defer stopNodes()
	settle(ctx, 2*time.Second)
	rss0, err := edges[0].rssKiB()
	if err != nil {
		return err
	}
	rec := newRecorder()
	rec.start(time.Now().Add(time.Hour))
	per := max(b.cfg.brokerSubs/2, 1)
	// A sample of subscribers on the writer itself, in the same run: the
	// cost of the broker hop is the difference, whatever else the machine
	// is doing.
	direct := newRecorder()
	direct.start(time.Now().Add(time.Hour))
	nDirect := min(per, 1000)
	closeSubs, err := b.connectBrokerSubscribers(ctx, writer, edges, per, rec, nDirect, direct)
	if err != nil {
		return err
	}
	defer closeSubs()
	settle(ctx, 3*time.Second)
	if rss1, err := edges[0].rssKiB(); err == nil {
		b.memory = append(b.memory, memoryRow{Subscribers: per, Before: rss0, After: rss1, Extra: "an edge node (`serve --broker`)"})
	}
	direct.start(time.Now().Add(time.Second)) // loadRun's warm-up
	row, err := b.loadRun(ctx, writer, dsn, rec, "targeted", 2*per, b.cfg.latRate, b.cfg.latDuration, 2,
		"INSERT INTO todos (user_id, title) VALUES ($1, 'buy milk')", func(i int) []any { return []any{i%per + 1} })
	if err != nil {
		return err
	}
	b.reportBroker(row, direct, nDirect, per, writer, edges)
	return nil
}

// brokerDatabase creates the broker section's database with the schema and
// synchronous commits, and returns its DSN.
func brokerDatabase(ctx context.Context, srv *testcontainers.PostgresServer) (string, error) {
	dsn, err := srv.CreateDatabase(ctx, "bench_broker")
	if err != nil {
		return "", err
	}
	if err := pgWith(ctx, dsn, func(ctx context.Context, c *pgx.Conn) error {
		if _, err := c.Exec(ctx, "ALTER DATABASE bench_broker SET synchronous_commit = on"); err != nil {
			return err
		}
		_, err := c.Exec(ctx, pgSchema)
		return err
	}); err != nil {
		return "", err
	}
	return dsn, nil
}

// startBrokerNodes starts the writer (`run --broker`) and two `serve` edges
// on redisURL, each ready; stop stops them in reverse order.
func (b *bench) startBrokerNodes(ctx context.Context, dsn, redisURL string) (writer *daemon, edges []*daemon, stop func(), err error) {
	var started []*daemon
	stop = func() {
		for _, d := range slices.Backward(started) {
			_ = d.stop()
		}
	}
	start := func(command, name string, args ...string) (*daemon, error) {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		d, err := b.startCommand(ctx, command, name, fmt.Sprintf("127.0.0.1:%d", p), args...)
		if err != nil {
			return nil, err
		}
		started = append(started, d)
		return d, d.waitHTTP(ctx, "/readyz", 30*time.Second)
	}
	writer, err = start("run", "broker-writer", "--db", dsn, "--rules", b.rulesPath,
		"--slot", "bench_broker", "--publication", "bench_broker", "--broker", redisURL)
	if err != nil {
		stop()
		return nil, nil, nil, err
	}
	for i := range 2 {
		e, err := start("serve", fmt.Sprintf("broker-edge%d", i+1), "--broker", redisURL)
		if err != nil {
			stop()
			return nil, nil, nil, err
		}
		edges = append(edges, e)
	}
	return writer, edges, stop, nil
}

// connectBrokerSubscribers connects per subscribers to each edge (recorded
// by rec) and nDirect to the writer (recorded by direct); closeAll
// disconnects them in reverse order.
func (b *bench) connectBrokerSubscribers(ctx context.Context, writer *daemon, edges []*daemon, per int, rec *recorder, nDirect int, direct *recorder) (closeAll func(), err error) {
	var all []*subscribers
	closeAll = func() {
		for _, s := range slices.Backward(all) {
			s.close()
		}
	}
	for _, e := range edges {
		subs, err := connectSubscribers(ctx, e.addr, per, rec, b.cfg.socketTimes)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("edge %s: %w", e.addr, err)
		}
		all = append(all, subs)
	}
	b.logf("  %d subscribers live on 2 edges", 2*per)
	dsubs, err := connectSubscribers(ctx, writer.addr, nDirect, direct, b.cfg.socketTimes)
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("writer %s: %w", writer.addr, err)
	}
	all = append(all, dsubs)
	return closeAll, nil
}

// reportBroker adds the broker run's latency rows (through the edges, and
// the writer's own subscribers for comparison) and its notes.
func (b *bench) reportBroker(row latencyRow, direct *recorder, nDirect, per int, writer *daemon, edges []*daemon) {
	if s := direct.take("targeted"); len(s) > 0 {
		b.latency = append(b.latency, latencyRow{Mode: "targeted, on the writer itself (same run, for comparison)",
			Subscribers: nDirect, Rate: row.Rate, Sent: row.Sent, Expected: row.Sent * nDirect / per, Received: direct.count("targeted"),
			P50: pct(s, 0.50), P90: pct(s, 0.90), P99: pct(s, 0.99), Max: s[len(s)-1], DaemonCPU: row.DaemonCPU, HarnessCPU: row.HarnessCPU})
	}
	row.Mode = "targeted via the broker (run --broker → 2 × serve)"
	b.note("broker: p99 of commit → accepted per hop (publish-delay histogram buckets over the whole run, warm-up and connection setup included): writer → Redis %s; writer's own SSE hub %s; edge 1 hub %s; edge 2 hub %s",
		delayP99(writer, "broker"), delayP99(writer, "sse"), delayP99(edges[0], "sse"), delayP99(edges[1], "sse"))
	b.latency = append(b.latency, row)
	b.note("broker: daemon CPU is the writer's (`run --broker`); the two edges and redis-server share the same cores")
}

// delayP99 reads a daemon's tagstream_publish_delay_seconds histogram for
// the sink whose label starts with sink and returns the upper bound of the
// bucket holding its 99th percentile ("" when absent): where the time goes
// between the hops.
func delayP99(d *daemon, sink string) string {
	return delayBuckets(d, sink).p99(nil)
}

// delayHistogram is a scrape of one sink's publish-delay buckets
// (cumulative counts, in the exposition's order).
type delayHistogram []delayBucket

type delayBucket struct {
	le string
	n  float64
}

// delayBuckets scrapes d's publish-delay histogram for sink (nil when it
// cannot).
func delayBuckets(d *daemon, sink string) delayHistogram {
	return scrapeBuckets(d, `tagstream_publish_delay_seconds_bucket{sink="`+sink)
}

// sourceBuckets scrapes d's source-delay histogram: commit → read by the
// daemon, before the fence and the sinks.
func sourceBuckets(d *daemon) delayHistogram {
	return scrapeBuckets(d, `tagstream_source_delay_seconds_bucket{`)
}

// scrapeBuckets scrapes the bucket lines of d's /metrics that start with
// prefix.
func scrapeBuckets(d *daemon, prefix string) delayHistogram {
	client := &http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get("http://" + d.addr + "/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var h delayHistogram
	for line := range strings.SplitSeq(string(body), "\n") {
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		_, rest, _ := strings.Cut(line, `le="`)
		le, val, _ := strings.Cut(rest, `"} `)
		n, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil {
			continue
		}
		h = append(h, delayBucket{le, n})
	}
	return h
}

// p99 is the upper bound of the bucket holding the 99th percentile of what
// h counted since the scrape before ("" when nothing was counted).
func (h delayHistogram) p99(before delayHistogram) string {
	count := func(i int) float64 {
		if len(before) == len(h) {
			return h[i].n - before[i].n
		}
		return h[i].n
	}
	if len(h) == 0 || count(len(h)-1) == 0 {
		return ""
	}
	total := count(len(h) - 1)
	for i := range h {
		if count(i) >= 0.99*total {
			return "≤ " + h[i].le + " s"
		}
	}
	return ""
}
