package lab

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hopless/hopless/conf"
)

// TestRegistrydConfigTuning: the RegistrydOptions that tune intervals reach
// registryd.toml as the keys they name, and registryd reads them back.
func TestRegistrydConfigTuning(t *testing.T) {
	dir := t.TempDir()
	l := &Lab{
		Dir: dir, Slot: 7, Upstream: UpstreamAddr(7), ImageHost: ImageHost(7),
		CA: filepath.Join(dir, "ca.pem"), APIToken: filepath.Join(dir, "secrets", "api.token"),
		Masters:   []Master{{Name: "master-1", Addr: MasterAddr(7, 1)}, {Name: "master-2", Addr: MasterAddr(7, 2)}},
		Registryd: RegistrydOptions{ScrubInterval: "2s", PeerHealthInterval: "1h", EvictInterval: "3s"},
	}
	// registryd checks that the files it is pointed at exist; their contents are
	// not read when loading.
	if err := l.writeSecrets(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"cert.pem", "key.pem", "ca.pem"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b, err := l.registrydConfig("test", 1)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "registryd.toml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := conf.LoadRegistryd(path)
	if err != nil {
		t.Fatalf("registryd does not load the lab's config: %v\n%s", err, b)
	}
	if got := r.Storage.ScrubInterval.Duration; got != 2*time.Second {
		t.Errorf("storage.scrub_interval = %s, want 2s", got)
	}
	if got := r.Peers.HealthInterval.Duration; got != time.Hour {
		t.Errorf("peers.health_interval = %s, want 1h", got)
	}
	if got := r.Storage.EvictInterval.Duration; got != 3*time.Second {
		t.Errorf("storage.evict_interval = %s, want 3s", got)
	}

	l.Registryd = RegistrydOptions{}
	if b, err = l.registrydConfig("test", 1); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if r, err = conf.LoadRegistryd(path); err != nil {
		t.Fatalf("registryd does not load the lab's config: %v\n%s", err, b)
	}
	if r.Storage.ScrubInterval.Duration != conf.DefaultScrubInterval || r.Peers.HealthInterval.Duration != conf.DefaultPeerHealthInterval {
		t.Errorf("without options: scrub_interval %s, peers.health_interval %s; want the defaults", r.Storage.ScrubInterval.Duration, r.Peers.HealthInterval.Duration)
	}
}

// TestRegistrydConfigS3: with Storage s3 a master's registryd.toml loads, names the
// lab's bucket and endpoint, shares it under the master's name, and takes its keys
// from the 0600 files, not inline.
func TestRegistrydConfigS3(t *testing.T) {
	dir := t.TempDir()
	l := &Lab{
		Dir: dir, Slot: 7, Upstream: UpstreamAddr(7), ImageHost: ImageHost(7), Storage: StorageS3,
		CA: filepath.Join(dir, "ca.pem"), APIToken: filepath.Join(dir, "secrets", "api.token"),
		Masters: []Master{{Name: "master-1", Addr: MasterAddr(7, 1)}},
	}
	if err := l.writeSecrets(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"cert.pem", "key.pem", "ca.pem"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{l.s3AccessKeyFile(), l.s3SecretKeyFile()} {
		if err := os.WriteFile(f, []byte("k3y\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b, err := l.registrydConfig("test", 1)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "registryd.toml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := conf.LoadRegistryd(path)
	if err != nil {
		t.Fatalf("registryd does not load the lab's config: %v\n%s", err, b)
	}
	s := r.Storage
	if s.Driver != "s3" || s.Spool != filepath.Join(dir, "spool") || s.MaxBytes != 0 || !s.Shared || s.MasterID != "master-1" {
		t.Errorf("storage = %+v, want driver s3, spool %s, no max_bytes, shared as master-1", s, filepath.Join(dir, "spool"))
	}
	p, err := s.DriverParameters()
	if err != nil {
		t.Fatal(err)
	}
	if p["bucket"] != S3Bucket || p["regionendpoint"] != S3Endpoint(7) || p["forcepathstyle"] != true || p["accesskey"] != "k3y" || p["secretkey"] != "k3y" {
		t.Errorf("driver parameters = %v", p)
	}
	if _, inline := s.Parameters["secretkey"]; inline {
		t.Errorf("registryd.toml holds the secret key inline:\n%s", b)
	}
}
