package cri

import (
	"errors"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

const (
	dA = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	dB = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

func TestPickRepoDigest(t *testing.T) {
	const install = "registry.example:5001/system/deckhouse/install"
	tests := []struct {
		name        string
		ref         string
		repoDigests []string
		want        digest.Digest
		notFound    bool
		ambiguous   bool
	}{
		{name: "full ref, one of two repositories", ref: install + ":v1",
			repoDigests: []string{"other.example/x@" + dB, install + "@" + dA}, want: dA},
		{name: "short ref normalized to docker.io/library", ref: "busybox",
			repoDigests: []string{"registry.example:5001/busybox@" + dB, "docker.io/library/busybox@" + dA}, want: dA},
		{name: "short ref with tag", ref: "library/busybox:1.36",
			repoDigests: []string{"docker.io/library/busybox@" + dA, "docker.io/other/busybox@" + dB}, want: dA},
		{name: "repo digest that keeps its tag", ref: install + ":v1",
			repoDigests: []string{install + ":v1@" + dA, "other.example/x@" + dB}, want: dA},
		{name: "same digest twice is one", ref: install + ":v1",
			repoDigests: []string{install + ":v1@" + dA, install + "@" + dA}, want: dA},
		{name: "no repository match takes the only one", ref: "mirror.example/system/deckhouse/install:v1",
			repoDigests: []string{install + "@" + dA}, want: dA},
		{name: "image ID takes the only one", ref: dB,
			repoDigests: []string{install + "@" + dA}, want: dA},
		{name: "malformed entries are skipped", ref: install + ":v1",
			repoDigests: []string{"not a reference", install + ":v1", install + "@" + dA}, want: dA},
		{name: "no repository match among two", ref: "busybox",
			repoDigests: []string{install + "@" + dA, "other.example/x@" + dB}, notFound: true},
		{name: "no repo digests", ref: "busybox", notFound: true},
		{name: "only malformed", ref: "busybox", repoDigests: []string{"Busybox@xyz"}, notFound: true},
		{name: "two digests of the repository", ref: install + ":v1",
			repoDigests: []string{install + "@" + dA, install + "@" + dB}, ambiguous: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := pickRepoDigest(tt.ref, tt.repoDigests)
			_, ambiguous := errors.AsType[*ambiguousError](err)
			switch {
			case tt.notFound:
				if !errdefs.IsNotFound(err) {
					t.Fatalf("pickRepoDigest = %q, %v; want not found", got, err)
				}
			case tt.ambiguous:
				if !ambiguous {
					t.Fatalf("pickRepoDigest = %q, %v; want an *ambiguousError", got, err)
				}
			case err != nil || got != tt.want:
				t.Fatalf("pickRepoDigest = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestRefDigest(t *testing.T) {
	tests := []struct {
		ref    string
		want   digest.Digest
		ok     bool
		broken bool
	}{
		{ref: "registry.example:5001/x@" + dA, want: dA, ok: true},
		{ref: "registry.example:5001/x:v1@" + dB, want: dB, ok: true},
		{ref: "registry.example:5001/x:v1"},
		{ref: "busybox"},
		{ref: dA},
		{ref: "busybox@sha256:abc", broken: true},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			got, ok, err := refDigest(tt.ref)
			if (err != nil) != tt.broken || ok != tt.ok || got != tt.want {
				t.Fatalf("refDigest = %q, %v, %v; want %q, %v, broken %v", got, ok, err, tt.want, tt.ok, tt.broken)
			}
		})
	}
}
