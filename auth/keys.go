package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
)

// Each kind of key verifies only its own algorithms: a secret only HS*, an
// RSA key only RS* and PS*, an ECDSA key only the ES* of its curve, an
// Ed25519 key only EdDSA. A public key is never used as an HMAC secret (the
// HS/RS confusion), and "none" is never accepted.
var (
	hmacAlgs = []string{"HS256", "HS384", "HS512"}
	rsaAlgs  = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)

// algorithms returns the algorithms key may verify, nil for an unsupported key.
func algorithms(key any) []string {
	switch k := key.(type) {
	case []byte:
		return hmacAlgs
	case *rsa.PublicKey:
		return rsaAlgs
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return []string{"ES256"}
		case elliptic.P384():
			return []string{"ES384"}
		case elliptic.P521():
			return []string{"ES512"}
		}
	case ed25519.PublicKey:
		return []string{"EdDSA"}
	}
	return nil
}

var errNoKey = errors.New("auth: no key for the token")

// keySet holds the verification keys.
type keySet struct {
	secret []byte
	static []crypto.PublicKey
	jwks   jwkset.Storage // nil without a JWKS
}

// methods are the algorithms of the configured keys (a JWKS may bring any
// asymmetric one).
func (k *keySet) methods() []string {
	var m []string
	if len(k.secret) > 0 {
		m = append(m, hmacAlgs...)
	}
	for _, key := range k.static {
		m = append(m, algorithms(key)...)
	}
	if k.jwks != nil {
		m = append(m, rsaAlgs...)
		m = append(m, "ES256", "ES384", "ES512", "EdDSA")
	}
	slices.Sort(m)
	return slices.Compact(m)
}

// keyfunc returns the keys that may verify the token: those whose kind
// allows its algorithm; from the JWKS, the key its kid names (or, without a
// kid, every key of the set).
func (k *keySet) keyfunc(ctx context.Context) jwt.Keyfunc {
	return func(t *jwt.Token) (any, error) {
		alg := t.Method.Alg()
		if slices.Contains(hmacAlgs, alg) {
			if len(k.secret) == 0 {
				return nil, errNoKey
			}
			return k.secret, nil
		}
		var keys []jwt.VerificationKey
		for _, key := range k.static {
			if slices.Contains(algorithms(key), alg) {
				keys = append(keys, key)
			}
		}
		if k.jwks != nil {
			keys = k.fromJWKS(ctx, t, alg, keys)
		}
		if len(keys) == 0 {
			return nil, errNoKey
		}
		return jwt.VerificationKeySet{Keys: keys}, nil
	}
}

func (k *keySet) fromJWKS(ctx context.Context, t *jwt.Token, alg string, keys []jwt.VerificationKey) []jwt.VerificationKey {
	var set []jwkset.JWK
	if kid, _ := t.Header["kid"].(string); kid != "" {
		// An unknown kid refreshes the set (rate-bounded) before failing.
		if j, err := k.jwks.KeyRead(ctx, kid); err == nil {
			set = append(set, j)
		}
	} else {
		set, _ = k.jwks.KeyReadAll(ctx)
	}
	for _, j := range set {
		if a := j.Marshal().ALG.String(); a != "" && a != alg {
			continue
		}
		if u := j.Marshal().USE; u != "" && u != jwkset.UseSig {
			continue
		}
		key := j.Key()
		if pk, ok := key.(interface{ Public() crypto.PublicKey }); ok {
			key = pk.Public() // a set may hold private keys; verify with the public half
		}
		// Symmetric ("oct") keys are not taken from a key set: algorithms
		// returns nil for them.
		if _, isSecret := key.([]byte); !isSecret && slices.Contains(algorithms(key), alg) {
			keys = append(keys, key)
		}
	}
	return keys
}

// ParsePublicKeys reads the PEM blocks of data: PUBLIC KEY (PKIX: RSA,
// ECDSA P-256/384/521, Ed25519), RSA PUBLIC KEY (PKCS #1) or CERTIFICATE.
// Several blocks give several keys (a rotation).
func ParsePublicKeys(data []byte) ([]crypto.PublicKey, error) {
	var keys []crypto.PublicKey
	for {
		block, rest := pem.Decode(data)
		if block == nil {
			break
		}
		data = rest
		var (
			key any
			err error
		)
		switch block.Type {
		case "PUBLIC KEY":
			key, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			key, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				key = cert.PublicKey
			}
		default:
			return nil, fmt.Errorf("a %q PEM block: want PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE (never a private key)", block.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", strings.ToLower(block.Type), err)
		}
		if algorithms(key) == nil {
			return nil, fmt.Errorf("unsupported key type %T: want RSA, ECDSA P-256/384/521 or Ed25519", key)
		}
		keys = append(keys, key)
	}
	if len(keys) == 0 {
		return nil, errors.New("no PEM public key found")
	}
	return keys, nil
}

// JWKS fetching bounds.
const (
	jwksTimeout     = 10 * time.Second
	jwksMaxBytes    = 1 << 20
	unknownKIDEvery = 30 * time.Second // at most one refresh per this, for tokens naming an unknown kid
	unknownKIDWait  = 5 * time.Second  // how long such a refresh may take a request
)

// openJWKS reads the key set at cfg.JWKS (a URL or a file) and keeps it
// fresh until ctx ends.
func openJWKS(ctx context.Context, cfg Config) (jwkset.Storage, error) {
	client, u := cfg.HTTPClient, cfg.JWKS
	if client == nil {
		client = &http.Client{Timeout: jwksTimeout}
	}
	if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
		// A file is read through net/http's file transport, so that a
		// file and a URL are refreshed the same way.
		abs, err := filepath.Abs(u)
		if err != nil {
			return nil, fmt.Errorf("auth: jwks %s: %w", cfg.JWKS, err)
		}
		if _, err := os.Stat(abs); err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return nil, fmt.Errorf("auth: jwks %s: %w", cfg.JWKS, err)
		}
		client = &http.Client{Transport: http.NewFileTransportFS(os.DirFS(filepath.Dir(abs)))}
		u = "file:///" + url.PathEscape(filepath.Base(abs))
	}
	client = &http.Client{Transport: limitedBody{next: client.Transport}, Timeout: client.Timeout}
	refresh := cfg.JWKSRefresh
	if refresh <= 0 {
		refresh = DefaultJWKSRefresh
	}
	log := cfg.Logger
	st, err := jwkset.NewStorageFromHTTP(u, jwkset.HTTPClientStorageOptions{
		Client:          client,
		Ctx:             ctx,
		HTTPTimeout:     jwksTimeout,
		RefreshInterval: refresh,
		RefreshErrorHandler: func(ctx context.Context, err error) {
			log.Warn("auth: JWKS refresh failed; the keys in hand stay", "jwks", cfg.JWKS, "err", err)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("auth: jwks %s: %w", cfg.JWKS, err)
	}
	if keys, _ := st.KeyReadAll(ctx); len(keys) == 0 {
		log.Warn("auth: the JWKS holds no usable key", "jwks", cfg.JWKS)
	}
	return jwkset.NewHTTPClient(jwkset.HTTPClientOptions{
		HTTPURLs:          map[string]jwkset.Storage{u: st},
		RateLimitWaitMax:  unknownKIDWait,
		RefreshUnknownKID: rate.NewLimiter(rate.Every(unknownKIDEvery), 1),
	})
}

// limitedBody bounds what a JWKS response may make the process read.
type limitedBody struct{ next http.RoundTripper }

func (l limitedBody) RoundTrip(r *http.Request) (*http.Response, error) {
	next := l.next
	if next == nil {
		next = http.DefaultTransport
	}
	resp, err := next.RoundTrip(r)
	if err == nil {
		resp.Body = struct {
			io.Reader
			io.Closer
		}{io.LimitReader(resp.Body, jwksMaxBytes), resp.Body}
	}
	return resp, err
}
