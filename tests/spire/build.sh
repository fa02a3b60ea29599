#!/usr/bin/env bash
# Builds spire-server and spire-agent, at the version tests/spire/go.mod pins,
# into a cache directory outside the clone, for the identity tests
# (tests/spiretest finds them there).
#
#   tests/spire/build.sh              # or: make spire
#   BRIDLE_SPIRE_DIR=/some/dir tests/spire/build.sh
#
# A cold build compiles about two thousand packages (cloud SDKs included) and
# takes minutes; when the directory already holds both binaries built from
# this go.sum it returns at once. A bump of go.sum rebuilds. The new binaries
# are built beside the directory and renamed into place, so a reader never
# sees half a directory and an interrupted build leaves the old one intact.
set -euo pipefail

module_dir=$(cd "$(dirname "$0")" && pwd)
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}

version=$(awk '$1 == "github.com/spiffe/spire" { print $2; exit }' "$module_dir/go.mod")
if [ -z "$version" ]; then
	echo "spire: no github.com/spiffe/spire requirement in $module_dir/go.mod" >&2
	exit 1
fi
dir=${BRIDLE_SPIRE_DIR:-/root/.cache/bridle/spire/$version}
parent=$(dirname "$dir")
base=$(basename "$dir")
# The binaries are keyed on go.sum: every module that goes into them is
# pinned there, so the same hash means the same binaries.
key=$(sha256sum "$module_dir/go.sum" | cut -d' ' -f1)
stamp=.go.sum.sha256

start=$(date +%s)
elapsed() { local s=$(($(date +%s) - start)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
say() { printf 'spire: %s\n' "$*"; }

current() {
	[ -x "$dir/spire-server" ] && [ -x "$dir/spire-agent" ] &&
		[ "$(cat "$dir/$stamp" 2>/dev/null)" = "$key" ]
}

if current; then
	say "spire-server and spire-agent $version already in $dir (go.sum ${key:0:12}); nothing to do"
	exit 0
fi

mkdir -p "$parent"
# Two builds at once (CI's background build and a `make spire`) would both
# compile for minutes; the second waits for the first and then finds its
# result.
exec 9>"$parent/.$base.lock"
if ! flock -n 9; then
	say "another build into $dir is running; waiting for it"
	flock 9
	if current; then
		say "the other build finished: spire-server and spire-agent $version in $dir ($(elapsed))"
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

say "building spire-server and spire-agent $version (go.sum ${key:0:12}) into $dir"
say "$("$GO" version), CGO_ENABLED=1, $(nproc) CPUs; a cold build takes minutes, a warm Go build cache seconds"

# go build -v names each package as it compiles it: count them for a progress
# line every 30 seconds instead of printing two thousand names.
# (One-second sleeps: a killed heartbeat leaves no long sleep holding the
# output open; nor the lock, closed in it.)
(
	exec 9>&-
	while :; do
		for _ in $(seq 30); do sleep 1; done
		say "still building after $(elapsed): $(wc -l <"$tmp/build.log") packages compiled"
	done
) &
heartbeat=$!

mkdir "$tmp/bin"
if ! (cd "$module_dir" && CGO_ENABLED=1 "$GO" build -v -o "$tmp/bin/" \
	github.com/spiffe/spire/cmd/spire-server \
	github.com/spiffe/spire/cmd/spire-agent) >"$tmp/build.log" 2>&1; then
	say "build failed after $(elapsed); the end of go build's output:"
	tail -n 60 "$tmp/build.log" >&2
	exit 1
fi
kill "$heartbeat" 2>/dev/null || true
heartbeat=

built=$("$tmp/bin/spire-server" --version 2>&1) || {
	say "the new spire-server does not run: $built" >&2
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

say "built spire $built in $(elapsed): $(du -sh "$dir/spire-server" | cut -f1) spire-server, $(du -sh "$dir/spire-agent" | cut -f1) spire-agent in $dir"
