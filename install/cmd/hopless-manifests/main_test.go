package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	batchv1 "k8s.io/api/batch/v1"
	"sigs.k8s.io/yaml"
)

const (
	testImage = "registry.test/hopless/hopless@sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"
	deployDir = "../../deploy"
)

// run runs the command with args, as the shell would after its name. The tests do
// not run in parallel: urfave/cli's help flag is a package variable that every run
// of an app writes.
func run(args ...string) (string, error) {
	var stdout bytes.Buffer
	err := newApp(&stdout, io.Discard).Run(append([]string{"hopless-manifests"}, args...))
	return stdout.String(), err
}

func TestFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no image", []string{"--job", "worker-1"}, "--image is required"},
		{"neither out nor job", []string{"--image", testImage}, "--out or --job is required"},
		{"uninstall without a job", []string{"--image", testImage, "--out", t.TempDir(), "--uninstall"}, "--uninstall needs --job"},
		{"uninstall alone", []string{"--image", testImage, "--uninstall"}, "--uninstall needs --job"},
		{"a bad mode", []string{"--image", testImage, "--job", "worker-1", "--mode", "other"}, `--mode "other"`},
		{"an argument", []string{"--image", testImage, "--job", "worker-1", "extra"}, "unexpected arguments"},
		{"an unpinned image", []string{"--image", "registry.test/hopless:latest", "--job", "worker-1"}, "latest pins nothing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := run(append(tc.args, "--deploy-dir", deployDir)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("run = %v, want an error with %q", err, tc.want)
			}
			if out != "" && !strings.Contains(out, "Incorrect Usage") {
				t.Errorf("printed %q on an error", out)
			}
		})
	}
}

// TestJob prints a node's install and uninstall Jobs of both modes.
func TestJob(t *testing.T) {
	for _, tc := range []struct {
		mode      string
		uninstall bool
		name      string
		args0     string
	}{
		{"inprocess", false, "hopless-install-worker-1", "node"},
		{"nri", false, "hopless-install-worker-1", "node"},
		{"inprocess", true, "hopless-uninstall-worker-1", "uninstall"},
		{"nri", true, "hopless-uninstall-worker-1", "uninstall"},
	} {
		t.Run(tc.name+"/"+tc.mode, func(t *testing.T) {
			args := []string{"--image", testImage, "--deploy-dir", deployDir, "--job", "worker-1", "--mode", tc.mode}
			if tc.uninstall {
				args = append(args, "--uninstall")
			}
			out, err := run(args...)
			if err != nil {
				t.Fatal(err)
			}
			var job batchv1.Job
			if err := yaml.UnmarshalStrict([]byte(out), &job); err != nil {
				t.Fatalf("%v:\n%s", err, out)
			}
			c := job.Spec.Template.Spec.Containers
			if job.Name != tc.name || len(c) != 1 || len(c[0].Args) == 0 || c[0].Args[0] != tc.args0 {
				t.Fatalf("Job %s, containers %+v; want %s running %s …", job.Name, c, tc.name, tc.args0)
			}
			if tc.uninstall && !slices.Equal(c[0].Args, []string{"uninstall", "--host-root=/host", "--restart"}) {
				t.Errorf("args %q, want uninstall --host-root=/host --restart", c[0].Args)
			}
			if !tc.uninstall && !slices.Contains(c[0].Args, "--mode="+tc.mode) {
				t.Errorf("args %q lack --mode=%s", c[0].Args, tc.mode)
			}
			if c[0].Image != testImage || job.Spec.Template.Spec.NodeName != "worker-1" {
				t.Errorf("image %q on node %q, want %s on worker-1", c[0].Image, job.Spec.Template.Spec.NodeName, testImage)
			}
		})
	}
}

// TestOut writes both overlays and prints their paths.
func TestOut(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "manifests")
	out, err := run("--image", testImage, "--deploy-dir", deployDir, "--out", dir)
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(dir, "inprocess.yaml") + "\n" + filepath.Join(dir, "nri.yaml") + "\n"
	if out != want {
		t.Errorf("printed %q, want %q", out, want)
	}
	for _, m := range []string{"inprocess", "nri"} {
		b, err := os.ReadFile(filepath.Join(dir, m+".yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "image: "+testImage) {
			t.Errorf("%s.yaml does not run %s", m, testImage)
		}
	}
}
