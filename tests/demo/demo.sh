#!/usr/bin/env bash
# The `make demo` example: an "agent" (a bash script) whose task allows one
# loopback port and one program. It tries a second port and a second program;
# the kernel refuses both, and Bridle says which flag would have allowed them.
set -u
bin=${1:-bin}
user=${SUDO_USER:-nobody}
[ "$user" = root ] && user=nobody

"$bin/demo-listen" 127.0.0.1:8181 127.0.0.1:8282 &
listener=$!
trap 'kill $listener 2>/dev/null' EXIT
sleep 0.2

set -x
"$bin/bridle" run --user "$user" --intent "demo: fetch from the local service" \
	--allow-connect tcp:127.0.0.1:8181 --allow-exec /usr/bin/true \
	-- /bin/bash -c '
exec 3<>/dev/tcp/127.0.0.1/8181 && echo "agent: connect 127.0.0.1:8181 -> allowed"
exec 4<>/dev/tcp/127.0.0.1/8282 2>/dev/null || echo "agent: connect 127.0.0.1:8282 -> refused"
/usr/bin/true && echo "agent: exec /usr/bin/true -> allowed"
/usr/bin/id 2>/dev/null || echo "agent: exec /usr/bin/id -> refused"
exit 0'
