# hopless: make build | tools | lint | test | demo | bench | image | manifests
SHELL := /bin/bash
GO ?= go
CRICTL_VERSION := v1.37.0
STATICCHECK_VERSION := v0.8.2
# The OCI distribution-spec conformance test, run against a lab master and the lab's
# upstream (test/e2e/conformance_test.go); a main module of its own.
CONFORMANCE_VERSION := v0.0.0-20260831232431-97274622c111
# SeaweedFS (weed version 4.53), the lab's S3 server (Options.Storage "s3").
SEAWEEDFS_MODULE := github.com/seaweedfs/seaweedfs
SEAWEEDFS_VERSION := v0.0.0-20261109003541-7506e5f91cd6
CONTAINERD_MODULE := github.com/containerd/containerd/v2
CONTAINERD_VERSION := $(shell $(GO) list -m -f '{{.Version}}' $(CONTAINERD_MODULE) | sed 's/^v//')
TOOLS := $(CURDIR)/.tools/bin
LAB_DIR ?= $(CURDIR)/.lab
TEST_TIMEOUT ?= 14m

.PHONY: all build tools lint test unit e2e demo bench fuzz clean

all: build

# Our binaries, all static (CGO_ENABLED=0): the lab runs them chrooted into node
# root filesystems that have no libc. go's build cache makes this cheap when nothing
# changed.
build:
	CGO_ENABLED=0 $(GO) build -o bin/ ./registryd/cmd/registryd ./test/cmd/hopless-lab ./test/cmd/lab-pause ./nri/cmd/hopless-nri ./install/cmd/hopless-install
	CGO_ENABLED=0 $(GO) build -ldflags "-X $(CONTAINERD_MODULE)/version.Version=$(CONTAINERD_VERSION)" -o bin/containerd ./plugin/cmd/containerd

NGINX_DEBS := nginx libnginx-mod-stream
RUNC_STAMP := .tools/runc.stamp
NGINX_STAMP := .tools/nginx.stamp

# Pinned tools, built from the module proxy once and reused: crictl at
# CRICTL_VERSION, a stock containerd from the version that go.mod pins, and
# Debian's nginx with its stream module (the NGINX stream hop baseline), and
# SeaweedFS's weed at SEAWEEDFS_VERSION (the lab's S3 server), and the OCI
# conformance test at CONFORMANCE_VERSION.
tools: $(TOOLS)/crictl $(TOOLS)/containerd-stock $(TOOLS)/containerd-shim-runc-v2 $(NGINX_STAMP) $(RUNC_STAMP) $(TOOLS)/weed $(TOOLS)/conformance

$(TOOLS)/conformance: .tools/conformance-$(CONFORMANCE_VERSION).stamp
.tools/conformance-$(CONFORMANCE_VERSION).stamp:
	mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) CGO_ENABLED=0 $(GO) install github.com/opencontainers/distribution-spec/conformance@$(CONFORMANCE_VERSION)
	touch $@

$(TOOLS)/crictl: .tools/crictl-$(CRICTL_VERSION).stamp
.tools/crictl-$(CRICTL_VERSION).stamp:
	mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) $(GO) install -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=$(CRICTL_VERSION)" sigs.k8s.io/cri-tools/cmd/crictl@$(CRICTL_VERSION)
	touch $@

$(TOOLS)/containerd-stock: go.mod go.sum
	mkdir -p $(TOOLS)
	CGO_ENABLED=0 $(GO) build -o $@ $(CONTAINERD_MODULE)/cmd/containerd

# The runc shim of the same containerd, beside containerd-stock, where containerd
# looks for it: the lab's nodes that run containers (Options.Containers) need it.
$(TOOLS)/containerd-shim-runc-v2: go.mod go.sum
	mkdir -p $(TOOLS)
	CGO_ENABLED=0 $(GO) build -o $@ $(CONTAINERD_MODULE)/cmd/containerd-shim-runc-v2

# Debian's runc, for those containers: fetched with apt-get download and unpacked
# with dpkg-deb -x into .tools/runc, like nginx below; nothing is installed.
$(RUNC_STAMP):
	rm -rf .tools/debs-runc .tools/runc && mkdir -p .tools/debs-runc .tools/runc
	cd .tools/debs-runc && { apt-get download -o APT::Sandbox::User=root runc || { apt-get update && apt-get download -o APT::Sandbox::User=root runc; }; }
	for d in .tools/debs-runc/*.deb; do dpkg-deb -x "$$d" .tools/runc || exit 1; done
	.tools/runc/usr/sbin/runc --version
	touch $@

# The NGINX stream hop that real clusters run on every node, for the lab's nginx
# mode and the node benchmarks: Debian's own nginx and ngx_stream_module.so, as
# .deb files fetched with apt-get download into .tools/debs and unpacked with
# dpkg-deb -x into .tools/nginx. Nothing is installed: no service starts, and
# /etc/nginx and dpkg's database are not touched. apt-get update runs only when
# apt-get download fails (empty or stale package lists). The binary is checked
# with nginx -t on a stream config like the lab's; the stamp makes it run once.
$(NGINX_STAMP):
	rm -rf .tools/debs .tools/nginx && mkdir -p .tools/debs .tools/nginx/check
	cd .tools/debs && { apt-get download -o APT::Sandbox::User=root $(NGINX_DEBS) || { apt-get update && apt-get download -o APT::Sandbox::User=root $(NGINX_DEBS); }; }
	for d in .tools/debs/*.deb; do dpkg-deb -x "$$d" .tools/nginx || exit 1; done
	printf '%s\n' 'load_module $(CURDIR)/.tools/nginx/usr/lib/nginx/modules/ngx_stream_module.so;' \
	  'daemon off; master_process off; pid $(CURDIR)/.tools/nginx/check/nginx.pid;' 'events {}' \
	  'stream { upstream m { least_conn; server 127.0.0.1:5001; }' \
	  '  server { listen 127.0.0.1:5001; proxy_pass m; proxy_connect_timeout 1s; proxy_timeout 1h; } }' \
	  > .tools/nginx/check/nginx.conf
	.tools/nginx/usr/sbin/nginx -p $(CURDIR)/.tools/nginx/check -e stderr -c $(CURDIR)/.tools/nginx/check/nginx.conf -t
	touch $@

# SeaweedFS's go.mod has replace directives, so go install refuses it: its module
# source is downloaded, copied to .tools/src/seaweedfs (the module cache is
# read-only) and built there as the main module. Slow cold (minutes) and large;
# the stamp makes it run once per version.
$(TOOLS)/weed: .tools/weed-$(SEAWEEDFS_VERSION).stamp
.tools/weed-$(SEAWEEDFS_VERSION).stamp:
	mkdir -p $(TOOLS)
	dir=$$($(GO) mod download -json $(SEAWEEDFS_MODULE)@$(SEAWEEDFS_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p') && \
	  test -n "$$dir" && rm -rf .tools/src/seaweedfs && mkdir -p .tools/src && \
	  cp -r "$$dir" .tools/src/seaweedfs && chmod -R u+w .tools/src/seaweedfs
	cd .tools/src/seaweedfs && CGO_ENABLED=0 $(GO) build -o $(TOOLS)/weed ./weed
	$(TOOLS)/weed version
	touch $@

$(TOOLS)/staticcheck: .tools/staticcheck-$(STATICCHECK_VERSION).stamp
.tools/staticcheck-$(STATICCHECK_VERSION).stamp:
	mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	touch $@

lint: $(TOOLS)/staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(TOOLS)/staticcheck ./...

# Unit tests beside the code, then the end-to-end tests on real labs.
test: build tools
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...

# Every fuzz target for FUZZTIME each, one after the other (go test -fuzz takes one
# target of one package at a time). Their seed corpora (testdata/fuzz) also run as
# plain tests in make test. CI runs this on a count of inputs (FUZZTIME=3000x).
FUZZTIME ?= 30s
fuzz:
	@set -e; for dir in $$(grep -l '^func Fuzz' $$(git ls-files '*_test.go') | xargs -n1 dirname | sort -u); do \
	  for f in $$($(GO) test -list '^Fuzz' ./$$dir | grep '^Fuzz'); do \
	    echo "== ./$$dir $$f ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -parallel 2 ./$$dir; \
	  done; \
	done

demo: build tools
	bin/hopless-lab demo --dir $(LAB_DIR)/demo

# Long benchmark runs; results go to BENCHMARKS.md by hand, with this command.
bench: build tools
	@for b in $$(bin/hopless-lab bench --list | awk '{print $$1}'); do bin/hopless-lab bench $$b --json || exit 1; done

# The image every hopless container runs (ko-style: the static binaries in one
# layer, no base image), as an OCI layout in bin/image; bin/image.digest holds its
# digest. hopless-install is built once its package exists; hopless-image names
# any binary that is missing.
REGISTRY ?= registry.example.com/hopless
IMAGE_DIR := bin/image

.PHONY: image manifests

image:
	CGO_ENABLED=0 $(GO) build -o bin/ ./registryd/cmd/registryd ./nri/cmd/hopless-nri ./install/cmd/hopless-install
	CGO_ENABLED=0 $(GO) build -ldflags "-X $(CONTAINERD_MODULE)/version.Version=$(CONTAINERD_VERSION)" -o bin/containerd ./plugin/cmd/containerd
	$(GO) run ./install/cmd/hopless-image --bin-dir bin --out $(IMAGE_DIR) --digest-file bin/image.digest

# Both overlays of install/deploy with that image, by digest, pushed as
# $(REGISTRY)/hopless: bin/manifests/inprocess.yaml and nri.yaml.
manifests: image
	$(GO) run ./install/cmd/hopless-manifests --image $(REGISTRY)/hopless@$$(cat bin/image.digest) --out bin/manifests

clean:
	rm -rf bin .lab
