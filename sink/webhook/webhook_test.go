package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/sink"
)

const secret = "s3cret"

// target is an HTTP endpoint that verifies each request's signature as a
// receiver would, records the bodies it accepted, and answers status(n) to
// the n-th request.
type target struct {
	t      *testing.T
	status func(n int) int
	mu     sync.Mutex
	n      int
	bodies []string
	srv    *httptest.Server
}

func newTarget(t *testing.T, status func(n int) int) *target {
	tg := &target{t: t, status: status}
	tg.srv = httptest.NewServer(http.HandlerFunc(tg.serve))
	t.Cleanup(tg.srv.Close)
	return tg
}

func (tg *target) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
		tg.t.Errorf("got %s with Content-Type %q", r.Method, r.Header.Get("Content-Type"))
	}
	if !verify(secret, r.Header.Get(SignatureHeader), body) {
		tg.t.Errorf("bad signature %q for %s", r.Header.Get(SignatureHeader), body)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	tg.mu.Lock()
	tg.n++
	code := tg.status(tg.n)
	if code/100 == 2 {
		tg.bodies = append(tg.bodies, string(body))
	}
	tg.mu.Unlock()
	w.WriteHeader(code)
	_, _ = io.WriteString(w, "  not today\n")
}

// verify checks a signature independently of Sign: the hex HMAC-SHA256 of
// "<t>.<body>", compared in constant time.
func verify(secret, header string, body []byte) bool {
	parts := map[string]string{}
	for _, p := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(p, "=")
		parts[k] = v
	}
	if _, err := strconv.ParseInt(parts["t"], 10, 64); err != nil {
		return false
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(parts["t"] + "." + string(body)))
	got, err := hex.DecodeString(parts["v1"])
	return err == nil && hmac.Equal(got, mac.Sum(nil))
}

func (tg *target) got() []string {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return slices.Clone(tg.bodies)
}

var t0 = time.Date(2026, 12, 2, 10, 0, 0, 123456000, time.UTC)

func txn(pos uint64, tags ...string) sink.Txn {
	return sink.Txn{Position: cdc.Position(pos), Time: t0.Add(time.Duration(pos) * time.Millisecond), Tags: tags}
}

func newSink(t *testing.T, cfg Config) *Sink {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func ok(int) int { return http.StatusNoContent }

func TestDeliverPostsTheSignedUnionOfTheBatch(t *testing.T) {
	tg := newTarget(t, ok)
	s := newSink(t, Config{URL: tg.srv.URL, Secret: secret})
	ctx := context.Background()
	// 18446744073709551615 does not fit a JavaScript number: a string.
	if err := s.Deliver(ctx, []sink.Txn{txn(10, "todo:1", "todos"), txn(11), txn(12, "todos", "user:7:*")}); err != nil {
		t.Fatal(err)
	}
	if err := s.Deliver(ctx, []sink.Txn{txn(13), txn(14)}); err != nil { // no tags: no request
		t.Fatal(err)
	}
	if err := s.Deliver(ctx, []sink.Txn{{Position: 18446744073709551615, Time: t0, Tags: []string{"a"}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Reset(ctx, "replication slot invalidated", 99); err != nil {
		t.Fatal(err)
	}
	want := []string{
		`{"tags":["todo:1","todos","user:7:*"],"position":"12","ts":"2026-12-02T10:00:00.135456Z"}`,
		`{"tags":["a"],"position":"18446744073709551615","ts":"2026-12-02T10:00:00.123456Z"}`,
		`{"reset":true,"reason":"replication slot invalidated","position":"99"}`,
	}
	if got := tg.got(); !slices.Equal(got, want) {
		t.Fatalf("bodies:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestLargeBatchesAreSplitInPositionOrder(t *testing.T) {
	tg := newTarget(t, ok)
	s := newSink(t, Config{URL: tg.srv.URL, Secret: secret, MaxTags: 2})
	err := s.Deliver(context.Background(), []sink.Txn{txn(1, "a"), txn(2, "b"), txn(3, "c"), txn(4), txn(5, "d", "e", "f")})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`{"tags":["a","b"],"position":"2","ts":"2026-12-02T10:00:00.125456Z"}`,
		`{"tags":["c","d","e","f"],"position":"5","ts":"2026-12-02T10:00:00.128456Z"}`,
	}
	if got := tg.got(); !slices.Equal(got, want) {
		t.Fatalf("bodies:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestNon2xxAndTimeoutsAreErrorsWithoutCredentials(t *testing.T) {
	tg := newTarget(t, func(int) int { return http.StatusInternalServerError })
	u := strings.Replace(tg.srv.URL, "http://", "http://user:pw@", 1)
	s := newSink(t, Config{URL: u, Secret: secret})
	err := s.Deliver(context.Background(), []sink.Txn{txn(1, "a")})
	want := "webhook http://user:xxxxx@" + strings.TrimPrefix(tg.srv.URL, "http://") + `: answered 500 Internal Server Error: "not today"`
	if err == nil || err.Error() != want {
		t.Fatalf("error %v, want %s", err, want)
	}

	stall := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-stall }))
	defer slow.Close()
	defer close(stall)
	s = newSink(t, Config{URL: slow.URL, Secret: secret, Timeout: 50 * time.Millisecond})
	err = s.Deliver(context.Background(), []sink.Txn{txn(1, "a")})
	if want := "webhook " + slow.URL + ": no answer within 50ms"; err == nil || err.Error() != want {
		t.Fatalf("error %v, want %s", err, want)
	}

	s = newSink(t, Config{URL: "http://127.0.0.1:1/hook", Secret: secret})
	err = s.Deliver(context.Background(), []sink.Txn{txn(1, "a")})
	if err == nil || !strings.HasPrefix(err.Error(), "webhook http://127.0.0.1:1/hook: dial tcp 127.0.0.1:1: connect: connection refused") {
		t.Fatalf("error %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{URL: "example.com/hook", Secret: "x"}, `webhook: invalid configuration: "example.com/hook" is not an http:// or https:// URL`},
		{Config{URL: "ftp://example.com/", Secret: "x"}, `webhook: invalid configuration: "ftp://example.com/" is not an http:// or https:// URL`},
		{Config{URL: "https:///path", Secret: "x"}, `webhook: invalid configuration: "https:///path" is not an http:// or https:// URL`},
		{Config{URL: "https://example.com/hook"}, `webhook: invalid configuration: a secret is required to sign requests`},
		{Config{URL: "https://example.com/hook", Secret: "x", Timeout: -1}, `webhook: invalid configuration: negative timeout or tag bound`},
	} {
		_, err := New(c.cfg)
		if err == nil || err.Error() != c.want || !errors.Is(err, ErrConfig) {
			t.Errorf("New(%+v) = %v, want %s", c.cfg, err, c.want)
		}
	}
}

func TestVerify(t *testing.T) {
	body := []byte(`{"tags":["a"]}`)
	at := time.Unix(1700000000, 0)
	good := Sign(secret, at, body)
	for _, c := range []struct {
		header string
		body   []byte
		now    time.Time
		want   error
	}{
		{good, body, at.Add(4 * time.Minute), nil},
		{good, body, at.Add(-4 * time.Minute), nil},
		{good, []byte(`{"tags":["b"]}`), at, ErrBadSignature},
		{Sign("other", at, body), body, at, ErrBadSignature},
		{good, body, at.Add(6 * time.Minute), ErrStale},
		{"", body, at, ErrNoSignature},
		{"v1=abc", body, at, ErrNoSignature},
		{"t=1700000000", body, at, ErrNoSignature},
	} {
		if err := Verify(secret, c.header, c.body, c.now, 5*time.Minute); !errors.Is(err, c.want) {
			t.Errorf("Verify(%q, %s, %v) = %v, want %v", c.header, c.body, c.now.Sub(at), err, c.want)
		}
	}
}

func TestSignIsTheDocumentedHMAC(t *testing.T) {
	// echo -n '1700000000.{"tags":["a"]}' | openssl dgst -sha256 -hmac s3cret
	got := Sign(secret, time.Unix(1700000000, 0), []byte(`{"tags":["a"]}`))
	if want := "t=1700000000,v1=684cdee8561c47a4e9cc4a8a07d59e918c2884c8e04bb0df17630d550153a4fc"; got != want {
		t.Fatalf("Sign = %s, want %s", got, want)
	}
}
