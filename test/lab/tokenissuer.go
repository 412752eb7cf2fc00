package lab

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/distribution/distribution/v3/registry/auth/token"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// TokenIssuer is a small Docker token server (the bearer-token flow of the
// distribution spec) for registryd's auth.token: it signs ES256 JWTs with a key of
// its own, whose self-signed certificate is the rootcertbundle registryd trusts. It
// runs in the calling process, on HTTPS with the upstream's certificate.
type TokenIssuer struct {
	// Realm is the URL that registryd's challenge names and clients ask for tokens.
	Realm string
	// Service and Issuer are the token's audience and iss claim.
	Service, Issuer string
	// Bundle is the PEM certificate file for auth.token.rootcertbundle.
	Bundle string
	// Issued counts tokens handed out at Realm; Refused, requests with bad
	// credentials.
	Issued, Refused atomic.Int64

	key      *ecdsa.PrivateKey
	user     string
	password string
	ttl      time.Duration
	served
}

// TokenClaims are the claims of a token that Sign makes.
type TokenClaims struct {
	Subject  string
	Audience string
	// Repos get pull access; empty means a token with no access.
	Repos     []string
	NotBefore time.Time
	Expires   time.Time
}

// StartTokenIssuer starts a TokenIssuer whose realm accepts user and password
// (Basic) and hands out tokens valid for ttl for the pull scopes asked. Its key
// and certificate are written to DIR/name/. Close it when done.
func (l *Lab) StartTokenIssuer(name, user, password string, ttl time.Duration) (*TokenIssuer, error) {
	d := filepath.Join(l.Dir, name)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("token issuer: generating its key: %w", err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("token issuer: its certificate: %w", err)
	}
	bundle := filepath.Join(d, "bundle.pem")
	if err := writeFile(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(l.Dir, "upstream", "cert.pem"), filepath.Join(l.Dir, "upstream", "key.pem"))
	if err != nil {
		return nil, fmt.Errorf("token issuer: loading the upstream's certificate: %w", err)
	}
	host, _, err := net.SplitHostPort(l.Upstream)
	if err != nil {
		return nil, fmt.Errorf("token issuer: upstream address %q: %w", l.Upstream, err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return nil, fmt.Errorf("token issuer: %w", err)
	}
	ti := &TokenIssuer{Realm: "https://" + ln.Addr().String() + "/token", Service: "hopless-lab", Issuer: name,
		Bundle: bundle, key: key, user: user, password: password, ttl: ttl}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /token", ti.serveToken)
	ti.serve(&http.Server{Handler: mux, ReadHeaderTimeout: readyTimeout,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}, ln)
	return ti, nil
}

// serveToken answers GET /token?service=S&scope=repository:NAME:pull: a token for
// the pull scopes asked, to a client with the right Basic credentials.
func (ti *TokenIssuer) serveToken(w http.ResponseWriter, r *http.Request) {
	u, p, ok := r.BasicAuth()
	if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(ti.user)) != 1 || subtle.ConstantTimeCompare([]byte(p), []byte(ti.password)) != 1 {
		ti.Refused.Add(1)
		w.Header().Set("WWW-Authenticate", `Basic realm="hopless-lab-token"`)
		http.Error(w, "authentication required", http.StatusUnauthorized)
		return
	}
	if svc := r.URL.Query().Get("service"); svc != ti.Service {
		http.Error(w, fmt.Sprintf("unknown service %q", svc), http.StatusBadRequest)
		return
	}
	var repos []string
	for _, scope := range r.URL.Query()["scope"] {
		parts := strings.Split(scope, ":")
		if len(parts) == 3 && parts[0] == "repository" && strings.Contains(","+parts[2]+",", ",pull,") {
			repos = append(repos, parts[1])
		}
	}
	now := time.Now()
	raw, err := ti.Sign(TokenClaims{Subject: u, Audience: ti.Service, Repos: repos, NotBefore: now.Add(-time.Second), Expires: now.Add(ti.ttl)})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	ti.Issued.Add(1)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"token": raw, "expires_in": int(ti.ttl.Seconds()), "issued_at": now.UTC().Format(time.RFC3339)})
}

// Sign makes a token with the issuer's key: the kid is the key's JWK thumbprint,
// as registryd's rootcertbundle lookup expects.
func (ti *TokenIssuer) Sign(c TokenClaims) (string, error) {
	opts := (&jose.SignerOptions{}).WithType("JWT").WithHeader(jose.HeaderKey("kid"), token.GetJWKThumbprint(&ti.key.PublicKey))
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: ti.key}, opts)
	if err != nil {
		return "", fmt.Errorf("token issuer: signer: %w", err)
	}
	jti := make([]byte, 12)
	if _, err := rand.Read(jti); err != nil {
		return "", err
	}
	claims := token.ClaimSet{Issuer: ti.Issuer, Subject: c.Subject, Audience: token.AudienceList{c.Audience},
		Expiration: c.Expires.Unix(), NotBefore: c.NotBefore.Unix(), IssuedAt: c.NotBefore.Unix(),
		JWTID: fmt.Sprintf("%x", jti), Access: []*token.ResourceActions{}}
	for _, repo := range c.Repos {
		claims.Access = append(claims.Access, &token.ResourceActions{Type: "repository", Name: repo, Actions: []string{"pull"}})
	}
	raw, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		return "", fmt.Errorf("token issuer: signing: %w", err)
	}
	return raw, nil
}
