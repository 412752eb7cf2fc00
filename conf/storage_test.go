package conf

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeS3Config(t *testing.T, params string) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range registrydFiles {
		p := filepath.Join(dir, f.name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f.text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	text := strings.Replace(registrydOK, `root = "cache"`, "driver = \"s3\"\nspool = \"spool\"\n[storage.parameters]\nbucket = \"b\"\n"+params, 1)
	path := filepath.Join(dir, "registryd.toml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestStorageSecretFileParameters(t *testing.T) {
	dir := writeS3Config(t, "accesskey_file = \"s3/access\"\nsecretkey_file = \"s3/secret\"\n")
	for name, content := range map[string]string{"access": "AKID\n", "secret": "s3cret-key\n"} {
		p := filepath.Join(dir, "s3", name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	r, err := LoadRegistryd(filepath.Join(dir, "registryd.toml"))
	if err != nil {
		t.Fatalf("LoadRegistryd: %v", err)
	}
	if got := r.Storage.Parameters["secretkey_file"]; got != filepath.Join(dir, "s3", "secret") {
		t.Errorf("secretkey_file = %v, want it relative to the config's dir", got)
	}
	params, err := r.Storage.DriverParameters()
	if err != nil {
		t.Fatalf("DriverParameters: %v", err)
	}
	if params["accesskey"] != "AKID" || params["secretkey"] != "s3cret-key" || params["bucket"] != "b" {
		t.Errorf("DriverParameters = %v", params)
	}
	if _, ok := params["accesskey_file"]; ok {
		t.Errorf("DriverParameters kept accesskey_file: %v", params)
	}
	if _, ok := r.Storage.Parameters["accesskey"]; ok {
		t.Errorf("DriverParameters changed Storage.Parameters: %v", r.Storage.Parameters)
	}

	// A key file that others may read is refused, and its content is not quoted.
	if err := os.Chmod(filepath.Join(dir, "s3", "secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = LoadRegistryd(filepath.Join(dir, "registryd.toml"))
	if err == nil || !strings.Contains(err.Error(), "storage.parameters.secretkey_file") || !strings.Contains(err.Error(), "want 0600") {
		t.Errorf("LoadRegistryd with a 0644 key file: %v", err)
	}
	if _, err := r.Storage.DriverParameters(); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("DriverParameters with a 0644 key file: %v", err)
	}
}

func TestStorageSecretFileParameterConflicts(t *testing.T) {
	dir := writeS3Config(t, "accesskey = \"AKID\"\naccesskey_file = \"access\"\nsecretkey_file = 3\n")
	if err := os.WriteFile(filepath.Join(dir, "access"), []byte("AKID\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadRegistryd(filepath.Join(dir, "registryd.toml"))
	if err == nil {
		t.Fatal("LoadRegistryd accepted accesskey beside accesskey_file")
	}
	for _, want := range []string{"storage.parameters.accesskey_file: conflicts with storage.parameters.accesskey", "storage.parameters.secretkey_file: must be the path of a file"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}
