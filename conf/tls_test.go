package conf

import (
	"slices"
	"testing"
)

func TestPlainHTTP(t *testing.T) {
	t.Parallel()
	registryd := []struct {
		name string
		cfg  Registryd
		want []string
	}{
		{"TLS everywhere", Registryd{Upstream: []Upstream{{}, {}}}, nil},
		{"server", Registryd{Server: Server{Insecure: true}}, []string{"server.insecure"}},
		{"second upstream and peers", Registryd{Upstream: []Upstream{{}, {TLS: TLS{Insecure: true}}}, Peers: Peers{TLS: TLS{Insecure: true}}},
			[]string{"upstream[1].tls.insecure", "peers.tls.insecure"}},
	}
	for _, tt := range registryd {
		if got := tt.cfg.PlainHTTP(); !slices.Equal(got, tt.want) {
			t.Errorf("registryd, %s: PlainHTTP() = %q, want %q", tt.name, got, tt.want)
		}
	}
	node := Node{Registries: []Registry{{Host: "a:5001"}, {Host: "b:5001", TLS: TLS{Insecure: true}}}}
	if got, want := node.PlainHTTP(), []string{"registry[1].tls.insecure (b:5001)"}; !slices.Equal(got, want) {
		t.Errorf("node: PlainHTTP() = %q, want %q", got, want)
	}
	if got := (&Node{Registries: []Registry{{Host: "a:5001"}}}).PlainHTTP(); got != nil {
		t.Errorf("node with TLS: PlainHTTP() = %q, want none", got)
	}
}
