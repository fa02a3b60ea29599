#!/usr/bin/env bash
# Renders the chart into the plain manifests kubectl applies, with the
# repository's example policies copied into the chart (a chart can read no
# file outside its own directory):
#
#   deploy/kubernetes/render.sh           # make manifests: write them
#   deploy/kubernetes/render.sh --check   # make check-manifests: fail if
#                                         # the committed ones are stale
#
# Both write into a temporary copy of the chart first; only the first copies
# the results into the tree (chart/bridle/files/policies and bridle.yaml).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
chart=$here/chart/bridle
out=$here/bridle.yaml
check=false
case "${1-}" in
--check) check=true ;;
"") ;;
*)
	echo "usage: $0 [--check]" >&2
	exit 2
	;;
esac

helm=$("$here/helm.sh")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cp -r "$chart" "$tmp/bridle"
rm -rf "$tmp/bridle/files/policies"
mkdir -p "$tmp/bridle/files/policies"
for f in "$repo"/policy/examples/*.rego; do
	# Tests are for `opa test`; bridled does not load them either.
	case $f in *_test.rego) continue ;; esac
	cp "$f" "$tmp/bridle/files/policies/"
done

{
	echo "# bridled as a DaemonSet in bridle-system (docs/KUBERNETES.md)."
	echo "# Rendered from deploy/kubernetes/chart/bridle by \`make manifests\`; do not edit."
	"$helm" template bridle "$tmp/bridle" --namespace bridle-system --set createNamespace=true
} >"$tmp/bridle.yaml"

if $check; then
	stale=
	if ! diff -r -u "$chart/files/policies" "$tmp/bridle/files/policies" >"$tmp/policies.diff" 2>&1; then
		cat "$tmp/policies.diff" >&2
		stale="deploy/kubernetes/chart/bridle/files/policies (from policy/examples)"
	fi
	if ! diff -u "$out" "$tmp/bridle.yaml" >&2; then
		stale="${stale:+$stale and }deploy/kubernetes/bridle.yaml"
	fi
	if [ -n "$stale" ]; then
		echo "manifests: $stale stale: run make manifests and commit" >&2
		exit 1
	fi
	echo "manifests: deploy/kubernetes/bridle.yaml and the chart's policies are up to date"
	exit 0
fi

rm -rf "$chart/files/policies"
cp -r "$tmp/bridle/files/policies" "$chart/files/policies"
cp "$tmp/bridle.yaml" "$out"
echo "manifests: wrote deploy/kubernetes/bridle.yaml and chart/bridle/files/policies"
