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
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/cdc/postgres"
	"github.com/tagstream/tagstream/rules"
	"github.com/tagstream/tagstream/stream"
	"github.com/tagstream/tagstream/testcontainers"
)

// profilePipeline is the glue of `tagstream run` (cmd/tagstream/pipeline.go)
// rebuilt here, so that the drain can run inside this process under pprof:
// reader → rules.Engine → stream.Hub → Ack.
type profilePipeline struct {
	engine *rules.Engine
	hub    *stream.Hub
	src    cdc.Source
}

func (p *profilePipeline) Begin() cdc.Tx { return p.engine.NewTx() }

func (p *profilePipeline) Commit(ctx context.Context, tx cdc.Tx, c cdc.Commit) error {
	if err := p.hub.Publish(ctx, c.Position, c.Time, tx.(*rules.Tx).Tags()); err != nil {
		return err
	}
	p.src.Ack(c.Position)
	return nil
}

func (p *profilePipeline) Resumed(pos cdc.Position)  { p.hub.SetFloor(pos) }
func (p *profilePipeline) Progress(end cdc.Position) { p.hub.SetEnd(end) }
func (p *profilePipeline) Lost(_ context.Context, reason string) error {
	p.hub.Reset(reason)
	return nil
}

// runProfile writes workload (a) and drains it in-process under the CPU
// profiler, then reports the hottest functions (CPU and allocations).
func (b *bench) runProfile(ctx context.Context) error {
	srv, err := testcontainers.StartPostgres(ctx)
	if err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	defer srv.Close()
	dsn, err := srv.CreateDatabase(ctx, "bench_profile")
	if err != nil {
		return err
	}
	var startLSN string
	err = pgWith(ctx, dsn, func(ctx context.Context, c *pgx.Conn) error {
		if _, err := c.Exec(ctx, pgSchema); err != nil {
			return err
		}
		if _, err := c.Exec(ctx, "CREATE PUBLICATION "+pgPublication+" FOR ALL TABLES"); err != nil {
			return err
		}
		return c.QueryRow(ctx, "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", pgDaemonSlot).Scan(&startLSN)
	})
	if err != nil {
		return err
	}
	per := max(b.cfg.smallTx/b.cfg.clients, 1)
	b.logf("profile: writing %d single-row transactions", per*b.cfg.clients)
	script := "\\set uid random(1, 10000)\nINSERT INTO todos (user_id, title) VALUES (:uid, 'buy milk');\n"
	if err := b.pgbench(ctx, dsn, per, map[string]string{"insert.sql": script}); err != nil {
		return err
	}
	err = pgWith(ctx, dsn, func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, "INSERT INTO bench_marker (id) VALUES (1)")
		return err
	})
	if err != nil {
		return err
	}

	set, err := rules.Load(b.rulesPath)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	reader, err := postgres.New(postgres.Config{DSN: dsn, Slot: pgDaemonSlot, Publication: pgPublication, Logger: logger})
	if err != nil {
		return err
	}
	hub := stream.NewHub(stream.Options{Logger: logger})
	p := &profilePipeline{engine: rules.Compile(set, rules.Options{DefaultSchema: "public", MaxTags: 4096}), hub: hub, src: reader}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /events", hub)
	hsrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hsrv.Serve(ln) }()
	defer func() {
		hub.Close()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hsrv.Shutdown(sctx)
	}()

	cpuPath := filepath.Join(b.tmp, "cpu.pprof")
	f, err := os.Create(cpuPath)
	if err != nil {
		return err
	}
	defer f.Close()
	runtime.GC()
	if err := pprof.StartCPUProfile(f); err != nil {
		return err
	}
	rctx, stopReader := context.WithCancel(ctx)
	readerDone := make(chan error, 1)
	t0 := time.Now()
	go func() { readerDone <- reader.Run(rctx, p) }()
	client, err := dialSSE(ctx, ln.Addr().String(), "*", strconv.FormatUint(parseLSN(startLSN), 10))
	if err != nil {
		pprof.StopCPUProfile()
		stopReader()
		<-readerDone
		return err
	}
	defer client.Close()
	events := 0
	deadline := time.Now().Add(b.cfg.drainLimit)
	for {
		ev, err := client.next(deadline)
		if err != nil {
			pprof.StopCPUProfile()
			stopReader()
			<-readerDone
			return fmt.Errorf("profile: no marker: %w", err)
		}
		if ev.Name != "invalidate" {
			continue
		}
		events++
		if inv, err := parseInvalidation(ev.Data); err == nil && slices.Contains(inv.Tags, markerTag) {
			break
		}
	}
	took := time.Since(t0)
	pprof.StopCPUProfile()
	stopReader()
	if err := <-readerDone; err != nil && !errors.Is(err, context.Canceled) {
		b.logf("profile: reader: %v", err)
	}
	memPath := filepath.Join(b.tmp, "allocs.pprof")
	if mf, err := os.Create(memPath); err == nil {
		_ = pprof.Lookup("allocs").WriteTo(mf, 0)
		mf.Close()
	}
	b.logf("profile: in-process drain of %d tx in %s (%d events to the client)", per*b.cfg.clients, took.Round(time.Millisecond), events)
	b.profile = fmt.Sprintf("In-process drain (reader → rules → hub → 1 SSE client `*`, same process) of %d single-row transactions: %s, %.0f tx/s.\n\n",
		per*b.cfg.clients, took.Round(time.Millisecond), float64(per*b.cfg.clients)/took.Seconds())
	b.profile += "CPU (top by flat time):\n\n```\n" + pprofTop(ctx, "-top", cpuPath) + "```\n\n"
	b.profile += "Allocations since start (top by alloc_space; includes the harness):\n\n```\n" + pprofTop(ctx, "-sample_index=alloc_space", memPath) + "```\n"
	// Idle fan-out: what the hub holds per subscriber (the clients live in
	// this process too; their allocations are under main.*).
	// Both ends of every connection are in this process: stay within the
	// open-files limit.
	var lim syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	if n := min(b.cfg.memSubs, (int(lim.Cur)-2000)/2); n > 0 {
		rec := newRecorder()
		rec.start(time.Now().Add(time.Hour))
		subs, err := connectSubscribers(ctx, ln.Addr().String(), n, rec)
		if err != nil {
			return fmt.Errorf("profile: subscribers: %w", err)
		}
		settle(ctx, 2*time.Second)
		runtime.GC()
		heapPath := filepath.Join(b.tmp, "heap.pprof")
		if hf, err := os.Create(heapPath); err == nil {
			_ = pprof.Lookup("heap").WriteTo(hf, 0)
			hf.Close()
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		goroutines := runtime.NumGoroutine()
		subs.close()
		b.profile += fmt.Sprintf("\nHeap in use with %d idle subscribers connected to the in-process hub (clients included: %d goroutines, stacks %.1f MiB, heap in use %.1f MiB): top by inuse_space:\n\n```\n%s```\n",
			n, goroutines, float64(ms.StackInuse)/(1<<20), float64(ms.HeapInuse)/(1<<20), pprofTop(ctx, "-sample_index=inuse_space", heapPath))
	}
	if b.cfg.profileDir != "" {
		_ = os.MkdirAll(b.cfg.profileDir, 0o755)
		for _, p := range []string{cpuPath, memPath, filepath.Join(b.tmp, "heap.pprof")} {
			if data, err := os.ReadFile(p); err == nil {
				_ = os.WriteFile(filepath.Join(b.cfg.profileDir, filepath.Base(p)), data, 0o644)
			}
		}
	}
	return nil
}

// pprofTop renders the top of a profile with `go tool pprof`.
func pprofTop(ctx context.Context, mode, path string) string {
	args := []string{"tool", "pprof", "-top", "-nodecount=25"}
	if mode != "-top" {
		args = append(args, mode)
	}
	args = append(args, path)
	out, err := exec.CommandContext(ctx, "go", args...).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("go tool pprof: %v\n%s", err, out)
	}
	// Drop the header lines up to the table.
	s := string(out)
	if i := strings.Index(s, "      flat"); i >= 0 {
		if j := strings.LastIndex(s[:i], "\n"); j >= 0 {
			head := s[:j]
			if k := strings.Index(head, "Showing nodes"); k >= 0 {
				return s[k:]
			}
		}
	}
	return s
}
