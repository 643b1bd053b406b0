// Package webhook is a sink that POSTs each batch of committed transactions'
// tags to an HTTP endpoint — typically a Next.js route handler that calls
// revalidateTag — signed with HMAC-SHA256 so the endpoint can tell tagstream
// from anyone else.
//
// A request body is {"tags":[…],"position":"<decimal>","ts":"<RFC3339Nano>"}:
// the sorted union of the tags of one or more consecutive transactions,
// position and ts those of the last transaction covered. After continuity
// was lost it is {"reset":true,"reason":"…","position":"<decimal>"}. The
// header Tagstream-Signature is t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
// "<t>.<raw body>")>. Any 2xx answer accepts the request.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/sink"
)

// SignatureHeader carries the request's signature.
const SignatureHeader = "Tagstream-Signature"

// Defaults for Config.
const (
	DefaultTimeout = 5 * time.Second
	// DefaultMaxTags bounds the tags of one request; a batch with more is
	// sent as several requests, in position order.
	DefaultMaxTags = 1000
)

// ErrConfig is wrapped by configuration errors.
var ErrConfig = errors.New("webhook: invalid configuration")

// Config configures a Sink.
type Config struct {
	URL     string
	Secret  string
	Timeout time.Duration // per request, default 5 s
	MaxTags int           // per request, default 1000
	// UserAgent is sent with every request (default "tagstream").
	UserAgent string
	// Client sends the requests (default: a client of its own).
	Client *http.Client
	// Now stamps signatures (default time.Now).
	Now func() time.Time
}

// Sink posts to one URL.
type Sink struct {
	cfg    Config
	target string // the URL without credentials, for errors
}

var _ sink.Sink = (*Sink)(nil)

// New validates cfg and returns a Sink. It does no I/O.
func New(cfg Config) (*Sink, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%w: %q is not an http:// or https:// URL", ErrConfig, cfg.URL)
	}
	if cfg.Secret == "" {
		return nil, fmt.Errorf("%w: a secret is required to sign requests", ErrConfig)
	}
	if cfg.Timeout < 0 || cfg.MaxTags < 0 {
		return nil, fmt.Errorf("%w: negative timeout or tag bound", ErrConfig)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxTags == 0 {
		cfg.MaxTags = DefaultMaxTags
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "tagstream"
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Sink{cfg: cfg, target: u.Redacted()}, nil
}

// String names the target without credentials.
func (s *Sink) String() string { return s.target }

type invalidation struct {
	Tags     []string `json:"tags"`
	Position string   `json:"position"`
	TS       string   `json:"ts"`
}

type reset struct {
	Reset    bool   `json:"reset"`
	Reason   string `json:"reason"`
	Position string `json:"position"`
}

// Deliver posts the union of the batch's tags, in requests of at most
// MaxTags tags each. Transactions without tags send nothing.
func (s *Sink) Deliver(ctx context.Context, batch []sink.Txn) error {
	start, count := 0, 0
	for i := range batch {
		count += len(batch[i].Tags)
		if count >= s.cfg.MaxTags || i == len(batch)-1 {
			if err := s.send(ctx, batch[start:i+1]); err != nil {
				return err
			}
			start, count = i+1, 0
		}
	}
	return nil
}

func (s *Sink) send(ctx context.Context, txns []sink.Txn) error {
	tags := sink.Union(txns)
	if len(tags) == 0 {
		return nil
	}
	last := txns[len(txns)-1]
	body, err := json.Marshal(invalidation{
		Tags:     tags,
		Position: strconv.FormatUint(uint64(last.Position), 10),
		TS:       last.Time.UTC().Format(time.RFC3339Nano),
	})
	if err != nil {
		return err
	}
	return s.post(ctx, body)
}

// Reset posts {"reset":true,…}.
func (s *Sink) Reset(ctx context.Context, reason string, pos cdc.Position) error {
	body, err := json.Marshal(reset{Reset: true, Reason: reason, Position: strconv.FormatUint(uint64(pos), 10)})
	if err != nil {
		return err
	}
	return s.post(ctx, body)
}

// Sign returns the Tagstream-Signature value of body at time t.
func Sign(secret string, t time.Time, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	ts := strconv.FormatInt(t.Unix(), 10)
	mac.Write([]byte(ts))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac.Sum(nil))
}

// Errors of Verify.
var (
	ErrNoSignature  = errors.New("webhook: missing or malformed " + SignatureHeader)
	ErrBadSignature = errors.New("webhook: signature does not match")
	ErrStale        = errors.New("webhook: signature timestamp outside the tolerance")
)

// Verify checks a Tagstream-Signature header for body, as a receiver
// written in Go does: the HMAC must match, compared in constant time, and
// its timestamp must lie within tolerance of now (a replayed request is
// refused).
func Verify(secret, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts, v1 string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			v1 = v
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || v1 == "" {
		return ErrNoSignature
	}
	want := Sign(secret, time.Unix(sec, 0), body)
	if !hmac.Equal([]byte(want[strings.LastIndexByte(want, '=')+1:]), []byte(v1)) {
		return ErrBadSignature
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return ErrStale
	}
	return nil
}

func (s *Sink) post(ctx context.Context, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("webhook %s: %w", s.target, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", s.cfg.UserAgent)
	req.Header.Set(SignatureHeader, Sign(s.cfg.Secret, s.cfg.Now(), body))
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			return fmt.Errorf("webhook %s: no answer within %s", s.target, s.cfg.Timeout)
		}
		return fmt.Errorf("webhook %s: %w", s.target, unwrapURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 == 2 {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // keep the connection reusable
		return nil
	}
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	return fmt.Errorf("webhook %s: answered %s: %q", s.target, resp.Status, bytes.TrimSpace(snippet))
}

// unwrapURLError drops net/http's `Post "URL": ` prefix, which would print
// credentials in the URL.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
