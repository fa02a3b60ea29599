#!/bin/sh
# The systemd guest's checks (tests/systemd). It installs Bridle with the
# same script users and the Vagrant VM use, then drives it with systemctl
# and bridle the way docs/DAEMON.md describes. Every result is one line
# "BRIDLE-SYSTEMD: PASS|FAIL NAME [detail]" on the console; the runner
# parses them. Agents are the probe (tests/probe) installed as
# /opt/agent/probe.
set -u
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

say() { echo "BRIDLE-SYSTEMD: $*"; }
pass() { say "PASS $*"; }
fail() { say "FAIL $*"; }
# show prints a command's output as LOG lines, for a failure's context.
show() { "$@" 2>&1 | tail -n 40 | sed 's/^/BRIDLE-SYSTEMD: LOG /'; }

say "BOOTED"
say "FACT uptime-at-checks=$(cut -d' ' -f1 /proc/uptime)s"
say "FACT uname=$(uname -r)"
say "FACT systemd=$(systemctl --version | sed -n 1p)"
say "FACT lsm=$(cat /sys/kernel/security/lsm)"

ROOT=/bridle.slice/bridle-agents.slice
CG=/sys/fs/cgroup

# --- Install, as docs/DAEMON.md says (deploy/systemd/install.sh). ---
if /bridle/src/deploy/systemd/install.sh /bridle/src >/tmp/install.log 2>&1; then
	pass install
else
	fail install "deploy/systemd/install.sh failed"
	show cat /tmp/install.log
fi

# (a) bridled.service reached active, which for Type=notify means bridled
# sent READY=1: every root confined.
typ=$(systemctl show -p Type --value bridled.service)
state=$(systemctl show -p ActiveState --value bridled.service)
if [ "$typ" = notify ] && [ "$state" = active ] && [ -d "$CG$ROOT" ]; then
	pass bridled-active "Type=$typ ActiveState=$state"
else
	fail bridled-active "Type=$typ ActiveState=$state root=$(ls -d "$CG$ROOT" 2>&1)"
	show systemctl status --no-pager bridled.service
	show journalctl -b -u bridled --no-pager
fi

# --- The site's own edits ("then edit" in the docs). ---
# The agent: the probe. The examples' baseline allows nothing, so no agent
# unit could even start: allow the agent's own binary, and journald's stdout
# socket, which systemd connects to from the unit's cgroup for the unit's
# output (refused, the output is lost). systemd's executor (systemd 255+)
# needs no rule: a run without one passed.
install -D -m 0755 /bridle/files/probe /opt/agent/probe
sed -i 's|^baseline := {"egress": \[\], "exec": \[\]}$|baseline := {"egress": [{"unix": "/run/systemd/journal/stdout"}], "exec": [{"path": "/opt/agent/probe"}]}|' \
	/etc/bridle/policy/bridle.rego
# The coding envelope names git's, ssh's and Go's programs, which must exist for
# it to compile (rules name programs by device and inode); this guest has
# none of them, so stand-ins take their paths.
mkdir -p /usr/lib/git-core /usr/local/go/bin /usr/local/go/pkg/tool
for p in git ssh; do cp /usr/bin/true /usr/bin/$p; done
# Agent units are coding agents (the example policy's kinds).
sed -i 's|^    units:$|    units:\n      agent-*.service: spiffe://example.org/agent/coding/{unit}|' /etc/bridle/bridled.yaml
if grep -q /opt/agent/probe /etc/bridle/policy/bridle.rego && grep -q 'agent-\*.service' /etc/bridle/bridled.yaml; then
	pass site-edits
else
	fail site-edits "the sed edits of bridle.rego or bridled.yaml did not apply"
fi
# The coding envelope's git host, on loopback: nothing listens, so an
# allowed connect gets ECONNREFUSED, a refused one EPERM.
ip addr add 192.0.2.10/32 dev lo
systemctl restart bridled.service
if [ "$(systemctl show -p ActiveState --value bridled.service)" != active ]; then
	fail bridled-restart "bridled did not come back after the site's edits"
	show journalctl -b -u bridled --no-pager
fi

# (b) An agent whose very first instructions try a connect and an exec.
cat >/etc/systemd/system/agent-first.service <<'UNIT'
[Unit]
Description=Agent that tries a connect and an exec at once
[Service]
Type=oneshot
ExecStart=-/opt/agent/probe tcp 192.0.2.10:443
ExecStart=-/opt/agent/probe exec /usr/bin/true
UNIT
systemctl daemon-reload
systemctl start agent-first.service
out=$(journalctl -b -u agent-first.service -o cat --no-pager | grep -E '^(ok|EPERM|error)')
slice=$(systemctl show -p Slice --value agent-first.service)
conn=$(echo "$out" | sed -n 1p)
ex=$(echo "$out" | sed -n 2p)
if [ "$slice" = bridle-agents.slice ] && [ "${conn%% *}" = EPERM ] && [ "${ex%% *}" = EPERM ]; then
	pass first-instruction "slice=$slice connect=[$conn] exec=[$ex]"
else
	fail first-instruction "slice=$slice connect=[$conn] exec=[$ex]"
	show journalctl -b -u agent-first.service --no-pager
fi

# (c) A task on an agent unit's cgroup grants its envelope; its end revokes.
cat >/etc/systemd/system/agent-loop.service <<'UNIT'
[Unit]
Description=Agent that retries a connect every 0.2 s
[Service]
ExecStart=/opt/agent/probe tcp-every 0.2 192.0.2.10:443
UNIT
systemctl daemon-reload
systemctl start agent-loop.service
# verdicts prints the loop's verdicts after attempt $1, one per line.
verdicts() {
	journalctl -b -u agent-loop.service -o cat --no-pager |
		awk -v from="$1" '$1 ~ /^[0-9]+$/ && $1 > from { $1 = ""; sub(/^ /, ""); print }'
}
last() { journalctl -b -u agent-loop.service -o cat --no-pager | awk '$1 ~ /^[0-9]+$/ { n = $1 } END { print n + 0 }'; }
sleep 2
before=$(verdicts 0 | sort | uniq -c | sed 's/^ *//' | tr '\n' ';')
if [ -n "$before" ] && ! verdicts 0 | grep -qv '^EPERM'; then
	pass refused-before-task "$before"
else
	fail refused-before-task "[$before]"
fi
wl=$(systemctl show -p ControlGroup --value agent-loop.service)
if id=$(bridle task start --workload "$wl" --intent "systemd guest check" --label repo=bridle --ttl 10m 2>/tmp/start.err); then
	n=$(last)
	granted=
	for _ in 1 2 3 4 5 6 7 8 9 10; do
		sleep 0.5
		# Allowed: the connect got past the kernel's check (nothing listens).
		if verdicts "$((n + 1))" | grep -q -e '^ok' -e 'ECONNREFUSED'; then granted=yes; break; fi
	done
	if [ -n "$granted" ]; then
		pass task-grants "workload=$wl task=$id: $(verdicts "$n" | sort | uniq -c | sed 's/^ *//' | tr '\n' ';')"
	else
		fail task-grants "workload=$wl task=$id: $(verdicts "$n" | sort | uniq -c | sed 's/^ *//' | tr '\n' ';')"
		show bridle status
	fi
	if bridle task end "$id" >/tmp/end.out 2>&1; then
		n=$(last)
		sleep 2
		# One attempt may have been under way during the end.
		after=$(verdicts "$((n + 1))")
		if [ -n "$after" ] && ! echo "$after" | grep -qv '^EPERM'; then
			pass task-end-revokes "$(echo "$after" | sort | uniq -c | sed 's/^ *//' | tr '\n' ';')"
		else
			fail task-end-revokes "[$(echo "$after" | sort | uniq -c | sed 's/^ *//' | tr '\n' ';')]"
		fi
	else
		fail task-end-revokes "bridle task end: $(cat /tmp/end.out)"
	fi
else
	fail task-grants "bridle task start: $(cat /tmp/start.err)"
	show bridle status
fi

# An agent unit without the drop-in is named in bridle status; the one
# with it (agent-loop, systemd 257: PrivatePIDs too) is not.
cat >/etc/systemd/system/plain-agent.service <<'UNIT'
[Unit]
Description=Agent unit in the slice without the hardening drop-in
[Service]
Slice=bridle-agents.slice
ExecStart=/opt/agent/probe sleep 600
UNIT
systemctl daemon-reload
systemctl start plain-agent.service
# The check runs every hardening_check_interval (30 s in the example).
reported=
for _ in $(seq 1 20); do
	if bridle status 2>&1 | grep -q '^HARDENING: .*/plain-agent.service'; then reported=yes; break; fi
	sleep 3
done
hard=$(bridle status 2>&1 | grep '^HARDENING:' | tr '\n' ';')
if [ -n "$reported" ] && ! echo "$hard" | grep -q agent-loop.service; then
	pass unhardened-reported "$hard"
else
	fail unhardened-reported "[$hard]"
fi

# bridled logs to stderr, which the unit sends to the journal.
lines=$(journalctl -b -u bridled.service -o cat --no-pager | wc -l)
if [ "$lines" -gt 0 ]; then
	pass journal "$lines lines of bridled in the journal"
else
	fail journal "journalctl -u bridled shows nothing"
fi

show bridle status
say DONE
# The unit's SuccessAction does not end the guest here (its poweroff never
# comes; seen with systemd 257 in an initramfs root), so end it directly:
# -no-reboot turns the reboot into qemu's exit.
systemctl reboot --force --force
sleep 10
echo b >/proc/sysrq-trigger
