package main

import (
	"flag"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/tagstream/tagstream/pipeline"
	"github.com/tagstream/tagstream/sink/redispub"
	"github.com/tagstream/tagstream/sink/webhook"
)

// sinkFlags configure where tags go besides the SSE clients: webhooks and
// Redis PUBLISH. `run` and `serve` share them.
type sinkFlags struct {
	webhooks      listFlag
	webhookSecret string
	webhookTO     time.Duration
	webhookGiveUp time.Duration
	webhookBatch  time.Duration

	redisURL       string
	redisChannel   string
	redisResetKeys string
	redisGiveUp    time.Duration
}

// listFlag is a repeatable flag whose default comes from a comma-separated
// environment variable; the first use on the command line replaces it.
type listFlag struct {
	vals []string
	set  bool
}

func (l *listFlag) String() string { return strings.Join(l.vals, ",") }

func (l *listFlag) Set(v string) error {
	if !l.set {
		l.vals, l.set = nil, true
	}
	l.vals = append(l.vals, v)
	return nil
}

// setFromEnv takes the comma-separated form of the environment variable.
func (l *listFlag) setFromEnv(v string) error {
	l.vals = splitList(v)
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

func (f *sinkFlags) register(fs *flag.FlagSet) {
	fs.Var(&f.webhooks, "webhook", "POST each batch of tags to this `URL`, signed (repeatable; env TAGSTREAM_WEBHOOKS, comma-separated)")
	fs.StringVar(&f.webhookSecret, "webhook-secret", "", "HMAC-SHA256 `secret` of the Tagstream-Signature header (required with --webhook; env TAGSTREAM_WEBHOOK_SECRET)")
	fs.DurationVar(&f.webhookTO, "webhook-timeout", webhook.DefaultTimeout, "a webhook request without an answer this long is retried (env TAGSTREAM_WEBHOOK_TIMEOUT)")
	fs.DurationVar(&f.webhookGiveUp, "webhook-give-up", 10*time.Minute, "a webhook failing this long stops holding the database back and gets a reset when it answers again (0 = never; env TAGSTREAM_WEBHOOK_GIVE_UP)")
	fs.DurationVar(&f.webhookBatch, "webhook-batch-window", 0, "wait this long for more transactions before posting a batch (0: post what queued during the previous request; env TAGSTREAM_WEBHOOK_BATCH_WINDOW)")
	fs.StringVar(&f.redisURL, "redis-publish", "", "PUBLISH every tag to this Redis `URL`: redis://[user:pass@]host:port[/db] (env TAGSTREAM_REDIS_PUBLISH)")
	fs.StringVar(&f.redisChannel, "redis-channel", redispub.DefaultChannel, "Redis `channel` for --redis-publish (env TAGSTREAM_REDIS_CHANNEL)")
	fs.StringVar(&f.redisResetKeys, "redis-reset-keys", "", "comma-separated `keys` published when continuity is lost (env TAGSTREAM_REDIS_RESET_KEYS)")
	fs.DurationVar(&f.redisGiveUp, "redis-give-up", 10*time.Minute, "Redis failing this long stops holding the database back; the reset keys are published when it answers again (0 = never; env TAGSTREAM_REDIS_GIVE_UP)")
}

// build validates the flags and returns the sinks as pipeline targets, and
// what must be closed when the daemon stops.
func (f *sinkFlags) build(log *slog.Logger) ([]pipeline.Target, []io.Closer, error) {
	if len(f.webhooks.vals) > 0 && f.webhookSecret == "" {
		return nil, nil, usageErrorf("--webhook-secret is required with --webhook (or TAGSTREAM_WEBHOOK_SECRET): the receiver verifies each request with it")
	}
	if f.webhookTO <= 0 {
		return nil, nil, usageErrorf("--webhook-timeout must be positive, not %s", f.webhookTO)
	}
	if f.webhookGiveUp < 0 || f.redisGiveUp < 0 || f.webhookBatch < 0 {
		return nil, nil, usageErrorf("--webhook-give-up, --redis-give-up and --webhook-batch-window must not be negative")
	}
	var targets []pipeline.Target
	for _, u := range f.webhooks.vals {
		s, err := webhook.New(webhook.Config{URL: u, Secret: f.webhookSecret, Timeout: f.webhookTO, UserAgent: "tagstream/" + version})
		if err != nil {
			return nil, nil, usageErrorf("--webhook: %s", strings.TrimPrefix(err.Error(), webhook.ErrConfig.Error()+": "))
		}
		targets = append(targets, pipeline.Target{Name: "webhook " + s.String(), Sink: s, GiveUp: f.webhookGiveUp, Linger: f.webhookBatch})
	}
	var closers []io.Closer
	if f.redisURL != "" {
		keys := splitList(f.redisResetKeys)
		s, err := redispub.New(redispub.Config{URL: f.redisURL, Channel: f.redisChannel, ResetKeys: keys, Logger: log})
		if err != nil {
			return nil, nil, usageErrorf("--redis-publish: %s", strings.TrimPrefix(err.Error(), redispub.ErrConfig.Error()+": "))
		}
		targets = append(targets, pipeline.Target{Name: s.String(), Sink: s, GiveUp: f.redisGiveUp})
		closers = append(closers, s)
	}
	if f.redisURL == "" && f.redisResetKeys != "" {
		return nil, nil, usageErrorf("--redis-reset-keys needs --redis-publish")
	}
	return targets, closers, nil
}
