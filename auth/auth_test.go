package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tagstream/tagstream/stream"
)

const denied401, denied403 = http.StatusUnauthorized, http.StatusForbidden

func hour(d int) int64 { return time.Now().Add(time.Duration(d) * time.Hour).Unix() }

// TestTokens walks the token checks through real HTTP: each case asserts
// the exact status and body (no event written on a refusal) or that the
// stream starts with `ready`.
func TestTokens(t *testing.T) {
	k := testKeys()
	rsaPEM := pemOf(t, &k.rsa.PublicKey)
	rsaKeys, _ := ParsePublicKeys(rsaPEM)
	ecKeys, _ := ParsePublicKeys(pemOf(t, &k.ec.PublicKey))
	edKeys, _ := ParsePublicKeys(pemOf(t, k.ed.Public()))
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)

	hs := Config{Secret: secret}
	rs := Config{PublicKeys: rsaKeys}
	both := Config{Secret: secret, PublicKeys: rsaKeys}
	templ := Config{Secret: secret, Allow: []string{"user:{sub}:*", "org:{org.id}:*"}}
	anon := Config{Secret: secret, Anonymous: []string{"public:*"}}
	nested := Config{Secret: secret, TagsClaim: "app.tags"}
	issAud := Config{Secret: secret, Issuer: "https://id.example.com", Audience: "tagstream"}
	allKeys := Config{PublicKeys: append(append(append([]crypto.PublicKey{}, rsaKeys...), ecKeys...), edKeys...)}

	user7 := jwt.MapClaims{"sub": "7", "tags": []string{"user:7:*"}, "exp": hour(1)}
	good := sign(t, jwt.SigningMethodHS256, secret, user7)
	parts := strings.Split(good, ".")
	sig := []byte(parts[2])
	// Another base64url character: another signature (a bit flip could
	// leave the alphabet and make the token malformed instead).
	if sig[3] == 'A' {
		sig[3] = 'B'
	} else {
		sig[3] = 'A'
	}
	tampered := parts[0] + "." + parts[1] + "." + string(sig)
	none := sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, user7)

	for _, tc := range []struct {
		name   string
		cfg    Config
		token  string
		query  string
		status int
		body   string
	}{
		{"valid HS256", hs, good, "tags=user:7:todos,user:7:*", 200, ""},
		{"valid HS512", hs, sign(t, jwt.SigningMethodHS512, secret, user7), "tags=user:7:todos", 200, ""},
		{"tampered signature", hs, tampered, "tags=user:7:todos", denied401, "invalid token: bad signature"},
		{"wrong secret", hs, sign(t, jwt.SigningMethodHS256, []byte("another secret, 32 bytes or more!"), user7), "tags=user:7:todos", denied401, "invalid token: bad signature"},
		{"wrong RSA key", rs, sign(t, jwt.SigningMethodRS256, k.rsa2, user7), "tags=user:7:todos", denied401, "invalid token: bad signature"},
		{"expired", hs, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"tags": []string{"a"}, "exp": hour(-1)}), "tags=a", denied401, "invalid token: expired"},
		{"not yet valid", hs, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"tags": []string{"a"}, "nbf": hour(1)}), "tags=a", denied401, "invalid token: not valid yet"},
		{"within leeway", hs, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"tags": []string{"a"}, "exp": time.Now().Add(-2 * time.Second).Unix()}), "tags=a", 200, ""},
		{"alg none", hs, none, "tags=user:7:todos", denied401, `invalid token: algorithm "none" is not accepted (accepted: HS256, HS384, HS512)`},
		{"malformed", hs, "not.a.jwt", "tags=a", denied401, "invalid token: malformed"},
		// The HS/RS confusion: the RSA public key's PEM used as an HMAC secret.
		{"HS256 with the public key as secret", rs, sign(t, jwt.SigningMethodHS256, rsaPEM, user7), "tags=user:7:todos", denied401,
			`invalid token: algorithm "HS256" is not accepted (accepted: PS256, PS384, PS512, RS256, RS384, RS512)`},
		{"HS256 with the public key as secret, secret set too", both, sign(t, jwt.SigningMethodHS256, rsaPEM, user7), "tags=user:7:todos", denied401, "invalid token: bad signature"},
		{"RS256", rs, sign(t, jwt.SigningMethodRS256, k.rsa, user7), "tags=user:7:todos", 200, ""},
		{"PS384", rs, sign(t, jwt.SigningMethodPS384, k.rsa, user7), "tags=user:7:todos", 200, ""},
		{"ES256", allKeys, sign(t, jwt.SigningMethodES256, k.ec, user7), "tags=user:7:todos", 200, ""},
		{"EdDSA", allKeys, sign(t, jwt.SigningMethodEdDSA, k.ed, user7), "tags=user:7:todos", 200, ""},
		{"ES384 without a P-384 key", allKeys, sign(t, jwt.SigningMethodES384, p384, user7), "tags=user:7:todos", denied401,
			`invalid token: algorithm "ES384" is not accepted (accepted: ES256, EdDSA, PS256, PS384, PS512, RS256, RS384, RS512)`},
		{"entry outside the claim", hs, good, "tags=user:7:todos,todos", denied403, `tag "todos" is not allowed by the token`},
		{"user:* with a user:7:* claim", hs, good, "tags=user:7:todos,user:*", denied403, `tag "user:*" is not allowed by the token`},
		{"first entry not allowed, in request order", hs, good, "tags=z,user:7:a,b", denied403, `tag "z" is not allowed by the token`},
		{"no tags claim", hs, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "7"}), "tags=a", denied403, `tag "a" is not allowed by the token`},
		{"tags claim not an array", hs, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"tags": "a"}), "tags=a", denied401, `invalid token: claim "tags" is not an array of strings`},
		{"template", templ, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "7"}), "tags=user:7:todos,user:7:*", 200, ""},
		{"template, another user", templ, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "7"}), "tags=user:8:todos", denied403, `tag "user:8:todos" is not allowed by the token`},
		{"template, numeric claim", templ, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": 7}), "tags=user:7:todos", 200, ""},
		{"template, nested claim", templ, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"org": map[string]any{"id": "acme"}}), "tags=org:acme:members", 200, ""},
		{"template, missing claim allows nothing", templ, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{}), "tags=user::x", denied403, `tag "user::x" is not allowed by the token`},
		// A claim value cannot widen the pattern: `*` and `,` are percent-encoded.
		{"template, claim smuggling *", templ, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "*"}), "tags=user:7:todos", denied403, `tag "user:7:todos" is not allowed by the token`},
		{"template, encoded value", templ, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "a*,b"}), "tags=user:a%252A%252Cb:x", 200, ""},
		{"nested tags claim", nested, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"app": map[string]any{"tags": []string{"x:*"}}}), "tags=x:1", 200, ""},
		{"anonymous", anon, "", "tags=public:news", 200, ""},
		{"anonymous outside", anon, "", "tags=public:news,todos", denied401, `missing token: tag "todos" is not open to anonymous subscribers`},
		{"no token, no anonymous", hs, "", "tags=a", denied401, "missing token: send Authorization: Bearer <token>, ?access_token=<token> or the tagstream_token cookie"},
		{"a token adds to the anonymous patterns", anon, good, "tags=public:news,user:7:x", 200, ""},
		{"a bad token is not anonymous", anon, tampered, "tags=public:news", denied401, "invalid token: bad signature"},
		{"no key: anonymous only", Config{Anonymous: []string{"public:*"}}, good, "tags=user:7:x", denied403, `tag "user:7:x" is not allowed`},
		{"issuer and audience", issAud, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"iss": "https://id.example.com", "aud": []string{"tagstream"}, "tags": []string{"*"}}), "tags=a", 200, ""},
		{"wrong issuer", issAud, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"iss": "https://evil.example.com", "aud": "tagstream", "tags": []string{"*"}}), "tags=a", denied401, "invalid token: wrong issuer"},
		{"wrong audience", issAud, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"iss": "https://id.example.com", "aud": "other", "tags": []string{"*"}}), "tags=a", denied401, "invalid token: wrong audience"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := serve(t, tc.cfg, stream.Options{})
			var hdr []string
			if tc.token != "" {
				hdr = append(hdr, "Authorization: Bearer "+tc.token)
			}
			resp := s.get(t, tc.query, hdr...)
			if tc.status == 200 {
				expectStream(t, resp)
				return
			}
			expectRefusal(t, resp, tc.status, tc.body)
		})
	}
}

// TestTokenPlaces: the Authorization header, the access_token parameter
// and the cookie each carry a token; the header wins over the others.
func TestTokenPlaces(t *testing.T) {
	good := sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"tags": []string{"a"}})
	bad := good + "x"
	s := serve(t, Config{Secret: secret}, stream.Options{})
	expectStream(t, s.get(t, "tags=a", "Authorization: Bearer "+good))
	expectStream(t, s.get(t, "tags=a", "Authorization: bearer "+good))
	expectStream(t, s.get(t, "tags=a&access_token="+good))
	expectStream(t, s.get(t, "tags=a", "Cookie: tagstream_token="+good))
	expectStream(t, s.get(t, "tags=a&access_token="+bad, "Authorization: Bearer "+good))
	expectRefusal(t, s.get(t, "tags=a&access_token="+good, "Authorization: Bearer "+bad), denied401, "invalid token: bad signature")
	expectRefusal(t, s.get(t, "tags=a", "Authorization: Bearer "), denied401, "invalid token: empty Bearer token")
	// Another scheme (a proxy's Basic credentials) is not a token.
	expectStream(t, s.get(t, "tags=a", "Authorization: Basic dXNlcjpwdw==", "Cookie: tagstream_token="+good))

	c := serve(t, Config{Secret: secret, Cookie: "session"}, stream.Options{})
	expectStream(t, c.get(t, "tags=a", "Cookie: other=1; session="+good))
	expectRefusal(t, c.get(t, "tags=a", "Cookie: tagstream_token="+good), denied401,
		"missing token: send Authorization: Bearer <token>, ?access_token=<token> or the session cookie")
	if st := s.hub.Stats().Access; st.Unauthorized != 2 {
		t.Fatalf("access stats %+v", st)
	}
}

// TestConnectionClosedAtExpiry: the stream ends when the token expires (no
// leeway here), after delivering what matched until then.
func TestConnectionClosedAtExpiry(t *testing.T) {
	exp := time.Now().Add(2 * time.Second).Truncate(time.Second).Add(time.Second)
	tok := sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"tags": []string{"a"}, "exp": exp.Unix()})
	s := serve(t, Config{Secret: secret, Leeway: -1}, stream.Options{Heartbeat: 160 * time.Millisecond})
	rd := expectStream(t, s.get(t, "tags=a", "Authorization: Bearer "+tok))
	if err := s.hub.Publish(context.Background(), 1, time.Now(), []string{"a"}); err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		ev, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break // the server closed the stream
		}
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		if ev.Event != "ping" {
			got = append(got, ev.Event)
		}
	}
	if time.Now().Before(exp) {
		t.Fatalf("closed at %v, before the token's exp %v", time.Now(), exp)
	}
	if len(got) != 1 || got[0] != "invalidate" {
		t.Fatalf("events %q", got)
	}
	if st := s.hub.Stats(); st.Access.Expired != 1 {
		t.Fatalf("stats %+v", st.Access)
	}
}

// TestJWKSFile: keys by kid from a file; a token naming a kid the set does
// not hold makes it read again (the file was rotated).
func TestJWKSFile(t *testing.T) {
	k := testKeys()
	path := filepath.Join(t.TempDir(), "jwks.json")
	writeFile(t, path, jwksJSON(t, map[string]crypto.PublicKey{"one/RS256": &k.rsa.PublicKey, "ec": &k.ec.PublicKey}))
	s := serve(t, Config{JWKS: path}, stream.Options{})
	claims := jwt.MapClaims{"tags": []string{"a"}}
	expectStream(t, s.get(t, "tags=a", "Authorization: Bearer "+sign(t, jwt.SigningMethodRS256, k.rsa, claims, "kid", "one")))
	expectStream(t, s.get(t, "tags=a", "Authorization: Bearer "+sign(t, jwt.SigningMethodES256, k.ec, claims, "kid", "ec")))
	// Without a kid, every key of the set is tried.
	expectStream(t, s.get(t, "tags=a", "Authorization: Bearer "+sign(t, jwt.SigningMethodES256, k.ec, claims)))
	// The key says RS256: a PS256 token is not verified with it.
	expectRefusal(t, s.get(t, "tags=a", "Authorization: Bearer "+sign(t, jwt.SigningMethodPS256, k.rsa, claims, "kid", "one")),
		denied401, "invalid token: no configured key matches it")
	// A key ID signed by the right key type but another key.
	expectRefusal(t, s.get(t, "tags=a", "Authorization: Bearer "+sign(t, jwt.SigningMethodRS256, k.rsa2, claims, "kid", "one")),
		denied401, "invalid token: bad signature")

	writeFile(t, path, jwksJSON(t, map[string]crypto.PublicKey{"two": &k.rsa2.PublicKey}))
	expectStream(t, s.get(t, "tags=a", "Authorization: Bearer "+sign(t, jwt.SigningMethodRS256, k.rsa2, claims, "kid", "two")))
	// The rotation removed "one".
	expectRefusal(t, s.get(t, "tags=a", "Authorization: Bearer "+sign(t, jwt.SigningMethodRS256, k.rsa, claims)),
		denied401, "invalid token: bad signature")
}

// TestJWKSURL: a set served over HTTP is fetched at start, on the timer,
// and on an unknown kid at most once per unknownKIDEvery.
func TestJWKSURL(t *testing.T) {
	k := testKeys()
	var fetches atomic.Int32
	var body atomic.Value
	body.Store(jwksJSON(t, map[string]crypto.PublicKey{"one": &k.rsa.PublicKey}))
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.Write(body.Load().([]byte))
	}))
	t.Cleanup(idp.Close)
	s := serve(t, Config{JWKS: idp.URL + "/.well-known/jwks.json", JWKSRefresh: time.Hour}, stream.Options{})
	claims := jwt.MapClaims{"tags": []string{"a"}}
	expectStream(t, s.get(t, "tags=a", "Authorization: Bearer "+sign(t, jwt.SigningMethodRS256, k.rsa, claims, "kid", "one")))
	if n := fetches.Load(); n != 1 {
		t.Fatalf("%d fetches at start", n)
	}
	body.Store(jwksJSON(t, map[string]crypto.PublicKey{"one": &k.rsa.PublicKey, "two": &k.rsa2.PublicKey}))
	expectStream(t, s.get(t, "tags=a", "Authorization: Bearer "+sign(t, jwt.SigningMethodRS256, k.rsa2, claims, "kid", "two")))
	if n := fetches.Load(); n != 2 {
		t.Fatalf("%d fetches after an unknown kid", n)
	}
	// Unknown kids in a burst: no more fetches within the bound.
	for i := range 5 {
		expectRefusal(t, s.get(t, "tags=a", "Authorization: Bearer "+sign(t, jwt.SigningMethodRS256, k.rsa2, claims, "kid", fmt.Sprint("x", i))),
			denied401, "invalid token: no configured key matches it")
	}
	if n := fetches.Load(); n != 2 {
		t.Fatalf("%d fetches after a burst of unknown kids, want 2", n)
	}
}

func TestTimerRefresh(t *testing.T) {
	k := testKeys()
	var fetches atomic.Int32
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		w.Write(jwksJSON(t, map[string]crypto.PublicKey{"one": &k.rsa.PublicKey}))
	}))
	t.Cleanup(idp.Close)
	a, err := New(context.Background(), Config{JWKS: idp.URL, JWKSRefresh: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for fetches.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d fetches in 10s with a 20ms refresh", fetches.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	a.Close()
}

func TestNewErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	writeFile(t, bad, []byte("{"))
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Secret: secret, Allow: []string{"user:{sub:*"}}, `auth: allow "user:{sub:*": unbalanced "{" at byte 6 (write "{{" for a literal brace)`},
		{Config{Secret: secret, Allow: []string{"user:{}:*"}}, `auth: allow "user:{}:*": empty placeholder "{}" at byte 6`},
		{Config{JWKS: filepath.Join(dir, "missing.json")}, "auth: jwks " + filepath.Join(dir, "missing.json") + ": no such file or directory"},
	} {
		if _, err := New(context.Background(), tc.cfg); err == nil || err.Error() != tc.want {
			t.Errorf("got %v\nwant %s", err, tc.want)
		}
	}
	if _, err := New(context.Background(), Config{JWKS: bad}); err == nil || !strings.Contains(err.Error(), "auth: jwks "+bad+": ") {
		t.Errorf("bad JWKS: %v", err)
	}
}

func TestParsePublicKeys(t *testing.T) {
	k := testKeys()
	two := append(pemOf(t, &k.rsa.PublicKey), pemOf(t, &k.ec.PublicKey)...)
	keys, err := ParsePublicKeys(two)
	if err != nil || len(keys) != 2 {
		t.Fatalf("%d keys, %v", len(keys), err)
	}
	for _, tc := range []struct{ in, want string }{
		{"", "no PEM public key found"},
		{"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", `a "PRIVATE KEY" PEM block: want PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE (never a private key)`},
	} {
		if _, err := ParsePublicKeys([]byte(tc.in)); err == nil || err.Error() != tc.want {
			t.Errorf("%q: %v", tc.in, err)
		}
	}
}

func TestTemplateFill(t *testing.T) {
	for _, tc := range []struct {
		tpl    string
		claims map[string]any
		want   string
		ok     bool
	}{
		{"user:{sub}:*", map[string]any{"sub": "7"}, "user:7:*", true},
		{"user:{sub}:*", map[string]any{"sub": "a b,c*d%"}, "user:a%20b%2Cc%2Ad%25:*", true},
		{"user:{sub}:*", map[string]any{}, "", false},
		{"user:{sub}:*", map[string]any{"sub": ""}, "", false},
		{"user:{sub}:*", map[string]any{"sub": []any{"7"}}, "", false},
		{"{{{sub}}}", map[string]any{"sub": "x"}, "{x}", true},
		{"t:{a.b.c}", map[string]any{"a": map[string]any{"b": map[string]any{"c": true}}}, "t:true", true},
		{"t:{a.b}", map[string]any{"a.b": "dotted name"}, "t:dotted%20name", true},
	} {
		tpl, err := ParseTemplate(tc.tpl)
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := tpl.Fill(tc.claims); got != tc.want || ok != tc.ok {
			t.Errorf("%q with %v: %q %v, want %q %v", tc.tpl, tc.claims, got, ok, tc.want, tc.ok)
		}
	}
}
