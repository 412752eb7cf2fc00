# hopless: make build | tools | lint | test | demo | bench
SHELL := /bin/bash
GO ?= go
CRICTL_VERSION := v1.37.0
STATICCHECK_VERSION := v0.8.2
CONTAINERD_MODULE := github.com/containerd/containerd/v2
CONTAINERD_VERSION := $(shell $(GO) list -m -f '{{.Version}}' $(CONTAINERD_MODULE) | sed 's/^v//')
TOOLS := $(CURDIR)/.tools/bin
LAB_DIR ?= $(CURDIR)/.lab
TEST_TIMEOUT ?= 14m

.PHONY: all build tools lint test unit e2e demo bench clean

all: build

# Our binaries. go's build cache makes this cheap when nothing changed.
build:
	$(GO) build -o bin/ ./registryd/cmd/registryd ./test/cmd/hopless-lab
	CGO_ENABLED=0 $(GO) build -ldflags "-X $(CONTAINERD_MODULE)/version.Version=$(CONTAINERD_VERSION)" -o bin/containerd ./plugin/cmd/containerd

# Pinned tools, built from the module proxy once and reused: crictl at
# CRICTL_VERSION, and a stock containerd from the version that go.mod pins.
tools: $(TOOLS)/crictl $(TOOLS)/containerd-stock

$(TOOLS)/crictl: .tools/crictl-$(CRICTL_VERSION).stamp
.tools/crictl-$(CRICTL_VERSION).stamp:
	mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) $(GO) install -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=$(CRICTL_VERSION)" sigs.k8s.io/cri-tools/cmd/crictl@$(CRICTL_VERSION)
	touch $@

$(TOOLS)/containerd-stock: go.mod go.sum
	mkdir -p $(TOOLS)
	CGO_ENABLED=0 $(GO) build -o $@ $(CONTAINERD_MODULE)/cmd/containerd

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

demo: build tools
	bin/hopless-lab demo --dir $(LAB_DIR)/demo

# Long benchmark runs; results go to BENCHMARKS.md by hand, with this command.
bench: build tools
	@for b in $$(bin/hopless-lab bench --list | awk '{print $$1}'); do bin/hopless-lab bench $$b --json || exit 1; done

clean:
	rm -rf bin .lab
