# Bridle. Everything that touches the kernel needs root: run `sudo make ...`.
# sudo resets PATH, which often drops Go's usual home.
GO        ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
BIN       := bin
CLANG     ?= clang-19
PKGS      := ./...

.PHONY: all build generate check-generated lint test test-unprivileged test-policy test-kernels test-systemd check-vagrant bench demo spire manifests check-manifests kubernetes image test-kubernetes clean

all: build

build:
	$(GO) build -o $(BIN)/bridle ./cmd/bridle
	$(GO) build -o $(BIN)/bridled ./cmd/bridled

# Regenerate the BPF objects and their Go bindings (needs clang-19, llvm-19,
# libbpf-dev). The results are committed so `go build` needs no C toolchain.
generate:
	cd loader && $(GO) generate ./...

# CI: the committed objects must be exactly what the pinned clang makes.
check-generated: generate
	git diff --exit-code -- loader bpf || { echo "generated BPF objects are stale: run make generate and commit" >&2; exit 1; }

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:" $$out >&2; exit 1; fi
	$(GO) vet $(PKGS)

# The whole suite against the real kernel: real cgroups, programs, processes.
test: lint
	$(GO) test -count=1 -timeout 20m $(PKGS)

# The daemon's unit tests as an unprivileged user (nobody): node and tasks
# are tested through a fake kernel and must never need root. The tree is
# copied where nobody can read it; modules come from the module proxy, and
# nobody's build cache is kept outside the tree for the next run.
NOBODY_CACHE ?= /var/tmp/bridle-nobody-cache
test-unprivileged:
	@d=$$(mktemp -d) && mkdir $$d/src && tar --exclude=./.git -cf - . | tar -xf - -C $$d/src && \
	mkdir -p $(NOBODY_CACHE) && chown -R nobody $$d $(NOBODY_CACHE) && \
	su nobody -s /bin/sh -c "cd $$d/src && HOME=$$d TMPDIR=$$d GOCACHE=$(NOBODY_CACHE)/build GOPATH=$(NOBODY_CACHE)/go GOPROXY=$$($(GO) env GOPROXY) GOTOOLCHAIN=local $(GO) test -count=1 ./daemon/..."; \
	rc=$$?; rm -rf $$d; exit $$rc

# The example Rego policies, with OPA's own tools (opa check and opa test
# run on them unchanged).
OPA := $(GO) run github.com/open-policy-agent/opa@v1.22.3
test-policy:
	$(OPA) check --schema policy/engine/input.schema.json policy/examples
	$(OPA) test -v policy/examples

# The privileged suite inside Debian kernels under qemu (BPF LSM mode too).
# Each guest has one vCPU (see tests/kernels: a second one under software
# emulation can crash the guest's kernel), so two guests run side by side.
test-kernels:
	$(GO) run ./tests/kernels -parallel 2 -memory 1536M -testtimeout 40m -timeout 45m -pkg ./loader/... -pkg ./tests/e2e \
		-build ./cmd/bridle -build ./cmd/bridled -build ./tests/probe -program /usr/sbin/dnsmasq -program /usr/bin/getent \
		-env BRIDLE_E2E_BRIDLE=/bridle/files/bridle -env BRIDLE_E2E_BRIDLED=/bridle/files/bridled \
		-env BRIDLE_E2E_PROBE=/bridle/files/probe \
		-program /usr/bin/setpriv -file deploy/systemd/bridled.service -env BRIDLE_E2E_UNIT=/bridle/files/bridled.service

# The systemd deployment inside a Debian trixie guest with systemd as PID 1
# (the 6.12 and 6.1 kernels side by side, BPF LSM active), installed as
# docs/DAEMON.md says. The guest image is built once with mmdebstrap into a
# cache outside the clone (BRIDLE_SYSTEMD_CACHE, default
# ~/.cache/bridle/systemd-guest); that needs root and mmdebstrap and cpio.
# See tests/systemd/README.md.
SYSTEMD_KERNELS ?= 6.12,6.1
test-systemd:
	$(GO) run ./tests/systemd -kernel $(SYSTEMD_KERNELS) -parallel 2

# The Vagrantfile is valid (Debian's vagrant package; no provider needed).
# Its VM is provisioned by deploy/systemd/install.sh, the script the systemd
# guest above installs with. No version check over the network.
check-vagrant:
	VAGRANT_CHECKPOINT_DISABLE=1 vagrant validate --ignore-provider

# SPIRE server and agent for the identity tests, built from the module proxy
# at the version tests/spire pins, into a cache outside the clone
# (BRIDLE_SPIRE_DIR, default /root/.cache/bridle/spire/<version>). Minutes the
# first time, nothing after.
spire:
	GO=$(GO) tests/spire/build.sh

# The plain Kubernetes manifests (deploy/kubernetes/bridle.yaml), rendered
# from the Helm chart with the example policies copied into it. Helm is
# installed from the module proxy into a cache outside the clone
# (BRIDLE_HELM_DIR, default /root/.cache/bridle/helm/<version>) if missing.
manifests:
	GO=$(GO) deploy/kubernetes/render.sh

# CI: the committed manifests must be what the chart renders.
check-manifests:
	GO=$(GO) deploy/kubernetes/render.sh --check

# The parts of the single-node Kubernetes cluster the Kubernetes tests start
# (kube-apiserver, kubelet, etcd, containerd, runc, CNI plugins...), built
# from the module proxy at the versions tests/kubernetes pins, into a cache
# outside the clone (BRIDLE_KUBERNETES_DIR, default
# /root/.cache/bridle/kubernetes/<version>). About half an hour the first time
# on two cores, nothing after. runc needs libseccomp-dev and pkg-config.
kubernetes:
	GO=$(GO) tests/kubernetes/build.sh

# Bridle's container image (bridled as the entrypoint, bridle beside it, at /bridle) as a
# tarball for `ctr images import`: static builds, one layer, reproducible.
IMAGE ?= bridle.sh/bridle:dev
image:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/static/bridled ./cmd/bridled
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/static/bridle ./cmd/bridle
	$(GO) run ./deploy/kubernetes/mkimage -o $(BIN)/bridle-image.tar -name $(IMAGE) -entrypoint /bridled \
		$(BIN)/static/bridled:/bridled $(BIN)/static/bridle:/bridle

# A real single-node cluster (tests/kubetest) and the tests run on it; needs
# `make kubernetes` first (the tests skip without its parts, and fail under CI).
test-kubernetes:
	$(GO) test -tags kubernetes -count=1 -timeout 30m -v -run '^TestCluster$$|^TestKubernetes' ./tests/kubetest/ ./tests/e2e/

# Costs measured against a baseline of the same run (docs/BENCHMARKS.md).
bench:
	$(GO) test -p 1 -run '^$$' -bench . -benchtime 200ms -timeout 20m ./loader/... ./tests/bench 2>&1 | $(GO) run ./tests/bench/report

demo: build
	$(GO) build -o $(BIN)/demo-listen ./tests/demo
	./tests/demo/demo.sh $(BIN)

clean:
	rm -rf $(BIN)
