# airlock: `make help` lists the targets. Everything runs as root on a
# Debian 12 machine with Go and make (the tests create network namespaces).

SHELL       := /bin/bash
GO          ?= go
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -s -w -X airlock.dev/airlock/installer/cli.version=$(VERSION)
TEST_FLAGS  ?= -count=1 -timeout 30m
STATE       ?= $(CURDIR)/.cache/demo-state
FUZZTIME    ?= 10m
FUZZFLAGS   ?=
FUZZ        ?= .

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z0-9-]+:.*## / {printf "  %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: deps
deps: ## install the Debian packages the build and tests need (apt-get, once)
	@bash .ci/deps

.PHONY: build
build: ## build bin/airlock (with Debian's iPXE embedded) and bin/airlock-agent
	@bash .ci/deps
	cd services/ipxe && sh fetch.sh
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/airlock-agent ./installer/agent/cmd/airlock-agent
	cp bin/airlock-agent installer/agentbin/bin/airlock-agent
	CGO_ENABLED=0 $(GO) build -trimpath -tags 'ipxe_embed agent_embed' -ldflags '$(LDFLAGS)' -o bin/airlock .

# The node OS image the end-to-end tests install (Debian packages through
# debootstrap), cached outside the work tree so that a fresh clone reuses it.
OSIMAGE_CACHE ?= /var/cache/airlock

.PHONY: osimage
osimage: deps ## build (or find cached) the virtual rack's node OS image; prints its directory
	@AIRLOCK_CACHE=$(OSIMAGE_CACHE) bash e2e/osimage/build.sh

# Kubernetes v1.35.4 and etcd v3.6.6 built from Go modules (e2e/k8s), for the
# tests that run a real API server and kubelet; cached like the OS image.
K8S_CACHE ?= /var/cache/airlock

.PHONY: k8s-bins
k8s-bins: ## build (or find cached) kube-apiserver, kubelet, etcd and the rest from Go modules; prints their directory
	@AIRLOCK_K8S_CACHE=$(K8S_CACHE) bash e2e/k8s/build.sh

# The container images of the Kubernetes e2e test (kubeadm's images built
# from the k8s-bins binaries and coredns, and a test app) in an OCI layout
# under the same cache; e2e/k8s/images.sh says how.
.PHONY: k8s-images
k8s-images: k8s-bins ## build (or find cached) the Kubernetes test images (OCI layout); prints its directory
	@AIRLOCK_K8S_CACHE=$(K8S_CACHE) bash e2e/k8s/images.sh

.PHONY: test
test: deps build k8s-bins ## go vet, formatting, and every unit, integration and end-to-end test (unit tests with the race detector)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags e2e ./e2e/...
	$(GO) vet -tags e2e,e2efull ./e2e/...
	k8s=$$(AIRLOCK_K8S_CACHE=$(K8S_CACHE) bash e2e/k8s/build.sh) && \
	AIRLOCK_K8S_BIN=$$k8s CGO_ENABLED=1 $(GO) test $(TEST_FLAGS) -race ./...
# the embedded iPXE first stages (build ran fetch.sh) are Debian's, byte for byte:
	$(GO) test $(TEST_FLAGS) -tags ipxe_embed ./services/ipxe/
	img=$$(AIRLOCK_CACHE=$(OSIMAGE_CACHE) bash e2e/osimage/build.sh) && \
	AIRLOCK_OS_IMAGE=$$img AIRLOCK_BIN=$(CURDIR)/bin/airlock $(GO) test $(TEST_FLAGS) -tags e2e ./e2e/

.PHONY: e2e
e2e: deps build ## end-to-end tests against the built binary (network namespaces, QEMU; builds the node OS image once)
	img=$$(AIRLOCK_CACHE=$(OSIMAGE_CACHE) bash e2e/osimage/build.sh) && \
	AIRLOCK_OS_IMAGE=$$img AIRLOCK_BIN=$(CURDIR)/bin/airlock $(GO) test $(TEST_FLAGS) -v -tags e2e ./e2e/

# The crash sweep kills the lab's airlock at every transition of an install,
# one install per point (about 20 of them: hours under emulation); make test
# and make e2e kill two points drawn at random (the seed is printed).
.PHONY: e2e-full
e2e-full: deps build k8s-images ## make e2e with every kill point of the crash sweep (one install per point: hours) and the two-VM Kubernetes cluster
	img=$$(AIRLOCK_CACHE=$(OSIMAGE_CACHE) bash e2e/osimage/build.sh) && \
	k8s=$$(AIRLOCK_K8S_CACHE=$(K8S_CACHE) bash e2e/k8s/build.sh) && \
	k8simg=$$(AIRLOCK_K8S_CACHE=$(K8S_CACHE) bash e2e/k8s/images.sh) && \
	AIRLOCK_E2E_KILL=all AIRLOCK_OS_IMAGE=$$img AIRLOCK_K8S_BIN=$$k8s AIRLOCK_K8S_IMAGES=$$k8simg AIRLOCK_BIN=$(CURDIR)/bin/airlock $(GO) test -count=1 -timeout 12h -v -tags e2e,e2efull ./e2e/

.PHONY: bench
bench: build ## every benchmark beside its peer (installs the peers); figures go to bench/RESULTS.md
	@bash .ci/deps bench
	@for b in bench/*.sh; do echo "== $$b"; bash $$b || exit 1; done

.PHONY: fuzz
fuzz: ## every fuzz target, FUZZTIME each (default 10m), one after the other; not in CI
	@FUZZTIME='$(FUZZTIME)' FUZZFLAGS='$(FUZZFLAGS)' FUZZ='$(FUZZ)' GO='$(GO)' bash .ci/fuzz

.PHONY: lint
lint: ## gofmt, go vet and staticcheck
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

.PHONY: demo
demo: build ## a virtual rack of QEMU machines discovered by airlock; Ctrl-C removes it
	STATE=$(STATE) bash e2e/demo.sh

.PHONY: clean
clean: ## remove build output and caches made here
	rm -rf bin .cache
