package bridle.agents.research_test

import data.bridle.agents.research

task(labels) := {
	"identity": "spiffe://example.org/agent/research/bob",
	"task": {"id": "t1", "intent": "survey eBPF papers", "labels": labels, "ttl": 0},
}

test_https_only if {
	env := research.envelope with input as task({})
	every e in env.egress {
		e.ports in {[443], [53]}
	}
	{"protocol": "tcp", "cidr": "198.51.100.128/25", "ports": [443]} in env.egress
	{"protocol": "tcp", "cidr": "2001:db8:2::/48", "ports": [443]} in env.egress
}

test_runs_nothing if {
	env := research.envelope with input as task({})
	env.exec == []
	every e in env.egress {
		not e.unix # no local sockets either
	}
}

test_thirty_minutes if {
	research.envelope.ttl == 1800 with input as task({})
}

test_writing_is_refused if {
	"research agents are read-only: a task that writes needs a coding agent" in research.deny with input as task({"access": "write"})
	count(research.deny) == 0 with input as task({"access": "read"})
}
