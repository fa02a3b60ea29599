# Orchestrators: programs that start tasks through bridled's API and prove
# who they are with an SVID (a JWT-SVID on the socket, or an X.509-SVID
# over mutual TLS), so that input.requester.identity is their verified
# SPIFFE ID. bridled's config decides who may call at all
# (admins.identities); this file decides which tasks each may start, and
# for which agents.
#
# Callers known by their uid alone (requester.identity "", a local admin)
# are not restricted here.
package bridle

# Each orchestrator may start tasks of the kinds listed, only for agents
# whose SPIFFE ID lies under its prefix.
orchestrators := {"spiffe://example.org/orchestrator/team-a": {
	"kinds": {"coding"},
	"agents": "spiffe://example.org/agent/team-a/",
}}

requester := input.requester.identity

# The kind of the task's agent (bridle.rego), "" for none: so that the
# rule below also refuses an agent of no kind, rather than not applying.
default agent_kind := ""

agent_kind := kind

# An SVID this policy does not know starts nothing, whatever the node's
# config admits it to.
deny contains msg if {
	requester != ""
	not orchestrators[requester]
	msg := sprintf("%q is not an orchestrator this policy knows", [requester])
}

deny contains msg if {
	some o in [orchestrators[requester]]
	not startswith(input.identity, o.agents)
	msg := sprintf("orchestrator %q may start tasks only for agents under %s, not for %q", [requester, o.agents, input.identity])
}

deny contains msg if {
	some o in [orchestrators[requester]]
	not agent_kind in o.kinds
	msg := sprintf("orchestrator %q may start only %v tasks, not one for %q", [requester, sort(o.kinds), input.identity])
}
