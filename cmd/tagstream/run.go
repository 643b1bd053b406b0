package main

import (
	"context"
	"errors"
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

	"github.com/tagstream/tagstream/rules"
	"github.com/tagstream/tagstream/stream"
)

// daemonFlags are the flags of `tagstream run` beyond the source's.
type daemonFlags struct {
	rules      string
	listen     string
	heartbeat  time.Duration
	replaySize int
	replayAge  time.Duration
	queueSize  int
	maxTxTags  int
	rulesPoll  time.Duration
	logFormat  string
	logLevel   string
}

func runDaemon(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("run", stdout)
	var sf sourceFlags
	sf.register(fs)
	var df daemonFlags
	fs.StringVar(&df.rules, "rules", envOr("TAGSTREAM_RULES", ""), "rules `FILE` (env TAGSTREAM_RULES); reloaded on SIGHUP and when it changes")
	fs.StringVar(&df.listen, "listen", envOr("TAGSTREAM_LISTEN", "127.0.0.1:8080"), "HTTP listen `ADDR` for /events, /healthz, /readyz (env TAGSTREAM_LISTEN)")
	fs.DurationVar(&df.heartbeat, "heartbeat", 15*time.Second, "interval of SSE `ping` events")
	fs.IntVar(&df.replaySize, "replay-size", 10000, "replay window: most events kept for resuming clients")
	fs.DurationVar(&df.replayAge, "replay-age", 10*time.Minute, "replay window: oldest event kept for resuming clients")
	fs.IntVar(&df.queueSize, "queue-size", 0, "events queued per client before it gets a reset instead (0 = the hub's default)")
	fs.IntVar(&df.maxTxTags, "max-tx-tags", 4096, "distinct tags per transaction before it collapses to its rules' wildcard forms")
	fs.DurationVar(&df.rulesPoll, "rules-poll", 2*time.Second, "how often the rules file is checked for changes (0 = only on SIGHUP)")
	fs.StringVar(&df.logFormat, "log-format", envOr("TAGSTREAM_LOG_FORMAT", "text"), "log format: text or json")
	fs.StringVar(&df.logLevel, "log-level", envOr("TAGSTREAM_LOG_LEVEL", "info"), "log level: debug, info, warn or error")
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, errHelp) {
			return nil
		}
		return err
	}
	logger, err := newLogger(stderr, df.logFormat, df.logLevel)
	if err != nil {
		return err
	}
	switch {
	case df.rules == "":
		return usageErrorf("run: --rules is required (or TAGSTREAM_RULES)")
	case df.replaySize < 1:
		return usageErrorf("run: --replay-size must be at least 1, not %d", df.replaySize)
	case df.replayAge <= 0:
		return usageErrorf("run: --replay-age must be positive, not %s", df.replayAge)
	case df.heartbeat <= 0:
		return usageErrorf("run: --heartbeat must be positive, not %s", df.heartbeat)
	case df.maxTxTags < 1:
		return usageErrorf("run: --max-tx-tags must be at least 1, not %d", df.maxTxTags)
	case df.queueSize < 0:
		return usageErrorf("run: --queue-size must not be negative")
	}
	set, err := rules.Load(df.rules)
	if err != nil {
		return usageErrorf("run: %s", oneLine(err))
	}
	src, err := sf.configure(set, logger)
	if err != nil {
		return err
	}
	reader, err := src.open()
	if err != nil {
		return err
	}
	ruleOpts := rules.Options{DefaultSchema: src.defaultSchema, MaxTags: df.maxTxTags}
	hub := stream.NewHub(stream.Options{
		ReplaySize: df.replaySize,
		ReplayAge:  df.replayAge,
		Heartbeat:  df.heartbeat,
		QueueSize:  df.queueSize,
		Logger:     logger,
	})
	p := newPipeline(rules.Compile(set, ruleOpts), hub, reader, logger)

	ln, err := net.Listen("tcp", df.listen)
	if err != nil {
		hub.Close()
		return usageErrorf("run: --listen %s: %v", df.listen, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /events", p.events())
	mux.Handle("GET /healthz", stream.Healthz())
	mux.Handle("GET /readyz", stream.Readyz(reader.Ready))
	mux.Handle("GET /metrics", p.metricsHandler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
	logger.Info("tagstream started", "version", version, "listen", ln.Addr().String(), "db", redact(sf.db), "rules", df.rules, "rule_count", len(set.Rules))

	// The reader runs until ctx is cancelled (SIGINT/SIGTERM) or fails; the
	// HTTP server failing stops it too.
	readCtx, stopRead := context.WithCancel(ctx)
	defer stopRead()
	var wg sync.WaitGroup
	serveErr := make(chan error, 1)
	wg.Go(func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			logger.Error("http server failed", "err", err)
			serveErr <- err
			stopRead()
		}
	})
	watchCtx, stopWatch := context.WithCancel(ctx)
	wg.Go(func() { watchRules(watchCtx, df.rules, df.rulesPoll, ruleOpts, p, logger) })

	runErr := reader.Run(readCtx, p)
	stopRead()

	// Drain: every accepted transaction was published and acknowledged by
	// the reader before Run returned; now end the clients' streams.
	stopWatch()
	hub.Close()
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		srv.Close()
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
			logger.Error("tagstream stopped", "err", runErr)
		}
		return runErr
	}
	logger.Info("tagstream stopped")
	return nil
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
func watchRules(ctx context.Context, path string, poll time.Duration, opts rules.Options, p *pipeline, logger *slog.Logger) {
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
		p.setEngine(rules.Compile(set, opts))
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
