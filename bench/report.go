package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// throughputRow is one consumer draining one workload's backlog.
type throughputRow struct {
	DB       string // "PostgreSQL", "MariaDB"
	Workload string
	Consumer string
	Rows     int64
	Tx       int64
	Drain    time.Duration
	CPU      time.Duration // the consumer process's user+system CPU during the drain
	Baseline bool          // the database's own client
	Extra    string
}

type latencyRow struct {
	Mode        string // "targeted", "broadcast"
	Subscribers int
	Rate        float64 // achieved transactions per second
	Sent        int
	Expected    int
	Received    int
	Resets      int
	P50, P90    time.Duration
	P99, Max    time.Duration
	// At the client's socket (kernel receive time): the same deliveries
	// without the harness's own wait to read them.
	SocketP50, SocketP99 time.Duration
	DaemonCPU            float64 // cores the daemon used on average over the run
	HarnessCPU           float64 // cores this process (generator + clients) used
}

type memoryRow struct {
	Subscribers int
	Before      int64 // KiB
	After       int64 // KiB
	Extra       string
}

// describeMachine renders the machine and the versions for the report.
func describeMachine(ctx context.Context, tagstream string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "- CPU: %d cores (nproc %s), %s\n", runtime.NumCPU(), cmdOut(ctx, "nproc"), cpuModel())
	fmt.Fprintf(&b, "- Memory: %s\n", memTotal())
	fmt.Fprintf(&b, "- Kernel: %s\n", cmdOut(ctx, "uname", "-sr"))
	fmt.Fprintf(&b, "- Go: %s; tagstream: %s (commit %s)\n", runtime.Version(), cmdOut(ctx, tagstream, "version"), cmdOut(ctx, "git", "rev-parse", "--short", "HEAD"))
	fmt.Fprintf(&b, "- PostgreSQL: %s; %s; %s\n", cmdOut(ctx, pgBin("postgres"), "--version"), cmdOut(ctx, "pg_recvlogical", "--version"), cmdOut(ctx, "pgbench", "--version"))
	fmt.Fprintf(&b, "- MariaDB: %s; %s\n", cmdOut(ctx, "mariadbd", "--version"), cmdOut(ctx, "mariadb-binlog", "--version"))
	return b.String()
}

func cmdOut(ctx context.Context, name string, args ...string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).Output()
	if err != nil {
		return "n/a"
	}
	return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown CPU"
}

func memTotal() string {
	kib, err := procMeminfo("MemTotal")
	if err != nil {
		return "unknown"
	}
	return fmt.Sprintf("%.1f GiB", float64(kib)/(1<<20))
}

func procMeminfo(field string) (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			var n int64
			_, err := fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &n)
			return n, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/meminfo", field)
}

func (b *bench) report(machine string, took time.Duration) string {
	var w strings.Builder
	fmt.Fprintf(&w, "# tagstream benchmark — %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	w.WriteString(machine)
	fmt.Fprintf(&w, "- Whole run: %s\n\n", took.Round(time.Second))

	if len(b.throughput) > 0 {
		w.WriteString("## Throughput (drain of a backlog written before the consumer started)\n\n")
		w.WriteString("| database | workload | consumer | rows | tx | drain | rows/s | tx/s | consumer CPU | ratio |\n")
		w.WriteString("|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
		base := map[string]throughputRow{}
		for _, r := range b.throughput {
			if r.Baseline {
				base[r.DB+"/"+r.Workload] = r
			}
		}
		for _, r := range b.throughput {
			ratio := ""
			if bl, ok := base[r.DB+"/"+r.Workload]; ok && !r.Baseline && r.Drain > 0 {
				ratio = fmt.Sprintf("**%.2f**", bl.Drain.Seconds()/r.Drain.Seconds())
			}
			consumer := r.Consumer
			if r.Extra != "" {
				consumer += " (" + r.Extra + ")"
			}
			fmt.Fprintf(&w, "| %s | %s | %s | %d | %d | %.2f s | %s | %s | %.2f s | %s |\n",
				r.DB, r.Workload, consumer, r.Rows, r.Tx, r.Drain.Seconds(),
				rate(r.Rows, r.Drain), rate(r.Tx, r.Drain), r.CPU.Seconds(), ratio)
		}
		w.WriteString("\nratio = baseline drain time / tagstream drain time (target: ≥ 0.9 for both databases).\n\n")
	}
	w.WriteString(b.describeLatency())
	if len(b.memory) > 0 {
		w.WriteString("## Fan-out memory (idle subscribers)\n\n")
		w.WriteString("| subscribers | daemon RSS before | after | per subscriber | notes |\n")
		w.WriteString("|---:|---:|---:|---:|---|\n")
		for _, r := range b.memory {
			per := float64(r.After-r.Before) / float64(r.Subscribers)
			fmt.Fprintf(&w, "| %d | %.1f MiB | %.1f MiB | %.1f KiB | %s |\n",
				r.Subscribers, float64(r.Before)/1024, float64(r.After)/1024, per, r.Extra)
		}
		w.WriteString("\nTarget: ≤ 16 KiB per idle subscriber.\n\n")
	}
	if len(b.consistencyRows) > 0 {
		w.WriteString("## Consistency: a cache that re-reads each invalidated row\n\n")
		w.WriteString(describeConsistency(b.consistencyRows))
		w.WriteString("\nA client keeps kv(k, v) (1,000 rows) in memory, re-reads a row the moment an `invalidate` names kv:{k}, " +
			"reloads everything on `reset` or `ready {\"resumed\":false}` and reconnects with its Last-Event-ID; " +
			"8 writers update random rows (PostgreSQL with synchronous_commit=on). After the writes stop and a marker committed after them has arrived, " +
			"the cache is compared with the database. Stale rows: rows whose cached value differs (each one a lost invalidation for its user). " +
			"Window: commit (the writer's UPDATE returned) → the cache holds that value or a newer one. Target: 0 stale rows in every run.\n\n")
	}
	if b.profile != "" {
		w.WriteString("## Profile\n\n" + b.profile)
	}
	if len(b.notes) > 0 {
		w.WriteString("## Notes\n\n")
		for _, n := range b.notes {
			fmt.Fprintf(&w, "- %s\n", n)
		}
		w.WriteString("\n")
	}
	if len(b.commands) > 0 {
		w.WriteString("## Commands\n\n```\n")
		for _, c := range b.commands {
			w.WriteString(c + "\n")
		}
		w.WriteString("```\n")
	}
	return w.String()
}

func rate(n int64, d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f", float64(n)/d.Seconds())
}

// describeLatency renders the latency table ("" without latency runs).
func (b *bench) describeLatency() string {
	if len(b.latency) == 0 {
		return ""
	}
	var w strings.Builder
	w.WriteString("## Latency: commit (the event's `ts`) → SSE client receive\n\n")
	socket, socketSep := "", ""
	if b.cfg.socketTimes {
		socket, socketSep = " at the socket: p50 | p99 |", "---:|---:|"
	}
	w.WriteString("| mode | subscribers | tx/s | deliveries (expected) | resets | p50 | p90 | p99 | max |" + socket + " daemon CPU | harness CPU |\n")
	w.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|" + socketSep + "---:|---:|\n")
	for _, r := range b.latency {
		fmt.Fprintf(&w, "| %s | %d | %.0f | %d (%d) | %d | %s | %s | %s | %s |",
			r.Mode, r.Subscribers, r.Rate, r.Received, r.Expected, r.Resets, ms(r.P50), ms(r.P90), ms(r.P99), ms(r.Max))
		if b.cfg.socketTimes {
			fmt.Fprintf(&w, " %s | %s |", msOrDash(r.SocketP50), msOrDash(r.SocketP99))
		}
		fmt.Fprintf(&w, " %.0f%% | %.0f%% |\n", 100*r.DaemonCPU, 100*r.HarnessCPU)
	}
	if b.cfg.socketTimes {
		w.WriteString("\nLatency is taken when the harness has read the event; \"at the socket\" is the kernel's receive time of the " +
			"client socket's newest segment read by then (SO_TIMESTAMPNS, `-socket-times`): the delivery without the harness's own wait to read it " +
			"(its clients share the cores with the daemon and the database). A segment read may be later than the event's bytes, never earlier.\n")
	}
	w.WriteString("\nCPU columns: cores used on average over the run (100% = one core; the machine has " + fmt.Sprint(runtime.NumCPU()) + ").\n")
	w.WriteString("\nTargets: p50 ≤ 5 ms, p99 ≤ 25 ms at 1,000 tx/s with 1,000 and with 10,000 subscribers; p99 ≤ 50 ms at 10,000 tx/s with 1,000; broadcast p99 ≤ 100 ms with 10,000.\n\n")
	return w.String()
}

// msOrDash is ms, or "-" for a figure not measured.
func msOrDash(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return ms(d)
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}
