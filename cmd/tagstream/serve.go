package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tagstream/tagstream/broker"
	"github.com/tagstream/tagstream/pipeline"
)

// brokerFlags configure the Redis Streams broker: `run --broker` appends
// to it (one writer among its standbys, by lease), `serve --broker` reads
// it on an edge node.
type brokerFlags struct {
	url    string
	stream string
	lease  time.Duration
}

func (f *brokerFlags) register(fs *flag.FlagSet, writer bool) {
	fs.StringVar(&f.url, "broker", "", "Redis Streams broker `URL`: redis://[user:pass@]host:port[/db] (env TAGSTREAM_BROKER)")
	fs.StringVar(&f.stream, "broker-stream", broker.DefaultStream, "`key` of the broker's stream; one per database (env TAGSTREAM_BROKER_STREAM)")
	if writer {
		fs.DurationVar(&f.lease, "lease", broker.DefaultLease, "with --broker: the writer's lease; a standby takes over within it after the writer dies (env TAGSTREAM_LEASE)")
	}
}

// brokerError turns a broker configuration error into a usage error that
// names the flag.
func brokerError(err error) error {
	if errors.Is(err, broker.ErrConfig) {
		return usageErrorf("--broker: %s", strings.TrimPrefix(err.Error(), broker.ErrConfig.Error()+": "))
	}
	return err
}

// appender returns the broker's sink and the lease its writer holds.
func (f *brokerFlags) appender(replaySize int, log *slog.Logger) (pipeline.Target, *broker.Lease, error) {
	if f.lease < 100*time.Millisecond {
		return pipeline.Target{}, nil, usageErrorf("--lease must be at least 100ms, not %s", f.lease)
	}
	lease, err := broker.NewLease(broker.LeaseConfig{URL: f.url, Stream: f.stream, TTL: f.lease, Logger: log})
	if err != nil {
		return pipeline.Target{}, nil, brokerError(err)
	}
	a, err := broker.NewAppender(broker.AppenderConfig{
		URL: f.url, Stream: f.stream, Token: lease.Token, Logger: log,
		// About the replay window, with room for the entries that carry
		// only progress.
		MaxLen: 2 * int64(replaySize),
	})
	if err != nil {
		lease.Close()
		return pipeline.Target{}, nil, brokerError(err)
	}
	// The broker never gives up: the edges' clients depend on it.
	return pipeline.Target{Name: a.String(), Sink: a}, lease, nil
}

// runServe is `tagstream serve`: an edge node that serves /events from the
// broker, without a database.
func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("serve", stdout)
	d := instance{cmd: "serve"}
	d.df.registerServing(fs)
	var bf brokerFlags
	bf.register(fs, false)
	var kf sinkFlags
	kf.register(fs)
	var ef edgeFlags
	ef.register(fs)
	if err := d.parse(fs, args, stderr, func() error { return d.df.validateServing("serve") }); err != nil {
		return err
	}
	if bf.url == "" {
		return usageErrorf("serve: --broker is required (or TAGSTREAM_BROKER): redis://host:port[/db], the broker `tagstream run --broker` appends to")
	}
	var err error
	if d.edge, err = ef.build(ctx, d.log); err != nil {
		return err
	}
	defer d.edge.close()
	r, err := broker.NewReader(broker.ReaderConfig{URL: bf.url, Stream: bf.stream, Logger: d.log})
	if err != nil {
		return brokerError(err)
	}
	d.reader = r
	targets, closers, err := kf.build(d.log)
	if err != nil {
		r.Close()
		return err
	}
	sinks, err := d.wire(targets, append(closers, r), nil)
	if err != nil {
		r.Close()
		return err
	}
	d.metrics.reg.MustRegister(brokerCollector{reader: r})
	d.log.Info("tagstream serving from the broker", "version", version, "listen", d.ln.Addr().String(),
		"broker", redact(bf.url), "stream", bf.stream, "sinks", sinks)
	return d.serve(ctx)
}

// brokerCollector exposes the broker's side: the writer's lease (run
// --broker) or the edge's reading (serve).
type brokerCollector struct {
	lease  *broker.Lease
	reader *broker.Reader
}

var (
	descLeaseHeld     = desc("tagstream_broker_lease_held", "1 while this process holds the broker's lease (the active writer), 0 as a standby.")
	descBrokerReading = desc("tagstream_broker_reading", "1 while the edge reads the broker's stream.")
	descWriterActive  = desc("tagstream_broker_writer_active", "1 while a writer held the broker's lease recently.")
	descBrokerEntries = desc("tagstream_broker_entries_total", "Stream entries the edge read.")
	descBrokerLost    = desc("tagstream_broker_history_lost_total", "Times the edge lost continuity (the broker lost its history, a gap in the stream, a reset from the writer); each reset every client.")
)

func (c brokerCollector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

func (c brokerCollector) Collect(ch chan<- prometheus.Metric) {
	flag := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	if c.lease != nil {
		ch <- prometheus.MustNewConstMetric(descLeaseHeld, prometheus.GaugeValue, flag(c.lease.Held()))
	}
	if c.reader != nil {
		s := c.reader.Stats()
		ch <- prometheus.MustNewConstMetric(descBrokerReading, prometheus.GaugeValue, flag(s.Reading))
		ch <- prometheus.MustNewConstMetric(descWriterActive, prometheus.GaugeValue, flag(s.WriterActive))
		ch <- prometheus.MustNewConstMetric(descBrokerEntries, prometheus.CounterValue, float64(s.Entries))
		ch <- prometheus.MustNewConstMetric(descBrokerLost, prometheus.CounterValue, float64(s.HistoryLost))
	}
}
