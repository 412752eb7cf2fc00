package lab

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/internal/nodetoken"
)

// writeSecrets writes the peers' shared token, the API token and the node key, mode
// 0600.
func (l *Lab) writeSecrets() error {
	for _, f := range []string{"peer.token", "api.token", "node.key"} {
		b := make([]byte, 24)
		if _, err := rand.Read(b); err != nil {
			return fmt.Errorf("generating %s: %w", f, err)
		}
		if err := writeFile(filepath.Join(l.Dir, "secrets", f), []byte(hex.EncodeToString(b)+"\n"), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// registrydConfig renders master i's registryd.toml: TLS from the lab CA, the
// upstream with the real clusters' alias, the image host and the upstream as ns
// values, the other masters as peers, and the API token.
func (l *Lab) registrydConfig(name string, i int) ([]byte, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "# registryd of lab %s\n", name)
	fmt.Fprintf(&b, "[server]\nlisten = %q\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n\n", MasterAddr(l.Slot, i))
	fmt.Fprintf(&b, "[metrics]\nlisten = %q\n\n", MasterMetricsAddr(l.Slot, i))
	if l.Registryd.Pprof {
		fmt.Fprintf(&b, "[debug]\npprof_listen = %q\n\n", MasterPprofAddr(l.Slot, i))
	}
	if l.Storage == StorageS3 {
		fmt.Fprintf(&b, "[storage]\n%smaster_id = %q\n", s3StorageKeys(), l.Masters[i-1].Name)
	} else {
		fmt.Fprintf(&b, "[storage]\nroot = \"data\"\n")
	}
	if o := l.Registryd; o.MaxBytes != "" {
		fmt.Fprintf(&b, "max_bytes = %q\n", o.MaxBytes)
	}
	if o := l.Registryd; o.EvictInterval != "" {
		fmt.Fprintf(&b, "evict_interval = %q\n", o.EvictInterval)
	}
	if o := l.Registryd; o.TTL != "" {
		fmt.Fprintf(&b, "ttl = %q\n", o.TTL)
	}
	if o := l.Registryd; o.EvictGrace != "" {
		fmt.Fprintf(&b, "evict_grace = %q\n", o.EvictGrace)
	}
	if o := l.Registryd; o.ScrubInterval != "" {
		fmt.Fprintf(&b, "scrub_interval = %q\n", o.ScrubInterval)
	}
	if l.Storage == StorageS3 {
		b.WriteString(l.s3Parameters())
	}
	b.WriteString("\n")
	if l.Registryd.TagTTL != "" {
		fmt.Fprintf(&b, "[cache]\ntag_ttl = %q\n\n", l.Registryd.TagTTL)
	}
	fmt.Fprintf(&b, "[[upstream]]\nurl = \"https://%s\"\nlocal_prefix = %q\npath = %q\nns = [%q, %q]\n[upstream.tls]\nca = %q\n\n",
		l.Upstream, LocalPrefix, UpstreamPath, l.ImageHost, l.Upstream, l.CA)
	if !l.Registryd.NoPeers && len(l.Masters) > 1 {
		fmt.Fprintf(&b, "[peers]\nself = \"https://%s\"\ntoken_file = %q\n", MasterAddr(l.Slot, i), filepath.Join(l.Dir, "secrets", "peer.token"))
		if hi := l.Registryd.PeerHealthInterval; hi != "" {
			fmt.Fprintf(&b, "health_interval = %q\n", hi)
		}
		fmt.Fprintf(&b, "[peers.tls]\nca = %q\n", l.CA)
		for _, m := range l.Masters {
			fmt.Fprintf(&b, "[[peers.endpoint]]\nurl = \"https://%s\"\n", m.Addr)
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "[api]\ntoken_file = %q\nnode_key_file = %q\n", l.APIToken, l.NodeKeyFile())
	if l.Registryd.PinTTL != "" {
		fmt.Fprintf(&b, "pin_ttl = %q\n", l.Registryd.PinTTL)
	}
	return []byte(b.String()), nil
}

// NodeKeyFile is the file holding the masters' node key, from which each node's
// token is derived.
func (l *Lab) NodeKeyFile() string { return filepath.Join(l.Dir, "secrets", "node.key") }

// NodeToken is the token that node reports its pins with.
func (l *Lab) NodeToken(node string) (string, error) {
	key, err := conf.ReadToken(l.NodeKeyFile())
	if err != nil {
		return "", err
	}
	return nodetoken.Derive([]byte(key), node)
}
