package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/cdc/mysql"
	"github.com/tagstream/tagstream/cdc/postgres"
	"github.com/tagstream/tagstream/pipeline"
	"github.com/tagstream/tagstream/rules"
	"github.com/tagstream/tagstream/stream"
	"github.com/tagstream/tagstream/testcontainers"
)

// runProfile writes PostgreSQL workload (a) and drains it in-process under
// the CPU profiler, then reports the hottest functions (CPU, allocations,
// idle fan-out heap), then the same for MariaDB workload (b).
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

	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	reader, err := postgres.New(postgres.Config{DSN: dsn, Slot: pgDaemonSlot, Publication: pgPublication, Logger: logger})
	if err != nil {
		return err
	}
	label := fmt.Sprintf("PostgreSQL, workload (a): %d single-row transactions", per*b.cfg.clients)
	out, err := b.profileDrain(ctx, label, "pg", reader, "public", strconv.FormatUint(parseLSN(startLSN), 10), per*b.cfg.clients, true)
	b.profile += out
	if err != nil {
		return err
	}
	out, err = b.profileMySQL(ctx)
	b.profile += out
	return err
}

// profileMySQL drains workload (b) from MariaDB/MySQL in-process under pprof.
func (b *bench) profileMySQL(ctx context.Context) (string, error) {
	srv, err := testcontainers.StartMySQL(ctx)
	if err != nil {
		return "", fmt.Errorf("start mysql: %w", err)
	}
	defer srv.Close()
	u, err := url.Parse(srv.AdminDSN)
	if err != nil {
		return "", err
	}
	m := &myServer{srv: srv, addr: u.Host, host: u.Hostname(), port: u.Port(), user: u.User.Username()}
	m.password, _ = u.User.Password()
	if conn, err := m.connect(""); err == nil {
		m.mariadb = strings.Contains(strings.ToLower(conn.GetServerVersion()), "mariadb")
		conn.Close()
	}
	const db = "bench_profile"
	dsn, err := srv.CreateDatabase(ctx, db)
	if err != nil {
		return "", err
	}
	conn, err := m.connect(db)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	for _, q := range mySchema {
		if _, err := conn.Execute(q); err != nil {
			return "", err
		}
	}
	stateDir := filepath.Join(b.tmp, "state-profile")
	args := []string{"--db", dsn, "--rules", b.rulesPath, "--state-dir", stateDir, "--server-id", "4999"}
	if err := b.myWarmUp(ctx, db, conn, args); err != nil {
		return "", fmt.Errorf("warm-up: %w", err)
	}
	file, pos, err := m.binlogStatus()
	if err != nil {
		return "", err
	}
	b.logf("profile: writing one INSERT … SELECT of %d rows into MariaDB", b.cfg.bulkRows)
	if _, err := conn.Execute(m.insertSelect("INSERT INTO todos (user_id, title, done) SELECT seq % 10000 + 1, CONCAT('todo ', seq), 0", b.cfg.bulkRows)); err != nil {
		return "", err
	}
	if _, err := conn.Execute("INSERT INTO bench_marker (id) VALUES (1)"); err != nil {
		return "", err
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	reader, err := mysql.New(mysql.Config{DSN: dsn, ServerID: 4999, StateDir: stateDir, Logger: logger})
	if err != nil {
		return "", err
	}
	cursor := ""
	if seq, ok := binlogSeq(file); ok {
		cursor = strconv.FormatUint(seq<<32|pos, 10)
	}
	label := fmt.Sprintf("MariaDB, workload (b): one INSERT … SELECT of %d rows", b.cfg.bulkRows)
	return b.profileDrain(ctx, label, "mysql", reader, db, cursor, 1, false)
}

// profileDrain runs src → rules → hub → one `*` SSE client in this process
// until the marker arrives, under the CPU profiler, and renders the top
// functions; with fanout it then measures the hub's heap with idle
// subscribers.
func (b *bench) profileDrain(ctx context.Context, label, name string, src cdc.Source, defaultSchema, cursor string, txs int, fanout bool) (string, error) {
	p, addr, closePipeline, err := b.startProfilePipeline(src, defaultSchema)
	if err != nil {
		return "", err
	}
	defer closePipeline()

	cpuPath := filepath.Join(b.tmp, name+"-cpu.pprof")
	memPath := filepath.Join(b.tmp, name+"-allocs.pprof")
	heapPath := filepath.Join(b.tmp, name+"-heap.pprof")
	client, took, events, err := b.profileRun(ctx, src, p, addr, cursor, cpuPath)
	if err != nil {
		return "", err
	}
	defer client.Close()
	if mf, err := os.Create(memPath); err == nil {
		_ = pprof.Lookup("allocs").WriteTo(mf, 0)
		mf.Close()
	}
	b.logf("profile: %s: in-process drain in %s (%d events to the client)", label, took.Round(time.Millisecond), events)
	out := fmt.Sprintf("### %s\n\nIn-process drain (reader → rules → hub → 1 SSE client `*`, one process): %s, %.0f tx/s.\n\n",
		label, took.Round(time.Millisecond), float64(txs)/took.Seconds())
	out += "CPU (top by flat time):\n\n```\n" + pprofTop(ctx, "-top", cpuPath) + "```\n\n"
	out += "Allocations since the process started (top by alloc_space; the harness's own are under main.*):\n\n```\n" + pprofTop(ctx, "-sample_index=alloc_space", memPath) + "```\n"

	if fanout {
		heap, err := b.profileFanout(ctx, addr, heapPath)
		out += heap
		if err != nil {
			return out, err
		}
	}
	b.keepProfiles(cpuPath, memPath, heapPath)
	return out + "\n", nil
}

// startProfilePipeline builds src → rules → hub in this process with the
// hub's /events on a loopback listener at addr; closeAll stops them.
func (b *bench) startProfilePipeline(src cdc.Source, defaultSchema string) (p *pipeline.Pipeline, addr string, closeAll func(), err error) {
	set, err := rules.Load(b.rulesPath)
	if err != nil {
		return nil, "", nil, err
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	hub := stream.NewHub(stream.Options{Logger: logger})
	p = pipeline.New(src, rules.Compile(set, rules.Options{DefaultSchema: defaultSchema, MaxTags: 4096}),
		[]pipeline.Target{{Name: "sse", Sink: hub}}, pipeline.Options{Logger: logger, Fence: true})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /events", hub)
	hsrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hsrv.Serve(ln) }()
	closeAll = func() {
		p.Close()
		hub.Close()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hsrv.Shutdown(sctx)
	}
	return p, ln.Addr().String(), closeAll, nil
}

// profileRun drains src through p under the CPU profiler (written to
// cpuPath) until the marker reaches a `*` client on addr, then stops the
// reader; the client stays connected for the caller to close.
func (b *bench) profileRun(ctx context.Context, src cdc.Source, p *pipeline.Pipeline, addr, cursor, cpuPath string) (client *sseClient, took time.Duration, events int, err error) {
	f, err := os.Create(cpuPath)
	if err != nil {
		return nil, 0, 0, err
	}
	defer f.Close()
	runtime.GC()
	if err := pprof.StartCPUProfile(f); err != nil {
		return nil, 0, 0, err
	}
	rctx, stopReader := context.WithCancel(ctx)
	readerDone := make(chan error, 1)
	t0 := time.Now()
	go func() { readerDone <- src.Run(rctx, p) }()
	stop := func() {
		pprof.StopCPUProfile()
		stopReader()
		if err := <-readerDone; err != nil && !errors.Is(err, context.Canceled) {
			b.logf("profile: reader: %v", err)
		}
	}
	for !src.Ready() {
		if time.Since(t0) > time.Minute {
			stop()
			return nil, 0, 0, errors.New("profile: the source did not become ready")
		}
		time.Sleep(5 * time.Millisecond)
	}
	client, err = dialSSE(ctx, addr, "*", cursor)
	if err != nil {
		stop()
		return nil, 0, 0, err
	}
	deadline := time.Now().Add(b.cfg.drainLimit)
	for {
		ev, err := client.next(deadline)
		if err != nil {
			stop()
			client.Close()
			return nil, 0, 0, fmt.Errorf("profile: no marker: %w", err)
		}
		if ev.Name != "invalidate" {
			continue
		}
		events++
		if strings.Contains(ev.Data, markerTag) {
			break
		}
	}
	took = time.Since(t0)
	stop()
	return client, took, events, nil
}

// profileFanout measures the heap with idle subscribers connected to the
// in-process hub on addr (writing it to heapPath) and renders its top.
func (b *bench) profileFanout(ctx context.Context, addr, heapPath string) (string, error) {
	// Idle fan-out: what the hub holds per subscriber (the clients live in
	// this process too; their allocations are under main.*). Both ends of
	// every connection are in this process: stay within the open-files
	// limit.
	var lim syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	n := min(b.cfg.memSubs, (int(lim.Cur)-2000)/2)
	if n <= 0 {
		return "", nil
	}
	rec := newRecorder()
	rec.start(time.Now().Add(time.Hour))
	subs, err := connectSubscribers(ctx, addr, n, rec, false)
	if err != nil {
		return "", fmt.Errorf("profile: subscribers: %w", err)
	}
	settle(ctx, 2*time.Second)
	runtime.GC()
	if hf, err := os.Create(heapPath); err == nil {
		_ = pprof.Lookup("heap").WriteTo(hf, 0)
		hf.Close()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	goroutines := runtime.NumGoroutine()
	subs.close()
	return fmt.Sprintf("\nHeap in use with %d idle subscribers connected to the in-process hub (clients included: %d goroutines, stacks %.1f MiB, heap in use %.1f MiB): top by inuse_space:\n\n```\n%s```\n",
		n, goroutines, float64(ms.StackInuse)/(1<<20), float64(ms.HeapInuse)/(1<<20), pprofTop(ctx, "-sample_index=inuse_space", heapPath)), nil
}

// keepProfiles copies the profiles that exist into -profile-dir, if set.
func (b *bench) keepProfiles(paths ...string) {
	if b.cfg.profileDir == "" {
		return
	}
	_ = os.MkdirAll(b.cfg.profileDir, 0o755)
	for _, p := range paths {
		if data, err := os.ReadFile(p); err == nil {
			_ = os.WriteFile(filepath.Join(b.cfg.profileDir, filepath.Base(p)), data, 0o644)
		}
	}
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
