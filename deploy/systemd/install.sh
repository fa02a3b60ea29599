#!/bin/sh
# Installs Bridle on a systemd host the way docs/DAEMON.md ("systemd") tells
# a user to, step for step: the binaries, the config, the example policies,
# the unit and the slice (enabled and started), and the agent-unit drop-ins.
# It is the provisioning script of the systemd guest the tests boot
# (tests/systemd), so what a user installs by hand and the guest the tests
# check are the same thing; change the docs and this script together.
#
#   deploy/systemd/install.sh [REPO]
#
# REPO is a checkout (default: the current directory) with the binaries
# built in bin/ (make build). Run it as root. An existing
# /etc/bridle/bridled.yaml is kept: the docs say to edit it after installing,
# and provisioning again must not undo that.
set -eu

cd "${1:-.}"
for f in bin/bridled bin/bridle; do
	[ -x "$f" ] || { echo "install.sh: $PWD/$f missing: run make build first" >&2; exit 1; }
done

install -m 0755 bin/bridled bin/bridle /usr/local/bin/
install -d /etc/bridle/policy
if [ ! -e /etc/bridle/bridled.yaml ]; then
	install -m 0644 deploy/systemd/bridled.yaml /etc/bridle/bridled.yaml
fi
cp policy/examples/*.rego /etc/bridle/policy/
install -m 0644 deploy/systemd/bridled.service deploy/systemd/bridle-agents.slice /etc/systemd/system/
systemctl daemon-reload
systemctl enable --now bridle-agents.slice bridled.service

# The hardening drop-in for every agent-*.service unit.
install -D -m 0644 deploy/systemd/bridle-agent-hardening.conf \
	/etc/systemd/system/agent-.service.d/50-bridle-hardening.conf
# PrivatePIDs= exists from systemd 257 on; older ones warn and ignore it.
v=$(systemctl --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p')
if [ "${v:-0}" -ge 257 ]; then
	install -D -m 0644 deploy/systemd/bridle-agent-private-pids.conf \
		/etc/systemd/system/agent-.service.d/51-bridle-private-pids.conf
fi
systemctl daemon-reload
