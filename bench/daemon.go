package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tagstream/tagstream/internal/launch"
)

// daemon is a `tagstream run` (or serve) child process, started by
// internal/launch like the end-to-end tests' daemons.
type daemon struct {
	*launch.Process
	cmd    *exec.Cmd
	addr   string
	exited <-chan struct{} // closed once the process has exited
}

// startDaemon runs `bin run args… --listen 127.0.0.1:<free port>` and waits
// until /healthz answers. The clock of a drain starts before this call.
func (b *bench) startDaemon(ctx context.Context, name string, args ...string) (*daemon, error) {
	addr, err := launch.FreeAddr()
	if err != nil {
		return nil, err
	}
	return b.startDaemonAt(ctx, name, addr, args...)
}

// startDaemonAt is startDaemon listening on addr (a restart where the
// clients reconnect).
func (b *bench) startDaemonAt(ctx context.Context, name, addr string, args ...string) (*daemon, error) {
	return b.startCommand(ctx, "run", name, addr, args...)
}

// startCommand runs `bin command args… --listen addr` (run, or serve for an
// edge node), its output in <tmp>/<name>.log, and waits until /healthz
// answers.
func (b *bench) startCommand(ctx context.Context, command, name, addr string, args ...string) (*daemon, error) {
	args = append([]string{command}, args...)
	args = append(args, "--listen", addr)
	b.record(b.tagstream, args...)
	p, err := launch.Start(launch.Options{Path: b.tagstream, Args: args, LogFile: filepath.Join(b.tmp, name+".log")})
	if err != nil {
		return nil, fmt.Errorf("start tagstream: %w", err)
	}
	d := &daemon{Process: p, cmd: p.Cmd, addr: addr, exited: p.Done()}
	if err := d.waitHTTP(ctx, "/healthz", 30*time.Second); err != nil {
		_ = d.stop()
		return nil, err
	}
	return d, nil
}

// waitHTTP polls path every 10 ms until it answers 200.
func (d *daemon) waitHTTP(ctx context.Context, path string, limit time.Duration) error {
	ctx, cancel := context.WithTimeoutCause(ctx, limit, fmt.Errorf("tagstream %s did not answer 200 within %s", path, limit))
	defer cancel()
	return d.Await(ctx, 10*time.Millisecond, launch.HTTPStatus200("http://"+d.addr+path))
}

// stop sends SIGTERM (the daemon drains and exits 0) and waits; after 20 s
// it kills the process group.
func (d *daemon) stop() error {
	if err := d.Stop(20 * time.Second); err != nil {
		return fmt.Errorf("tagstream: %w", err)
	}
	return nil
}

func (d *daemon) logTail() string { return d.Log().Tail(3000) }

// rssKiB reads VmRSS from /proc/PID/status.
func (d *daemon) rssKiB() (int64, error) {
	return procStatusKiB(d.Pid(), "VmRSS")
}

func procStatusKiB(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			v = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// cpu returns the user+system CPU time the process has used so far.
func (d *daemon) cpu() time.Duration { return procCPU(d.Pid()) }

func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the parenthesised command name; utime and stime are the
	// 14th and 15th fields of the whole line, in clock ticks (100 Hz).
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+1:]
	}
	f := strings.Fields(s)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// metric reads one value from the daemon's /metrics, or -1.
func (d *daemon) metric(name string) float64 {
	client := &http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get("http://" + d.addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	for line := range strings.SplitSeq(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
