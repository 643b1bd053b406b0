package stream

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tagstream/tagstream/cdc"
)

// The fan-out benchmark's clients run in a child process (this test binary
// again, running TestFanoutClients): 10,000 connections need 20,000 file
// descriptors on one side or the other, and the server's heap is then
// measured without the clients' buffers in it.
const clientsEnv = "TAGSTREAM_STREAM_BENCH_CLIENTS"

// subscription i: even ones exact tags, odd ones patterns; every one matches
// the broadcast tag "todos" and exactly one matches "user:<i>:todos".
func benchQuery(i int) string {
	if i%2 == 0 {
		return fmt.Sprintf("tags=todos,user:%d:todos,todo:%d", i, i)
	}
	return fmt.Sprintf("tags=todo*,user:%d:*", i)
}

// runFanoutClients is the benchmark's client process (TestMain runs it when
// clientsEnv is set). It connects <n> clients to <addr>, prints "ready",
// then for each "wait <k>" line on stdin prints "ok" once its clients have
// received k invalidate events in total.
func runFanoutClients(spec string) {
	addr, nstr, _ := strings.Cut(spec, ",")
	n, _ := strconv.Atoi(nstr)
	conns := make([]net.Conn, n)
	readers := make([]*bufio.Reader, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				panic(err)
			}
			fmt.Fprintf(c, "GET /events?%s HTTP/1.1\r\nHost: b\r\n\r\n", benchQuery(i))
			rd := bufio.NewReaderSize(c, 512)
			for {
				line, err := rd.ReadSlice('\n')
				if err != nil {
					panic(err)
				}
				if string(line) == "event: ready\n" {
					break
				}
			}
			conns[i], readers[i] = c, rd
		}()
	}
	wg.Wait()
	var (
		mu    sync.Mutex
		cond  = sync.NewCond(&mu)
		total int64
	)
	for i := range n {
		go func() {
			rd := readers[i]
			for {
				line, err := rd.ReadSlice('\n')
				if err != nil {
					return
				}
				if string(line) == "event: invalidate\n" {
					mu.Lock()
					total++
					mu.Unlock()
					cond.Broadcast()
				}
			}
		}()
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		k, _ := strconv.ParseInt(strings.TrimPrefix(in.Text(), "wait "), 10, 64)
		mu.Lock()
		for total < k {
			cond.Wait()
		}
		mu.Unlock()
		fmt.Println("ok")
	}
	for _, c := range conns {
		c.Close()
	}
}

type clientProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

func startClients(b *testing.B, addr string, n int) *clientProc {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), clientsEnv+"="+addr+","+strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p := &clientProc{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	p.expect(b, "ready")
	return p
}

func (p *clientProc) expect(b *testing.B, want string) {
	line, err := p.out.ReadString('\n')
	if err != nil || strings.TrimSpace(line) != want {
		b.Fatalf("client process: %q %v, want %q", line, err, want)
	}
}

func (p *clientProc) wait(b *testing.B, total int64) {
	fmt.Fprintf(p.stdin, "wait %d\n", total)
	p.expect(b, "ok")
}

func (p *clientProc) stop() {
	p.stdin.Close()
	_, _ = io.Copy(io.Discard, p.out)
	_ = p.cmd.Wait()
}

// cpuTime is the CPU time (user and system) this process has used: with
// the load generator and other work on the same cores, wall-clock rates
// depend on the machine's load, CPU per delivery much less.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func memNow() (heap, stack uint64) {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc, ms.StackInuse
}

// BenchmarkFanout connects 10,000 SSE clients (half exact tags, half
// patterns) over loopback and reports the server's memory per idle
// connection, then the delivery rate of broadcasts (one transaction to all
// 10,000) and of targeted publishes (each to one subscriber by its tag).
//
//	go test -run '^$' -bench Fanout ./stream/    (about 20 s)
func BenchmarkFanout(b *testing.B) {
	const n = 10000
	h := NewHub(Options{})
	srv := httptest.NewServer(h)
	defer srv.Close()
	defer h.Close()

	g0 := runtime.NumGoroutine()
	heap0, stack0 := memNow()
	p := startClients(b, srv.Listener.Addr().String(), n)
	defer p.stop()
	if got := h.Stats().Subscribers; got != n {
		b.Fatalf("%d subscribers", got)
	}
	heap1, stack1 := memNow()
	if f := os.Getenv("STREAM_HEAPPROFILE"); f != "" {
		fh, _ := os.Create(f)
		_ = pprof.WriteHeapProfile(fh)
		fh.Close()
	}
	goroutines := runtime.NumGoroutine() - g0
	b.Run("idle", func(b *testing.B) {
		for b.Loop() {
		}
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(float64(heap1-heap0)/n, "heapB/conn")
		b.ReportMetric(float64(stack1-stack0)/n, "stackB/conn")
		b.ReportMetric(float64(goroutines)/n, "goroutines/conn")
	})

	var pos cdc.Position
	var expected int64
	ctx := context.Background()

	b.Run("broadcast", func(b *testing.B) {
		start, cpu0 := time.Now(), cpuTime()
		var count int64
		for b.Loop() {
			pos++
			if err := h.Publish(ctx, pos, time.Now(), []string{"todos", "todo:x"}); err != nil {
				b.Fatal(err)
			}
			expected += n
			count += n
			p.wait(b, expected)
		}
		b.ReportMetric(float64(count)/time.Since(start).Seconds(), "deliveries/s")
		b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(count), "server-cpu-ns/delivery")
	})
	b.Run("targeted", func(b *testing.B) {
		const batch = 1000
		start, cpu0 := time.Now(), cpuTime()
		var count int64
		var publish time.Duration
		for b.Loop() {
			t0 := time.Now()
			for i := range batch {
				pos++
				tag := "user:" + strconv.Itoa((int(pos)*7919+i)%n) + ":todos"
				if err := h.Publish(ctx, pos, time.Now(), []string{tag}); err != nil {
					b.Fatal(err)
				}
			}
			publish += time.Since(t0)
			expected += batch
			count += batch
			p.wait(b, expected)
		}
		b.ReportMetric(float64(count)/time.Since(start).Seconds(), "deliveries/s")
		b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(count), "server-cpu-ns/delivery")
		b.ReportMetric(float64(publish.Nanoseconds())/float64(count), "ns/publish")
	})
	if st := h.Stats(); st.Overflows != 0 {
		b.Fatalf("overflows during the benchmark: %+v", st)
	}
}

// BenchmarkPublishMatch measures Publish alone (matching and queueing, no
// connections) with 10,000 subscribers, for a tag one of them watches: the
// cost must not grow with the number of subscribers.
func BenchmarkPublishMatch(b *testing.B) {
	for _, n := range []int{100, 10000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			h := NewHub(Options{QueueSize: 1 << 30})
			defer h.Close()
			h.mu.Lock()
			for i := range n {
				tags, _ := ParseTags([]string{strings.TrimPrefix(benchQuery(i), "tags=")})
				h.nextID++
				h.join(&conn{id: h.nextID, entries: tags, wake: make(chan struct{}, 1)}, 0, false)
			}
			h.mu.Unlock()
			ctx := context.Background()
			var pos cdc.Position
			tags := make([]string, 1)
			var buf bytes.Buffer
			for b.Loop() {
				pos++
				buf.Reset()
				buf.WriteString("user:")
				buf.WriteString(strconv.Itoa(int(pos) % n))
				buf.WriteString(":todos")
				tags[0] = buf.String()
				_ = h.Publish(ctx, pos, ts0, tags)
				if pos%4096 == 0 {
					b.StopTimer()
					h.mu.Lock()
					for c := range h.conns {
						c.queue = nil
					}
					h.mu.Unlock()
					b.StartTimer()
				}
			}
		})
	}
}
