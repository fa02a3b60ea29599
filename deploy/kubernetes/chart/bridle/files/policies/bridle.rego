# The node's policy: which envelope each agent gets for a task.
#
# Bridle asks this package three questions when a task starts or a
# workload appears (see docs/POLICY.md for the full contract):
#   data.bridle.deny      - reasons to refuse the task (none: go on)
#   data.bridle.envelope  - what the task may do: egress, exec, ttl
#   data.bridle.baseline  - what a workload may do while it has no task
#   data.bridle.approvable - what a task may be granted for a while if a
#                           person approves (step-up approvals)
#
# This file only routes: the envelopes themselves live in one package per
# kind of agent below data.bridle.agents (coding.rego, research.rego), so
# that adding a kind of agent means adding a file, not editing this one.
package bridle

import data.bridle.agents

# Which kind of agent a workload is comes from its SPIFFE ID, which SPIRE
# or the daemon's static mapping vouches for. Workload and task labels are
# written by whoever launched the agent, so they choose nothing here.
# The trust domain example.org is a placeholder for your own.
kinds := {
	"spiffe://example.org/agent/coding/": "coding",
	"spiffe://example.org/agent/research/": "research",
	# Team A's own coding agents, whose tasks team A's orchestrator starts
	# (orchestrators.rego).
	"spiffe://example.org/agent/team-a/coding/": "coding",
}

kind_of(id) := kind if {
	some prefix, kind in kinds
	startswith(id, prefix)
}

kind := kind_of(input.identity)

# Undefined when the identity matches no kind, and then the task is
# refused below, so an unknown agent never gets anything.
envelope := agents[kind].envelope

# What a person may grant a task of this kind when it hits the edge of its
# envelope. A kind that defines none leaves it undefined: its refusals are
# plain refusals and ask nobody.
approvable := agents[kind].approvable

# A workload without a task gets nothing: no connection and no program
# beyond the one it is already running. Leaving baseline undefined would
# mean the same; writing it out says it was meant.
baseline := {"egress": [], "exec": []}

deny contains msg if {
	not kind
	msg := sprintf("no kind of agent is defined for identity %q", [input.identity])
}

deny contains "a task needs an intent that says what it is for" if {
	trim_space(input.task.intent) == ""
}

# A sub-agent is the same kind of agent as the one that started it, so an
# agent cannot reach a broader envelope by spawning a different kind.
deny contains msg if {
	input.parent
	not kind_of(input.parent.identity) == kind
	msg := sprintf("%q may not start a task for %q: a sub-agent must be the same kind of agent as its parent", [input.parent.identity, input.identity])
}

# Each kind of agent may add its own reasons.
deny contains msg if {
	some msg in agents[kind].deny
}
