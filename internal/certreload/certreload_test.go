package certreload

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pair is a self-signed certificate and its key, PEM.
type pair struct {
	cert, key []byte
	der       []byte
}

func newPair(t *testing.T, serial int64) pair {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "master"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pair{
		cert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		key:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}),
		der:  der,
	}
}

// write writes the files with a modification time of at, as a replacement would.
func write(t *testing.T, path string, b []byte, at time.Time) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, at, at); err != nil {
		t.Fatal(err)
	}
}

func TestReloader(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// replace changes the files at time at; the pair returned is what must be
		// served after the next check.
		replace func(t *testing.T, certFile, keyFile string, old pair, at time.Time) pair
		// warns: the replacement is refused, with a warning.
		warns bool
	}{
		{"replaced", func(t *testing.T, c, k string, _ pair, at time.Time) pair {
			p := newPair(t, 2)
			write(t, c, p.cert, at)
			write(t, k, p.key, at)
			return p
		}, false},
		{"certificate without its key", func(t *testing.T, c, _ string, old pair, at time.Time) pair {
			write(t, c, newPair(t, 3).cert, at)
			return old
		}, true},
		{"broken certificate", func(t *testing.T, c, _ string, old pair, at time.Time) pair {
			write(t, c, []byte("not PEM"), at)
			return old
		}, true},
		{"removed", func(t *testing.T, c, _ string, old pair, _ time.Time) pair {
			if err := os.Remove(c); err != nil {
				t.Fatal(err)
			}
			return old
		}, true},
		{"touched, same content", func(t *testing.T, c, _ string, old pair, at time.Time) pair {
			write(t, c, old.cert, at)
			return old
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
			start := time.Unix(1_800_000_000, 0)
			first := newPair(t, 1)
			write(t, certFile, first.cert, start)
			write(t, keyFile, first.key, start)
			now := start
			var logs bytes.Buffer
			r, err := New(certFile, keyFile, slog.New(slog.NewTextHandler(&logs, nil)), WithClock(func() time.Time { return now }))
			if err != nil {
				t.Fatal(err)
			}
			serves := func(want pair, when string) {
				t.Helper()
				c, err := r.GetCertificate(nil)
				if err != nil {
					t.Fatalf("%s: %v", when, err)
				}
				if !bytes.Equal(c.Certificate[0], want.der) {
					t.Fatalf("%s: serves another certificate than expected", when)
				}
			}
			serves(first, "at start")
			want := tt.replace(t, certFile, keyFile, first, start.Add(time.Minute))
			now = now.Add(CheckInterval / 2)
			serves(first, "before the check interval has passed")
			now = now.Add(CheckInterval)
			serves(want, "after the check interval")
			now = now.Add(CheckInterval)
			serves(want, "at the next check")
			warned := strings.Count(logs.String(), "level=WARN")
			if tt.warns && warned != 1 {
				t.Errorf("%d warnings for one refused replacement, want 1:\n%s", warned, logs.String())
			}
			if !tt.warns && warned != 0 {
				t.Errorf("warnings for a good replacement:\n%s", logs.String())
			}
		})
	}
}

func TestNewNamesTheFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c, k := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	write(t, c, newPair(t, 1).cert, time.Now())
	write(t, k, newPair(t, 2).key, time.Now())
	_, err := New(c, k, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), c) || !strings.Contains(err.Error(), k) {
		t.Fatalf("New with a key of another certificate: %v; want an error naming %s and %s", err, c, k)
	}
}
