#!/usr/bin/env bash
# Builds the parts of the single-node Kubernetes cluster the tests start
# (tests/kubetest), at the versions tests/kubernetes/go.mod pins, into a cache
# directory outside the clone:
#
#   kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy
#   kubectl            k8s.io/kubernetes
#   etcd               go.etcd.io/etcd/server/v3 (./etcd)
#   containerd containerd-shim-runc-v2 ctr
#                      github.com/containerd/containerd/v2 (NRI built in)
#   runc               github.com/opencontainers/runc (cgo, libseccomp)
#   bridge host-local loopback
#                      github.com/containernetworking/plugins
#   pause              the pods' sandbox program (./pause)
#
#   tests/kubernetes/build.sh              # or: make kubernetes
#   BRIDLE_KUBERNETES_DIR=/some/dir tests/kubernetes/build.sh
#
# runc needs libseccomp's headers (Debian: libseccomp-dev) and pkg-config;
# everything else is built with CGO_ENABLED=0. A cold build compiles several
# thousand packages and takes about half an hour on two cores; when the
# directory already holds every binary built from this go.sum it returns at
# once. A bump of go.sum rebuilds. The new binaries are built beside the
# directory and renamed into place, so a reader never sees half a directory
# and an interrupted build leaves the old one intact.
set -euo pipefail

module_dir=$(cd "$(dirname "$0")" && pwd)
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}

modversion() { awk -v m="$1" '$1 == m { print $2; exit }' "$module_dir/go.mod"; }
version=$(modversion k8s.io/kubernetes)
containerd_version=$(modversion github.com/containerd/containerd/v2)
if [ -z "$version" ] || [ -z "$containerd_version" ]; then
	echo "kubernetes: k8s.io/kubernetes or containerd missing from $module_dir/go.mod" >&2
	exit 1
fi
dir=${BRIDLE_KUBERNETES_DIR:-/root/.cache/bridle/kubernetes/$version}
parent=$(dirname "$dir")
base=$(basename "$dir")
# The binaries are keyed on go.sum and the two small programs of this module:
# every module that goes into them is pinned in go.sum, so the same hash
# means the same binaries.
key=$(cat "$module_dir/go.sum" "$module_dir/etcd/main.go" "$module_dir/pause/main.go" "$0" | sha256sum | cut -d' ' -f1)
stamp=.go.sum.sha256

binaries=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl
	etcd containerd containerd-shim-runc-v2 ctr runc bridge host-local loopback pause)

start=$(date +%s)
elapsed() { local s=$(($(date +%s) - start)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
say() { printf 'kubernetes: %s\n' "$*"; }

current() {
	local b
	for b in "${binaries[@]}"; do
		[ -x "$dir/$b" ] || return 1
	done
	[ "$(cat "$dir/$stamp" 2>/dev/null)" = "$key" ]
}

if current; then
	say "kubernetes $version parts already in $dir (key ${key:0:12}); nothing to do"
	exit 0
fi

if [ ! -e /usr/include/seccomp.h ] || ! command -v pkg-config >/dev/null; then
	say "runc needs libseccomp's headers and pkg-config: apt-get install libseccomp-dev pkg-config" >&2
	exit 1
fi

mkdir -p "$parent"
# Two builds at once (CI's background build and a `make kubernetes`) would
# both compile for half an hour; the second waits for the first and then
# finds its result.
exec 9>"$parent/.$base.lock"
if ! flock -n 9; then
	say "another build into $dir is running; waiting for it"
	flock 9
	if current; then
		say "the other build finished: kubernetes $version parts in $dir ($(elapsed))"
		exit 0
	fi
fi

tmp=$(mktemp -d "$parent/.$base.build.XXXXXX")
heartbeat=
cleanup() {
	[ -n "$heartbeat" ] && kill "$heartbeat" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT

say "building kubernetes $version parts (key ${key:0:12}) into $dir"
say "$("$GO" version), $(nproc) CPUs; a cold build takes about half an hour, a warm Go build cache a minute"

# go build -v names each package as it compiles it: count them for a progress
# line every 30 seconds instead of printing thousands of names.
# (One-second sleeps: a killed heartbeat leaves no long sleep holding the
# output open; nor the lock, closed in it.)
touch "$tmp/build.log"
(
	exec 9>&-
	while :; do
		for _ in $(seq 30); do sleep 1; done
		say "still building after $(elapsed): $(grep -vc '^#' "$tmp/build.log") packages compiled"
	done
) &
heartbeat=$!

# The version the binaries report (kubectl version, the node's kubelet
# version, containerd --version) is the release they are built from.
major=${version#v}
minor=${major#*.}
minor=${minor%%.*}
major=${major%%.*}
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	kube_ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
	kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
kube_ldflags+=" -X github.com/containerd/containerd/v2/version.Version=${containerd_version#v}"

build() {
	(cd "$module_dir" && "$GO" build -v -trimpath "$@") >>"$tmp/build.log" 2>&1
}

mkdir "$tmp/bin"
if ! CGO_ENABLED=0 build -tags no_btrfs -ldflags "$kube_ldflags" -o "$tmp/bin/" \
	k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kube-scheduler \
	k8s.io/kubernetes/cmd/kubelet \
	k8s.io/kubernetes/cmd/kube-proxy \
	k8s.io/kubernetes/cmd/kubectl \
	github.com/containerd/containerd/v2/cmd/containerd \
	github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
	github.com/containerd/containerd/v2/cmd/ctr \
	github.com/containernetworking/plugins/plugins/main/bridge \
	github.com/containernetworking/plugins/plugins/main/loopback \
	github.com/containernetworking/plugins/plugins/ipam/host-local \
	./etcd ./pause ||
	! CGO_ENABLED=1 build -tags "seccomp urfave_cli_no_docs" -ldflags "-s -w" -o "$tmp/bin/runc" \
		github.com/opencontainers/runc; then
	say "build failed after $(elapsed); the end of go build's output:"
	grep -v '^[a-zA-Z0-9._/-]*$' "$tmp/build.log" | tail -n 60 >&2
	exit 1
fi
kill "$heartbeat" 2>/dev/null || true
heartbeat=

built=$("$tmp/bin/kubectl" version --client 2>&1 | head -1) || {
	say "the new kubectl does not run: $built" >&2
	exit 1
}
"$tmp/bin/runc" --version >/dev/null 2>&1 || {
	say "the new runc does not run: $("$tmp/bin/runc" --version 2>&1)" >&2
	exit 1
}
printf '%s\n' "$key" >"$tmp/bin/$stamp"

# Swap the directories: rename the old one aside, the new one in, then remove
# the old. Between the two renames the directory is briefly absent, never
# partial.
if [ -e "$dir" ]; then
	mv -T "$dir" "$tmp/old"
fi
mv -T "$tmp/bin" "$dir"

say "built kubernetes $version parts ($built) in $(elapsed): $(du -sh "$dir" | cut -f1) in $dir"
