#!/usr/bin/env bash
# Prints the path of a helm binary at the version Bridle renders its chart
# with, installing it from the Go module proxy into a cache outside the clone
# first if it is not there:
#
#   helm=$(deploy/kubernetes/helm.sh)
#   BRIDLE_HELM_DIR=/some/dir deploy/kubernetes/helm.sh
#
# `go install helm@VERSION` builds from helm's own go.mod and go.sum at that
# tag, so the version names the binary. The build goes to a directory beside
# the cache and is renamed into place: a reader never sees half a binary, and
# two builds at once wait for each other (flock).
set -euo pipefail

version=v3.22.0
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
dir=${BRIDLE_HELM_DIR:-/root/.cache/bridle/helm/$version}
parent=$(dirname "$dir")
base=$(basename "$dir")

say() { printf 'helm: %s\n' "$*" >&2; }

if [ -x "$dir/helm" ]; then
	echo "$dir/helm"
	exit 0
fi

mkdir -p "$parent"
exec 9>"$parent/.$base.lock"
flock 9
if [ -x "$dir/helm" ]; then
	echo "$dir/helm"
	exit 0
fi

tmp=$(mktemp -d "$parent/.$base.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
say "installing helm $version into $dir (a cold build takes a few minutes)"
if ! GOBIN="$tmp/bin" CGO_ENABLED=0 "$GO" install "helm.sh/helm/v3/cmd/helm@$version" >"$tmp/build.log" 2>&1; then
	say "go install failed; the end of its output:"
	tail -n 40 "$tmp/build.log" >&2
	exit 1
fi
if [ -e "$dir" ]; then
	mv -T "$dir" "$tmp/old"
fi
mv -T "$tmp/bin" "$dir"
say "installed helm $version in $(($(date +%s) - start))s"
echo "$dir/helm"
