// Package auth decides which tags a request to /events may subscribe to. It
// verifies JSON Web Tokens (github.com/golang-jwt/jwt/v5) against an HMAC
// secret, PEM public keys and a JSON Web Key Set, and turns a token's claims
// into tag patterns: the patterns of its tags claim, plus templates filled
// from its claims (`user:{sub}:*`), plus what anonymous requests may have.
// Every requested entry must be contained in one of them (stream.Contains).
//
// An Authorizer's Authorize method is the hub's stream.Options.Authorize.
package auth

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tagstream/tagstream/stream"
)

// Defaults for Config's zero values.
const (
	DefaultCookie      = "tagstream_token"
	DefaultTagsClaim   = "tags"
	DefaultLeeway      = 5 * time.Second
	DefaultJWKSRefresh = 15 * time.Minute
)

// Config configures an Authorizer. With no key (Secret, PublicKeys, JWKS)
// no token is accepted, and every request gets only Anonymous.
type Config struct {
	Secret     []byte             // HMAC secret: HS256, HS384, HS512
	PublicKeys []crypto.PublicKey // RSA (RS*, PS*), ECDSA (ES* by curve), Ed25519 (EdDSA)
	// JWKS is a JSON Web Key Set: an http(s) URL or a file. It is read at
	// New, again every JWKSRefresh, and when a token names a key ID it
	// does not hold (at most once per unknownKIDEvery).
	JWKS        string
	JWKSRefresh time.Duration
	HTTPClient  *http.Client // fetches JWKS URLs; nil: a client with a 10 s timeout

	Cookie    string        // cookie that may carry the token (default tagstream_token)
	TagsClaim string        // claim holding the allowed patterns; a dotted path reaches into objects (default tags)
	Allow     []string      // templates: `{claim}` is replaced by the claim's value (ParseTemplate)
	Anonymous []string      // patterns a request without a token may subscribe to (and every token too)
	Leeway    time.Duration // clock skew allowed on exp and nbf (default 5s; negative: none)
	Issuer    string        // when set, the iss a token must carry
	Audience  string        // when set, a value the token's aud must hold

	Logger *slog.Logger
	Now    func() time.Time
}

// Authorizer authorizes /events requests. Close stops its JWKS refreshes.
type Authorizer struct {
	keys      *keySet // nil: no key configured
	parser    *jwt.Parser
	methods   []string
	cookie    string
	tagsClaim string
	allow     []Template
	anonymous []string
	leeway    time.Duration
	stop      context.CancelFunc
}

// New checks cfg and returns an Authorizer; with a JWKS it has read the set
// once (an error if it cannot).
func New(ctx context.Context, cfg Config) (*Authorizer, error) {
	if cfg.Cookie == "" {
		cfg.Cookie = DefaultCookie
	}
	if cfg.TagsClaim == "" {
		cfg.TagsClaim = DefaultTagsClaim
	}
	switch {
	case cfg.Leeway == 0:
		cfg.Leeway = DefaultLeeway
	case cfg.Leeway < 0:
		cfg.Leeway = 0
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	a := &Authorizer{cookie: cfg.Cookie, tagsClaim: cfg.TagsClaim, anonymous: cfg.Anonymous, leeway: cfg.Leeway, stop: func() {}}
	for _, s := range cfg.Allow {
		t, err := ParseTemplate(s)
		if err != nil {
			return nil, fmt.Errorf("auth: allow %q: %w", s, err)
		}
		a.allow = append(a.allow, t)
	}
	for _, k := range cfg.PublicKeys {
		if algorithms(k) == nil {
			return nil, fmt.Errorf("auth: unsupported public key type %T", k)
		}
	}
	if len(cfg.Secret) == 0 && len(cfg.PublicKeys) == 0 && cfg.JWKS == "" {
		return a, nil
	}
	a.keys = &keySet{secret: cfg.Secret, static: cfg.PublicKeys}
	if cfg.JWKS != "" {
		jctx, stop := context.WithCancel(ctx)
		st, err := openJWKS(jctx, cfg)
		if err != nil {
			stop()
			return nil, err
		}
		a.keys.jwks, a.stop = st, stop
	}
	a.methods = a.keys.methods()
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(a.methods),
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithJSONNumber(),
		jwt.WithTimeFunc(cfg.Now),
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	a.parser = jwt.NewParser(opts...)
	return a, nil
}

// Close stops the JWKS refreshes.
func (a *Authorizer) Close() { a.stop() }

// Methods are the signing algorithms a token may use: those of the
// configured keys, never "none".
func (a *Authorizer) Methods() []string { return slices.Clone(a.methods) }

// Authorize is stream.Options.Authorize: it finds the request's token (the
// Authorization header's Bearer token, else the access_token query
// parameter, else the cookie), verifies it and checks that every entry is
// contained in a pattern the token (or, without one, anonymity) allows. It
// returns when the token expires (zero: it has no exp).
func (a *Authorizer) Authorize(r *http.Request, entries []string) (time.Time, error) {
	raw, err := a.token(r)
	if err != nil {
		return time.Time{}, err
	}
	if raw == "" || a.keys == nil {
		// Without a key a token cannot be checked: it is not looked at.
		e, ok := firstDenied(a.anonymous, entries)
		switch {
		case ok:
			return time.Time{}, nil
		case a.keys == nil:
			return time.Time{}, deny(stream.ErrForbidden, "tag %q is not allowed", e)
		case len(a.anonymous) == 0:
			return time.Time{}, deny(stream.ErrUnauthorized, "missing token: send Authorization: Bearer <token>, ?access_token=<token> or the %s cookie", a.cookie)
		}
		return time.Time{}, deny(stream.ErrUnauthorized, "missing token: tag %q is not open to anonymous subscribers", e)
	}
	claims, expires, err := a.verify(r.Context(), raw)
	if err != nil {
		return time.Time{}, err
	}
	allowed, err := a.grant(claims)
	if err != nil {
		return time.Time{}, err
	}
	if e, ok := firstDenied(allowed, entries); !ok {
		return time.Time{}, deny(stream.ErrForbidden, "tag %q is not allowed by the token", e)
	}
	return expires, nil
}

// token returns the request's token, "" when it carries none. An
// Authorization header of another scheme (Basic, for a proxy) is not ours.
func (a *Authorizer) token(r *http.Request) (string, error) {
	if h := r.Header.Get("Authorization"); len(h) >= 6 && strings.EqualFold(h[:6], "bearer") && (len(h) == 6 || h[6] == ' ') {
		if t := strings.TrimSpace(h[6:]); t != "" {
			return t, nil
		}
		return "", deny(stream.ErrUnauthorized, "invalid token: empty Bearer token")
	}
	if t := r.URL.Query().Get("access_token"); t != "" {
		return t, nil
	}
	if c, err := r.Cookie(a.cookie); err == nil && c.Value != "" {
		return c.Value, nil
	}
	return "", nil
}

// verify checks the token's signature, algorithm and time claims.
func (a *Authorizer) verify(ctx context.Context, raw string) (jwt.MapClaims, time.Time, error) {
	claims := jwt.MapClaims{}
	tok, err := a.parser.ParseWithClaims(raw, claims, a.keys.keyfunc(ctx))
	if err != nil {
		return nil, time.Time{}, deny(stream.ErrUnauthorized, "invalid token: %s", a.reason(tok, err))
	}
	var expires time.Time
	if exp, _ := claims.GetExpirationTime(); exp != nil {
		expires = exp.Add(a.leeway)
	}
	return claims, expires, nil
}

// reason says in a few words why a token was refused.
func (a *Authorizer) reason(tok *jwt.Token, err error) string {
	var alg string
	if tok != nil {
		alg, _ = tok.Header["alg"].(string)
	}
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "malformed"
	case alg != "" && !slices.Contains(a.methods, alg):
		return fmt.Sprintf("algorithm %q is not accepted (accepted: %s)", alg, strings.Join(a.methods, ", "))
	case errors.Is(err, errNoKey):
		return "no configured key matches it"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "bad signature"
	case errors.Is(err, jwt.ErrTokenExpired):
		return "expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "not valid yet"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "wrong issuer"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "wrong audience"
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return "unverifiable"
	}
	return "invalid claims"
}

// grant is what a verified token may subscribe to: the anonymous patterns,
// its tags claim, and the templates its claims fill.
func (a *Authorizer) grant(claims jwt.MapClaims) ([]string, error) {
	allowed := slices.Clip(a.anonymous)
	if v, ok := lookup(claims, a.tagsClaim); ok {
		list, ok := v.([]any)
		if !ok {
			return nil, deny(stream.ErrUnauthorized, "invalid token: claim %q is not an array of strings", a.tagsClaim)
		}
		for _, p := range list {
			s, ok := p.(string)
			if !ok {
				return nil, deny(stream.ErrUnauthorized, "invalid token: claim %q is not an array of strings", a.tagsClaim)
			}
			allowed = append(allowed, s)
		}
	}
	for _, t := range a.allow {
		if p, ok := t.Fill(claims); ok {
			allowed = append(allowed, p)
		}
	}
	return allowed, nil
}

// firstDenied returns the first entry that no allowed pattern contains.
func firstDenied(allowed, entries []string) (string, bool) {
	for _, e := range entries {
		if !slices.ContainsFunc(allowed, func(p string) bool { return stream.Contains(p, e) }) {
			return e, false
		}
	}
	return "", true
}

// denial is an Authorize error: its text is the response body, its kind
// (stream.ErrUnauthorized or stream.ErrForbidden) the status.
type denial struct {
	kind error
	msg  string
}

func (d *denial) Error() string { return d.msg }
func (d *denial) Unwrap() error { return d.kind }

func deny(kind error, format string, a ...any) error {
	return &denial{kind: kind, msg: fmt.Sprintf(format, a...)}
}
