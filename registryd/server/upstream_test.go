package server

import (
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hopless/hopless/conf"
)

func TestOrigin(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"https://Registry.Example", "https://registry.example:443"},
		{"https://registry.example:5000/v2/", "https://registry.example:5000"},
		{"http://registry.example", "http://registry.example:80"},
		{"https://[::1]:5001", "https://[::1]:5001"},
	}
	for _, tt := range tests {
		u, err := url.Parse(tt.in)
		if err != nil {
			t.Fatal(err)
		}
		if got := origin(u); got != tt.want {
			t.Errorf("origin(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// errTransport stands in for the previous http.DefaultTransport.
type errTransport struct{}

var errNext = errors.New("sent to the next transport")

func (errTransport) RoundTrip(*http.Request) (*http.Response, error) { return nil, errNext }

func TestUpstreamTransport(t *testing.T) {
	t.Parallel()
	upstream := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(upstream.Close)
	other := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(other.Close)
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: upstream.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		up      conf.Upstream
		wantOK  bool
		wantErr string
	}{
		{name: "no CA keeps the default", up: conf.Upstream{URL: upstream.URL}},
		{name: "plain http keeps the default", up: conf.Upstream{URL: "http://registry.example", TLS: conf.TLS{CA: ca}}},
		{name: "CA without certificates", up: conf.Upstream{URL: upstream.URL, TLS: conf.TLS{CA: junk}}, wantErr: "no PEM certificates found"},
		{name: "missing CA file", up: conf.Upstream{URL: upstream.URL, TLS: conf.TLS{CA: filepath.Join(dir, "nope.pem")}}, wantErr: "reading upstream CA"},
		{name: "CA scoped to the upstream", up: conf.Upstream{URL: upstream.URL, TLS: conf.TLS{CA: ca}}, wantOK: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rt, ok, err := upstreamTransport(errTransport{}, tt.up)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || ok != tt.wantOK {
				t.Fatalf("ok=%v err=%v, want ok=%v", ok, err, tt.wantOK)
			}
			if !ok {
				if _, isNext := rt.(errTransport); !isNext {
					t.Fatalf("got %T, want the next transport unchanged", rt)
				}
				return
			}
			c := &http.Client{Transport: rt}
			resp, err := c.Get(upstream.URL + "/v2/")
			if err != nil {
				t.Fatalf("request to the upstream: %v", err)
			}
			_ = resp.Body.Close()
			if _, err := c.Get(other.URL + "/v2/"); !errors.Is(err, errNext) {
				t.Errorf("request to another host: %v, want it sent to the next transport", err)
			}
		})
	}
}
