package main

import (
	"context"
	"crypto/tls"
	"flag"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tagstream/tagstream/auth"
	"github.com/tagstream/tagstream/stream"
)

// edgeFlags are the flags of whatever serves /events to clients (run, and
// serve on an edge node): authorization, CORS, connection limits and TLS.
type edgeFlags struct {
	jwtSecret, jwtPublicKey, jwks, jwtCookie, jwtTagsClaim string
	jwtAllow, anonymousTags, jwtIssuer, jwtAudience        string
	jwtLeeway, jwksRefresh                                 time.Duration
	corsOrigins                                            string
	maxConns, maxConnsPerIP, maxHeaderBytes                int
	tlsCert, tlsKey                                        string
}

func (f *edgeFlags) register(fs *flag.FlagSet) {
	str := func(p *string, name, def, usage string) {
		fs.StringVar(p, name, def, usage+" (env "+envName(name)+")")
	}
	str(&f.jwtSecret, "jwt-secret", "", "HMAC `SECRET` that signs tokens (HS256/384/512); /events then needs a token")
	str(&f.jwtPublicKey, "jwt-public-key", "", "PEM `FILE` of the public key(s) that verify tokens (RS*, PS*, ES*, EdDSA)")
	str(&f.jwks, "jwks", "", "JSON Web Key Set `FILE-or-URL` that verifies tokens; refreshed every --jwks-refresh and on an unknown kid")
	str(&f.jwtCookie, "jwt-cookie", auth.DefaultCookie, "`NAME` of the cookie that may carry the token")
	str(&f.jwtTagsClaim, "jwt-tags-claim", auth.DefaultTagsClaim, "`CLAIM` (dotted path allowed) listing the patterns a token may subscribe to")
	str(&f.jwtAllow, "jwt-allow", "", "comma-separated `PATTERNS` every token may subscribe to, {claim} replaced by the claim's value: user:{sub}:*")
	str(&f.anonymousTags, "anonymous-tags", "", "comma-separated `PATTERNS` a request without a token may subscribe to (default: nothing when a key is set)")
	str(&f.jwtIssuer, "jwt-issuer", "", "when set, the `ISS` a token must carry")
	str(&f.jwtAudience, "jwt-audience", "", "when set, an `AUD` a token's aud must hold")
	fs.DurationVar(&f.jwtLeeway, "jwt-leeway", auth.DefaultLeeway, "clock skew allowed on exp and nbf (env "+envName("jwt-leeway")+")")
	fs.DurationVar(&f.jwksRefresh, "jwks-refresh", auth.DefaultJWKSRefresh, "how often --jwks is read again (env "+envName("jwks-refresh")+")")
	str(&f.corsOrigins, "cors-origins", "", "comma-separated `ORIGINS` (https://app.example.com) whose pages may use /events, or *")
	fs.IntVar(&f.maxConns, "max-connections", 0, "most concurrent /events connections, 0 = unlimited (env "+envName("max-connections")+")")
	fs.IntVar(&f.maxConnsPerIP, "max-connections-per-ip", 0, "most concurrent /events connections per client address, 0 = unlimited (env "+envName("max-connections-per-ip")+")")
	fs.IntVar(&f.maxHeaderBytes, "max-header-bytes", 128<<10, "largest request line and headers in bytes (env "+envName("max-header-bytes")+")")
	str(&f.tlsCert, "tls-cert", "", "PEM certificate `FILE` (chain) to serve HTTPS and HTTP/2; with --tls-key")
	str(&f.tlsKey, "tls-key", "", "PEM private key `FILE` of --tls-cert")
}

// edge is what the edge flags configure, ready for the hub and the server.
type edge struct {
	auth    *auth.Authorizer // nil: /events is open
	cors    *stream.CORS     // nil: no CORS headers
	f       edgeFlags
	tlsCert *tls.Certificate
}

// build checks the flags (a usage error names the flag) and loads keys and
// certificates. Close the edge when done.
func (f *edgeFlags) build(ctx context.Context, logger *slog.Logger) (*edge, error) {
	e := &edge{f: *f}
	switch {
	case f.maxConns < 0:
		return nil, usageErrorf("--max-connections must not be negative, not %d", f.maxConns)
	case f.maxConnsPerIP < 0:
		return nil, usageErrorf("--max-connections-per-ip must not be negative, not %d", f.maxConnsPerIP)
	case f.maxHeaderBytes < 4096:
		return nil, usageErrorf("--max-header-bytes must be at least 4096, not %d", f.maxHeaderBytes)
	case (f.tlsCert == "") != (f.tlsKey == ""):
		return nil, usageErrorf("--tls-cert and --tls-key go together")
	case f.jwtLeeway < 0:
		return nil, usageErrorf("--jwt-leeway must not be negative, not %s", f.jwtLeeway)
	case f.jwksRefresh <= 0:
		return nil, usageErrorf("--jwks-refresh must be positive, not %s", f.jwksRefresh)
	}
	if f.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(f.tlsCert, f.tlsKey)
		if err != nil {
			return nil, usageErrorf("--tls-cert/--tls-key: %v", err)
		}
		e.tlsCert = &cert
	}
	if f.corsOrigins != "" {
		cors, err := stream.NewCORS(splitList(f.corsOrigins))
		if err != nil {
			return nil, usageErrorf("--cors-origins: %v", err)
		}
		e.cors = cors
	}
	a, err := f.authorizer(ctx, logger)
	if err != nil {
		return nil, err
	}
	e.auth = a
	return e, nil
}

// authorizer builds the Authorizer, nil when neither a key nor anonymous
// patterns are configured (/events open to all).
func (f *edgeFlags) authorizer(ctx context.Context, logger *slog.Logger) (*auth.Authorizer, error) {
	cfg := auth.Config{
		Secret: []byte(f.jwtSecret), JWKS: f.jwks, JWKSRefresh: f.jwksRefresh,
		Cookie: f.jwtCookie, TagsClaim: f.jwtTagsClaim, Allow: splitList(f.jwtAllow),
		Issuer: f.jwtIssuer, Audience: f.jwtAudience, Leeway: f.jwtLeeway, Logger: logger,
	}
	if cfg.Leeway == 0 {
		cfg.Leeway = -1 // an explicit 0: no leeway
	}
	if f.anonymousTags != "" {
		anon, err := stream.ParseTags([]string{f.anonymousTags})
		if err != nil {
			return nil, usageErrorf("--anonymous-tags: %v", err)
		}
		cfg.Anonymous = anon
	}
	for _, t := range cfg.Allow {
		if _, err := auth.ParseTemplate(t); err != nil {
			return nil, usageErrorf("--jwt-allow %q: %v", t, err)
		}
	}
	if f.jwtPublicKey != "" {
		data, err := os.ReadFile(f.jwtPublicKey)
		if err != nil {
			return nil, usageErrorf("--jwt-public-key: %v", err)
		}
		if cfg.PublicKeys, err = auth.ParsePublicKeys(data); err != nil {
			return nil, usageErrorf("--jwt-public-key %s: %v", f.jwtPublicKey, err)
		}
	}
	keyed := f.jwtSecret != "" || f.jwtPublicKey != "" || f.jwks != ""
	if !keyed && f.anonymousTags == "" {
		if f.jwtAllow != "" {
			return nil, usageErrorf("--jwt-allow needs a key to verify tokens: --jwt-secret, --jwt-public-key or --jwks")
		}
		return nil, nil
	}
	if f.jwtSecret != "" && len(f.jwtSecret) < 32 {
		logger.Warn("--jwt-secret is shorter than 32 bytes: use a long random secret (openssl rand -base64 32)")
	}
	a, err := auth.New(ctx, cfg)
	if err != nil {
		// Templates and keys were checked above: what is left is the key set.
		return nil, usageErrorf("--jwks: %s", strings.TrimPrefix(err.Error(), "auth: jwks "))
	}
	logger.Info("/events needs authorization", "algorithms", strings.Join(a.Methods(), ","), "anonymous_tags", f.anonymousTags)
	return a, nil
}

// hubOptions adds the edge's authorization and limits to o.
func (e *edge) hubOptions(o stream.Options) stream.Options {
	if e.auth != nil {
		o.Authorize = e.auth.Authorize
	}
	o.MaxConnections, o.MaxConnectionsPerIP = e.f.maxConns, e.f.maxConnsPerIP
	return o
}

// events wraps the /events handler with CORS; mount it for every method
// (OPTIONS is the preflight; the hub answers others but GET with 405).
func (e *edge) events(h http.Handler) http.Handler {
	if e.cors == nil {
		return h
	}
	return e.cors.Handler(h)
}

// configure bounds the server's request headers and sets up TLS.
func (e *edge) configure(srv *http.Server) {
	srv.MaxHeaderBytes = e.f.maxHeaderBytes
	if e.tlsCert != nil {
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*e.tlsCert}, MinVersion: tls.VersionTLS12}
	}
}

// serve serves srv on ln: HTTPS with HTTP/2 when a certificate is set.
func (e *edge) serve(srv *http.Server, ln net.Listener) error {
	if e.tlsCert != nil {
		return srv.ServeTLS(ln, "", "")
	}
	return srv.Serve(ln)
}

// accessCollector exposes the hub's /events refusals as one counter
// labelled by reason, and the connections closed at their token's expiry.
type accessCollector struct{ hub *stream.Hub }

var (
	descRejected = desc("tagstream_events_rejected_total", "/events requests refused, by reason.", "reason")
	descExpired  = desc("tagstream_events_expired_total", "/events connections closed when their token expired.")
)

func (c accessCollector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

func (c accessCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.hub.Stats().Access
	for _, r := range []struct {
		reason string
		n      uint64
	}{
		{"bad_request", s.BadRequest},
		{"unauthorized", s.Unauthorized},
		{"forbidden", s.Forbidden},
		{"max_connections", s.MaxConnections},
		{"max_connections_per_ip", s.MaxConnectionsPerIP},
	} {
		ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(r.n), r.reason)
	}
	ch <- prometheus.MustNewConstMetric(descExpired, prometheus.CounterValue, float64(s.Expired))
}

// close stops the JWKS refreshes.
func (e *edge) close() {
	if e.auth != nil {
		e.auth.Close()
	}
}
