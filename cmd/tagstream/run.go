package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/tagstream/tagstream/broker"
	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/pipeline"
	"github.com/tagstream/tagstream/rules"
	"github.com/tagstream/tagstream/stream"
)

// daemonFlags are the flags of `tagstream run` beyond the source's and the
// sinks'.
type daemonFlags struct {
	rules      string
	listen     string
	heartbeat  time.Duration
	replaySize int
	replayAge  time.Duration
	queueSize  int
	maxTxTags  int
	rulesPoll  time.Duration
	fence      bool
	fenceWait  time.Duration
	logFormat  string
	logLevel   string
	oldImages  string
	oldMode    rules.OldImages // oldImages parsed
}

func (df *daemonFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&df.rules, "rules", "", "rules `FILE` (env TAGSTREAM_RULES); reloaded on SIGHUP and when it changes")
	df.registerServing(fs)
	fs.IntVar(&df.maxTxTags, "max-tx-tags", 4096, "distinct tags per transaction before it collapses to its rules' wildcard forms")
	fs.DurationVar(&df.rulesPoll, "rules-poll", 2*time.Second, "how often the rules file is checked for changes (0 = only on SIGHUP)")
	fs.BoolVar(&df.fence, "visibility-fence", true, "hand a transaction's tags out only once a fresh read on the database sees its commit")
	fs.DurationVar(&df.fenceWait, "visibility-fence-timeout", time.Second, "longest wait for the database to prove a batch of commits visible; then it is published anyway and counted")
	fs.StringVar(&df.oldImages, "old-images", "wildcard", "an update the database sends without its old row (Postgres REPLICA IDENTITY DEFAULT): `wildcard` (the old row's unknown values become *) or new-only (the old side is skipped)")
}

// registerServing registers the flags of whatever serves /events, run and
// serve alike: the listener, the hub's and the log's.
func (df *daemonFlags) registerServing(fs *flag.FlagSet) {
	fs.StringVar(&df.listen, "listen", "127.0.0.1:8080", "HTTP listen `ADDR` for /events, /healthz, /readyz, /metrics (env TAGSTREAM_LISTEN)")
	fs.DurationVar(&df.heartbeat, "heartbeat", 15*time.Second, "interval of SSE `ping` events")
	fs.IntVar(&df.replaySize, "replay-size", 10000, "replay window: most events kept for resuming clients")
	fs.DurationVar(&df.replayAge, "replay-age", 10*time.Minute, "replay window: oldest event kept for resuming clients")
	fs.IntVar(&df.queueSize, "queue-size", 0, "events queued per client before it gets a reset instead (0 = the hub's default)")
	fs.StringVar(&df.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&df.logLevel, "log-level", "info", "log level: debug, info, warn or error")
}

func (df *daemonFlags) validate() error {
	if df.rules == "" {
		return usageErrorf("run: --rules is required (or TAGSTREAM_RULES)")
	}
	if err := df.validateServing("run"); err != nil {
		return err
	}
	switch {
	case df.maxTxTags < 1:
		return usageErrorf("run: --max-tx-tags must be at least 1, not %d", df.maxTxTags)
	case df.fenceWait <= 0:
		return usageErrorf("run: --visibility-fence-timeout must be positive, not %s", df.fenceWait)
	}
	mode, err := rules.ParseOldImages(df.oldImages)
	if err != nil {
		return usageErrorf("run: --old-images: %q is not wildcard or new-only", df.oldImages)
	}
	df.oldMode = mode
	return nil
}

// validateServing checks the flags registerServing registered.
func (df *daemonFlags) validateServing(cmd string) error {
	switch {
	case df.replaySize < 1:
		return usageErrorf("%s: --replay-size must be at least 1, not %d", cmd, df.replaySize)
	case df.replayAge <= 0:
		return usageErrorf("%s: --replay-age must be positive, not %s", cmd, df.replayAge)
	case df.heartbeat <= 0:
		return usageErrorf("%s: --heartbeat must be positive, not %s", cmd, df.heartbeat)
	case df.queueSize < 0:
		return usageErrorf("%s: --queue-size must not be negative", cmd)
	}
	return nil
}

// instance is `tagstream run` (or `serve`) assembled: a reader, the
// pipeline with its sinks (the hub first), and the HTTP server.
type instance struct {
	cmd      string // run or serve, in messages
	log      *slog.Logger
	df       daemonFlags
	sf       sourceFlags
	reader   cdc.Source
	hub      *stream.Hub
	pipe     *pipeline.Pipeline
	closers  []io.Closer
	ruleOpts rules.Options
	srv      *http.Server
	ln       net.Listener
	metrics  *metrics
	src      *source
	set      *rules.Set
	health   *sourceHealth // nil on an edge node (serve)
	edge     *edge
	lease    *broker.Lease // run --broker: only its holder reads the database
}

func runDaemon(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		d  instance
		kf sinkFlags
		ef edgeFlags
		bf brokerFlags
	)
	d.cmd = "run"
	fs := runFlagSet(stdout, &d, &kf, &ef)
	bf.register(fs, true)
	if err := d.parse(fs, args, stderr, d.df.validate); err != nil {
		return err
	}
	var err error
	if d.edge, err = ef.build(ctx, d.log); err != nil {
		return err
	}
	defer d.edge.close()
	if err := d.assemble(&kf, &bf); err != nil {
		return err
	}
	return d.serve(ctx)
}

// parse reads the command line and the environment into fs, gives d its
// logger, then checks the flags with validate: run and serve start the same
// way and differ only in what they validate.
func (d *instance) parse(fs *flag.FlagSet, args []string, stderr io.Writer, validate func() error) error {
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	logger, err := newLogger(stderr, d.df.logFormat, d.df.logLevel)
	if err != nil {
		return err
	}
	d.log = logger
	return validate()
}

// assemble builds every part without starting anything but the pipeline's
// and the hub's goroutines.
func (d *instance) assemble(kf *sinkFlags, bf *brokerFlags) error {
	set, err := rules.Load(d.df.rules)
	if err != nil {
		return usageErrorf("run: %s", oneLine(err))
	}
	src, err := d.sf.configure(set, d.log)
	if err != nil {
		return err
	}
	src.pg.FenceTimeout, src.my.FenceTimeout = d.df.fenceWait, d.df.fenceWait
	if d.reader, err = src.open(); err != nil {
		return err
	}
	d.src, d.set, d.health = src, set, newSourceHealth(d.reader)
	targets, closers, err := kf.build(d.log)
	if err != nil {
		return err
	}
	if bf.url != "" {
		t, lease, err := bf.appender(d.df.replaySize, d.log)
		if err != nil {
			return err
		}
		d.lease = lease
		targets = append(targets, t)
		closers = append(closers, t.Sink.(io.Closer), lease)
	}
	d.ruleOpts = rules.Options{DefaultSchema: src.defaultSchema, MaxTags: d.df.maxTxTags, OldImages: d.df.oldMode, Logger: d.log, Fires: &rules.FireCounts{}}
	sinks, err := d.wire(targets, closers, rules.Compile(set, d.ruleOpts))
	if err != nil {
		return err
	}
	d.metrics.reg.MustRegister(sourceCollector{fires: d.ruleOpts.Fires, source: d.reader, name: src.kind.String()})
	if d.lease != nil {
		d.metrics.reg.MustRegister(brokerCollector{lease: d.lease})
	}
	d.log.Info("tagstream started", "version", version, "listen", d.ln.Addr().String(), "db", redact(d.sf.db),
		"rules", d.df.rules, "rule_count", len(set.Rules), "sinks", sinks, "visibility_fence", d.pipe.Fenced(), "old_images", d.df.oldMode.String())
	return nil
}

// wire listens and builds what run and serve share: the hub, the pipeline
// from d.reader through engine (nil: the reader commits tagged
// transactions) to the hub and targets, the metrics and the HTTP server.
// It returns the sinks' names.
func (d *instance) wire(targets []pipeline.Target, closers []io.Closer, engine *rules.Engine) ([]string, error) {
	ln, err := net.Listen("tcp", d.df.listen)
	if err != nil {
		return nil, usageErrorf("%s: --listen %s: %v", d.cmd, d.df.listen, err)
	}
	d.ln, d.closers = ln, closers
	d.hub = stream.NewHub(d.edge.hubOptions(stream.Options{
		ReplaySize: d.df.replaySize,
		ReplayAge:  d.df.replayAge,
		Heartbeat:  d.df.heartbeat,
		QueueSize:  d.df.queueSize,
		Logger:     d.log,
		// Clients wait until every sink knows where the source resumed.
		Ready: func() <-chan struct{} { return d.pipe.Ready() },
	}))
	targets = append([]pipeline.Target{{Name: "sse", Sink: d.hub}}, targets...)
	d.metrics = newMetrics()
	for i := range targets {
		targets[i].ObserveDelay = d.metrics.observer(targets[i].Name)
	}
	d.pipe = pipeline.New(d.reader, engine, targets, pipeline.Options{Logger: d.log, Fence: d.df.fence, ObserveSource: d.metrics.observeSource})
	d.metrics.reg.MustRegister(statsCollector{pipe: d.pipe, hub: d.hub}, accessCollector{d.hub})
	if d.health != nil {
		d.metrics.reg.MustRegister(healthCollector{d.health})
	}
	d.srv = &http.Server{Handler: d.routes(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelWarn)}
	d.edge.configure(d.srv)
	sinks := make([]string, len(targets))
	for i, t := range targets {
		sinks[i] = t.Name
	}
	return sinks, nil
}

func (d *instance) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/events", d.edge.events(d.hub))
	mux.Handle("GET /healthz", stream.Healthz())
	mux.Handle("GET /readyz", stream.Readyz(d.reader.Ready))
	mux.Handle("GET /metrics", d.metrics.handler())
	return mux
}

// serve runs the reader until ctx is cancelled (SIGINT/SIGTERM) or it
// fails; the HTTP server failing stops it too. Then it drains: the reader
// waits for the pipeline to deliver what it was handed and acknowledges it;
// the sinks and the clients' streams end.
func (d *instance) serve(ctx context.Context) error {
	readCtx, stopRead := context.WithCancel(ctx)
	defer stopRead()
	var wg sync.WaitGroup
	serveErr := make(chan error, 1)
	wg.Go(func() {
		if err := d.edge.serve(d.srv, d.ln); !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("http server failed", "err", err)
			serveErr <- err
			stopRead()
		}
	})
	watchCtx, stopWatch := context.WithCancel(ctx)
	if d.set != nil {
		wg.Go(func() { watchRules(watchCtx, d.df.rules, d.df.rulesPoll, d.ruleOpts, d.pipe, d.log) })
		wg.Go(func() { d.health.checkAtStartup(watchCtx, d.src, d.set, d.log) })
	}

	var runErr error
	leaseLost := make(chan error, 1)
	if d.holdLease(readCtx, &wg, leaseLost, stopRead) {
		runErr = d.reader.Run(readCtx, d.pipe)
	}
	stopRead()
	stopWatch()
	d.pipe.Close()
	select {
	case err := <-leaseLost:
		runErr = err
	default:
		if d.lease != nil {
			// The reader acknowledged what it delivered: a standby takes
			// over from there at once.
			rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			d.lease.Release(rctx)
			cancel()
		}
	}
	d.hub.Close()
	for _, c := range d.closers {
		_ = c.Close()
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.srv.Shutdown(shutCtx); err != nil {
		d.srv.Close()
	}
	wg.Wait()
	select {
	case err := <-serveErr:
		if runErr == nil {
			runErr = fmt.Errorf("http server: %w", err)
		}
	default:
	}
	if runErr = configError(runErr); runErr != nil {
		var ue *usageError
		if !errors.As(runErr, &ue) {
			d.log.Error("tagstream stopped", "err", runErr)
		}
		return runErr
	}
	d.log.Info("tagstream stopped")
	return nil
}

// holdLease waits, as a standby, until this process holds the broker's
// lease (true), or ctx ends (false). Then it keeps the lease until ctx
// ends; when the lease is lost it abandons what the pipeline has in
// flight (the broker refuses it anyway), stops the reader and sends the
// error on lost: another process streams from the database's acknowledged
// position, and positions on the broker never go backwards. Without
// --broker it returns true at once.
func (d *instance) holdLease(ctx context.Context, wg *sync.WaitGroup, lost chan<- error, stopRead func()) bool {
	if d.lease == nil {
		return true
	}
	if _, err := d.lease.Acquire(ctx); err != nil {
		return false
	}
	wg.Go(func() {
		if err := d.lease.Keep(ctx); err != nil {
			d.log.Error("stopping: another process may be streaming now; restart this one to make it a standby", "err", err)
			lost <- err
			d.pipe.Abandon()
			stopRead()
		}
	})
	return true
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, usageErrorf("--log-level: %q is not debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usageErrorf("--log-format: %q is not text or json", format)
}

// oneLine renders a rules error on one line: the first problem and how many
// more there are (`tagstream check` prints them all).
func oneLine(err error) string {
	var errs rules.Errors
	if errors.As(err, &errs) && len(errs) > 1 {
		return fmt.Sprintf("%v (and %d more; run 'tagstream check --rules FILE' to see all)", errs[0], len(errs)-1)
	}
	return err.Error()
}

// watchRules reloads the rules on SIGHUP and when the file changes. An
// invalid file is rejected with its errors and the rules in force stay.
func watchRules(ctx context.Context, path string, poll time.Duration, opts rules.Options, p *pipeline.Pipeline, logger *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	var tick <-chan time.Time
	if poll > 0 {
		t := time.NewTicker(poll)
		defer t.Stop()
		tick = t.C
	}
	last := fileStamp(path)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		case <-tick:
			if s := fileStamp(path); s == last {
				continue
			}
		}
		last = fileStamp(path)
		set, err := rules.Load(path)
		if err != nil {
			logger.Error("rules reload rejected; the rules in force stay", "rules", path, "err", err)
			continue
		}
		p.SetEngine(rules.Compile(set, opts))
		logger.Info("rules reloaded", "rules", path, "rule_count", len(set.Rules))
	}
}

// fileStamp identifies a version of a file by size and modification time.
func fileStamp(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return "missing"
	}
	return fmt.Sprintf("%d/%d", fi.Size(), fi.ModTime().UnixNano())
}
