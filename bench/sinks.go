package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tagstream/tagstream/sink/webhook"
	"github.com/tagstream/tagstream/testcontainers"
)

const benchHookSecret = "bench-secret"

// sinkTargets are the destinations of the sinks the benchmark configures: a
// webhook receiver in this process (it verifies every signature, as a
// Next.js route would) and a private redis-server with one subscriber.
// Each reports when the marker tag reached it, and the receiver records
// commit → receipt latencies.
type sinkTargets struct {
	srv    *http.Server
	url    string
	redis  *testcontainers.RedisServer
	client *redis.Client
	ps     *redis.PubSub
	done   sync.WaitGroup

	mu          sync.Mutex
	rec         *recorder // webhook latencies, kind "webhook"; nil between runs
	hookMarker  time.Time
	redisMarker time.Time
}

// sinks starts the targets on first use; run's cleanup stops them.
func (b *bench) sinks(ctx context.Context) (*sinkTargets, error) {
	if b.sinkTargets != nil {
		return b.sinkTargets, nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &sinkTargets{url: "http://" + ln.Addr().String() + "/api/tagstream"}
	s.srv = &http.Server{Handler: http.HandlerFunc(s.serveHook), ReadHeaderTimeout: 10 * time.Second}
	s.done.Go(func() { _ = s.srv.Serve(ln) })
	if s.redis, err = testcontainers.StartRedis(ctx); err != nil {
		s.close()
		return nil, fmt.Errorf("start redis: %w", err)
	}
	s.client = redis.NewClient(&redis.Options{Addr: s.redis.Addr})
	s.ps = s.client.Subscribe(ctx, "live-query-invalidations")
	if _, err := s.ps.Receive(ctx); err != nil {
		s.close()
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	msgs := s.ps.Channel(redis.WithChannelSize(1 << 16))
	s.done.Go(func() {
		for m := range msgs {
			if m.Payload == markerTag {
				s.mu.Lock()
				s.redisMarker = time.Now()
				s.mu.Unlock()
			}
		}
	})
	b.sinkTargets = s
	b.note("sinks: a webhook receiver in the harness process (verifies each signature, answers 204) and a private redis-server with one SUBSCRIBEd client")
	return s, nil
}

// args configures `tagstream run` to deliver to the targets.
func (s *sinkTargets) args() []string {
	return []string{"--webhook", s.url, "--webhook-secret", benchHookSecret, "--redis-publish", s.redis.URL(0)}
}

func (s *sinkTargets) serveHook(w http.ResponseWriter, r *http.Request) {
	at := time.Now()
	raw, err := io.ReadAll(r.Body)
	if err == nil {
		err = webhook.Verify(benchHookSecret, r.Header.Get(webhook.SignatureHeader), raw, at, time.Minute)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	var body struct {
		Tags []string `json:"tags"`
		TS   string   `json:"ts"`
	}
	_ = json.Unmarshal(raw, &body)
	ts, _ := time.Parse(time.RFC3339Nano, body.TS)
	s.mu.Lock()
	if s.rec != nil && !ts.IsZero() {
		s.rec.add("webhook", ts, at, time.Time{})
	}
	if slices.Contains(body.Tags, markerTag) {
		s.hookMarker = at
	}
	s.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// record sends webhook latencies to rec (nil stops).
func (s *sinkTargets) record(rec *recorder) {
	s.mu.Lock()
	s.rec = rec
	s.mu.Unlock()
}

// resetMarkers forgets the markers seen by an earlier drain.
func (s *sinkTargets) resetMarkers() {
	s.mu.Lock()
	s.hookMarker, s.redisMarker = time.Time{}, time.Time{}
	s.mu.Unlock()
}

// waitMarkers waits until both targets saw the marker and returns the later
// arrival.
func (s *sinkTargets) waitMarkers(ctx context.Context) (time.Time, error) {
	for {
		s.mu.Lock()
		h, r := s.hookMarker, s.redisMarker
		s.mu.Unlock()
		if !h.IsZero() && !r.IsZero() {
			if r.After(h) {
				return r, nil
			}
			return h, nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("marker not received by the webhook (%v) and Redis (%v): %w", !h.IsZero(), !r.IsZero(), ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

func (s *sinkTargets) close() {
	if s.ps != nil {
		s.ps.Close()
	}
	if s.client != nil {
		s.client.Close()
	}
	if s.redis != nil {
		s.redis.Stop()
	}
	_ = s.srv.Close()
	s.done.Wait()
}
