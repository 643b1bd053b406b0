// Command bench measures tagstream on one machine against the physical
// limit of its sources and prints a markdown report:
//
//   - throughput: the same backlog drained by the database's own client
//     (pg_recvlogical with pgoutput; mariadb-binlog --read-from-remote-server)
//     and by `tagstream run` with a realistic rules file and one connected
//     SSE client — the clock runs over the drain only;
//   - latency: commit → SSE client receive at a steady transaction rate with
//     1,000 and 10,000 subscribers;
//   - fan-out memory: the daemon's RSS per idle subscriber.
//
// Run it with `make bench` (or `go run ./bench -h` for the sizes). Databases
// come from testcontainers/ (private throwaway servers on loopback); every
// process and server it starts is stopped on exit.
package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/tagstream/tagstream/internal/launch"
	"github.com/tagstream/tagstream/testcontainers"
)

//go:embed rules.yaml
var rulesYAML []byte

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	testcontainers.Shutdown()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// config holds the flags: which sections run and how big they are.
type config struct {
	sections    string
	tagstream   string
	out         string
	drainLimit  time.Duration
	clients     int
	smallTx     int
	bulkRows    int
	mixedTx     int
	mixedRows   int
	latRate     int
	latDuration time.Duration
	latSubs     string
	latSinks    bool
	socketTimes bool
	bcastRate   int
	bcastDur    time.Duration
	highRate    int
	highSubs    int
	memSubs     int
	profileDir  string
	repeat      int
	workloads   string

	brokerSubs int

	consDuration time.Duration
	consRates    string
	consDBs      string
}

// bench is one run: its configuration, scratch directory, the commands it
// ran (for the report) and the rows it measured.
type bench struct {
	cfg       config
	tmp       string
	tagstream string
	rulesPath string
	log       io.Writer

	commands   []string
	throughput []throughputRow
	latency    []latencyRow
	memory     []memoryRow
	notes      []string
	profile    string

	sinkTargets *sinkTargets // started on first use

	consistencyRows []consistencyRow
}

// run parses the flags, runs the wanted sections and prints the report.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseConfig(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	want, err := parseSections(c.sections)
	if err != nil {
		return err
	}
	subs, err := parseInts(c.latSubs)
	if err != nil {
		return fmt.Errorf("-latency-subscribers: %w", err)
	}
	if c.highRate > 0 && !slices.Contains(subs, c.highSubs) {
		subs = append(subs, c.highSubs)
	}

	tmp, err := os.MkdirTemp("", "tagstream-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	b := &bench{cfg: c, tmp: tmp, log: stderr}
	defer func() {
		if b.sinkTargets != nil {
			b.sinkTargets.close()
		}
	}()
	if err := b.prepare(ctx, max(c.memSubs, maxInt(subs))+4096); err != nil {
		return err
	}
	machine := describeMachine(ctx, b.tagstream)
	start := time.Now()
	failed := b.runSections(ctx, want, subs)

	report := b.report(machine, time.Since(start))
	fmt.Fprint(stdout, report)
	if c.out != "" {
		if err := os.WriteFile(c.out, []byte(report), 0o644); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if len(failed) > 0 {
		return fmt.Errorf("sections that did not complete: %s", strings.Join(failed, ", "))
	}
	return nil
}

// parseConfig reads the flags; -h prints the usage and returns flag.ErrHelp.
func parseConfig(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	fs.StringVar(&c.sections, "sections", "pg,mysql,latency,memory,consistency", "comma-separated sections to run: pg, mysql, latency, memory, consistency, profile (in-process drains under pprof: PostgreSQL workload a, MariaDB workload b), broker (commit → client through run --broker and two serve edges)")
	fs.StringVar(&c.tagstream, "tagstream", "", "tagstream binary to measure (default: build ./cmd/tagstream into a temp dir)")
	fs.StringVar(&c.out, "out", "", "also write the markdown report to this file")
	fs.DurationVar(&c.drainLimit, "drain-timeout", 5*time.Minute, "give up on one drain after this long")
	fs.StringVar(&c.workloads, "workloads", "a,b,c", "throughput workloads to run: a (single-row tx), b (one bulk INSERT … SELECT), c (mixed update/delete)")
	fs.IntVar(&c.repeat, "repeat", 2, "PostgreSQL throughput: drains per consumer (one slot each, taking turns); the fastest is reported")
	fs.IntVar(&c.clients, "clients", 4, "concurrent writers of the small-transaction and mixed workloads")
	fs.IntVar(&c.smallTx, "small-tx", 200000, "workload (a): single-row INSERT transactions")
	fs.IntVar(&c.bulkRows, "bulk-rows", 1000000, "workload (b): rows of the one INSERT … SELECT transaction")
	fs.IntVar(&c.mixedTx, "mixed-tx", 100000, "workload (c): update/delete transactions")
	fs.IntVar(&c.mixedRows, "mixed-rows", 200000, "workload (c): todos (and half as many comments) loaded before the slot exists")
	fs.IntVar(&c.latRate, "latency-rate", 1000, "latency: transactions per second")
	fs.DurationVar(&c.latDuration, "latency-duration", 10*time.Second, "latency: how long each targeted run writes (the first second is warm-up)")
	fs.StringVar(&c.latSubs, "latency-subscribers", "1000,10000", "latency: subscriber counts, comma-separated")
	fs.BoolVar(&c.socketTimes, "socket-times", false, "latency: also take each delivery's arrival at the client's socket (kernel receive time, SO_TIMESTAMPNS); the harness's reads cost more CPU, so the other figures rise")
	fs.BoolVar(&c.latSinks, "latency-sinks", true, "latency: the daemon also delivers to a webhook and Redis (and the webhook's latency is reported)")
	fs.IntVar(&c.bcastRate, "broadcast-rate", 10, "latency: broadcast transactions per second (to every subscriber; 0 = skip)")
	fs.DurationVar(&c.bcastDur, "broadcast-duration", 10*time.Second, "latency: how long the broadcast run writes")
	fs.IntVar(&c.highRate, "high-rate", 10000, "latency: transactions per second of the high-rate targeted run (0 = skip)")
	fs.IntVar(&c.highSubs, "high-rate-subscribers", 1000, "latency: subscribers of the high-rate run (it runs on the daemon with that many; added to -latency-subscribers if missing)")
	fs.IntVar(&c.memSubs, "memory-subscribers", 10000, "fan-out memory: idle subscribers")
	fs.StringVar(&c.profileDir, "profile-dir", "", "profile: also keep cpu.pprof and allocs.pprof in this directory")
	fs.IntVar(&c.brokerSubs, "broker-subscribers", 10000, "broker: subscribers, spread over the two edge nodes")
	fs.DurationVar(&c.consDuration, "consistency-duration", 10*time.Second, "consistency: how long each run writes")
	fs.StringVar(&c.consRates, "consistency-rates", "500,5000", "consistency: updates per second, comma-separated")
	fs.StringVar(&c.consDBs, "consistency-dbs", "pg,mariadb", "consistency: databases, comma-separated (pg, mariadb)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return c, nil
}

// parseSections turns -sections into the set of sections to run.
func parseSections(sections string) (map[string]bool, error) {
	want := map[string]bool{}
	for s := range strings.SplitSeq(sections, ",") {
		switch s = strings.TrimSpace(s); s {
		case "pg", "mysql", "latency", "memory", "consistency", "profile", "broker":
			want[s] = true
		case "":
		default:
			return nil, fmt.Errorf("-sections: unknown section %q (pg, mysql, latency, memory, consistency, profile, broker)", s)
		}
	}
	return want, nil
}

// prepare raises the open-files limit to fds, writes the rules file and
// builds the tagstream binary unless -tagstream names one.
func (b *bench) prepare(ctx context.Context, fds int) error {
	if err := raiseFDLimit(fds); err != nil {
		b.note("could not raise the open-files limit: %v", err)
	}
	b.rulesPath = filepath.Join(b.tmp, "rules.yaml")
	if err := os.WriteFile(b.rulesPath, rulesYAML, 0o644); err != nil {
		return err
	}
	if b.tagstream = b.cfg.tagstream; b.tagstream == "" {
		var err error
		if b.tagstream, err = launch.BuildTagstream(ctx, b.tmp); err != nil {
			return err
		}
	}
	return nil
}

// runSections runs the wanted sections in order and returns the names of
// those that failed. Each section reports its own failure and the others
// still run: a missing MySQL reader must not hide the Postgres figures.
func (b *bench) runSections(ctx context.Context, want map[string]bool, subs []int) []string {
	var failed []string
	section := func(name string, fn func(context.Context) error) {
		if !want[name] || ctx.Err() != nil {
			return
		}
		b.logf("== section %s", name)
		if err := fn(ctx); err != nil {
			b.note("section %s did not complete: %v", name, err)
			b.logf("section %s failed: %v", name, err)
			failed = append(failed, name)
		}
	}
	section("pg", b.runPostgres)
	section("mysql", b.runMySQL)
	if want["latency"] || want["memory"] {
		name := "latency"
		if !want["latency"] {
			name = "memory"
		}
		want[name] = true
		section(name, func(ctx context.Context) error { return b.runFanout(ctx, want["latency"], want["memory"], subs) })
	}
	section("consistency", b.runConsistency)
	section("broker", b.runBroker)
	section("profile", b.runProfile)
	return failed
}

// wantWorkload reports whether throughput workload i (0 = a) was asked for.
func (b *bench) wantWorkload(i int) bool {
	return slices.Contains(strings.Split(b.cfg.workloads, ","), string(rune('a'+i)))
}

func (b *bench) logf(format string, a ...any) {
	fmt.Fprintf(b.log, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
}

func (b *bench) note(format string, a ...any) {
	n := fmt.Sprintf(format, a...)
	if !slices.Contains(b.notes, n) {
		b.notes = append(b.notes, n)
	}
}

// record keeps an external command line for the report.
func (b *bench) record(name string, args ...string) {
	parts := []string{filepath.Base(name)}
	for _, a := range args {
		if a == "" || strings.ContainsAny(a, " '\"&?*$;|<>(){}") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		parts = append(parts, a)
	}
	line := strings.Join(parts, " ")
	for _, c := range b.commands {
		if c == line {
			return
		}
	}
	b.commands = append(b.commands, line)
}

// raiseFDLimit lifts RLIMIT_NOFILE to at least n (root may raise the hard
// limit too) — enough for one end of every subscriber connection. Calling
// Setrlimit also makes child processes (the daemon, which holds the other
// ends) inherit the raised limit.
func raiseFDLimit(n int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	want := uint64(n)
	if lim.Cur >= want {
		return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	if lim.Max < want {
		lim.Max = want
	}
	lim.Cur = want
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		// Not root: take what the hard limit allows.
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
		return fmt.Errorf("wanted %d, have %d: %w", n, lim.Cur, err)
	}
	return nil
}

func parseInts(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		var n int
		if _, err := fmt.Sscan(f, &n); err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func maxInt(xs []int) int {
	m := 0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}
