package bridle_test

import data.bridle

coding_id := "spiffe://example.org/agent/coding/alice"

research_id := "spiffe://example.org/agent/research/bob"

task(id, intent, labels) := {
	"identity": id,
	"workload": {"cgroup": "/agents/w1", "labels": {}},
	"task": {"id": "t1", "intent": intent, "labels": labels, "ttl": 0},
	"requester": {"uid": 1000, "gid": 1000, "identity": "", "auth": "peercred"},
}

test_coding_identity_gets_the_coding_envelope if {
	req := task(coding_id, "fix the flaky test", {"repo": "bridle"})
	count(bridle.deny) == 0 with input as req
	bridle.envelope == data.bridle.agents.coding.envelope with input as req
}

test_research_identity_gets_the_research_envelope if {
	req := task(research_id, "summarise papers on eBPF", {})
	count(bridle.deny) == 0 with input as req
	bridle.envelope == data.bridle.agents.research.envelope with input as req
}

test_unknown_identity_is_refused_and_gets_nothing if {
	req := task("spiffe://example.org/agent/other/x", "anything", {})
	"no kind of agent is defined for identity \"spiffe://example.org/agent/other/x\"" in bridle.deny with input as req
	not bridle.envelope with input as req
}

test_identity_must_match_a_whole_prefix if {
	req := task("spiffe://example.org/agent/codingX", "fix", {"repo": "r"})
	not bridle.kind with input as req
}

test_blank_intent_is_refused if {
	"a task needs an intent that says what it is for" in bridle.deny with input as task(research_id, "  ", {})
}

test_sub_agent_of_the_same_kind_is_allowed if {
	req := object.union(task(research_id, "read one paper", {}), {"parent": {
		"id": "t0", "identity": "spiffe://example.org/agent/research/lead",
		"intent": "survey", "labels": {},
	}})
	count(bridle.deny) == 0 with input as req
}

test_sub_agent_of_another_kind_is_refused if {
	req := object.union(task(coding_id, "write the code", {"repo": "r"}), {"parent": {
		"id": "t0", "identity": research_id,
		"intent": "survey", "labels": {},
	}})
	some msg in bridle.deny with input as req
	contains(msg, "same kind of agent as its parent")
}

test_baseline_allows_nothing if {
	bridle.baseline == {"egress": [], "exec": []} with input as {"identity": coding_id}
}

test_approvable_routes_by_kind if {
	coding := task(coding_id, "fix the flaky test", {"repo": "bridle"})
	bridle.approvable == data.bridle.agents.coding.approvable with input as coding

	# Research agents define nothing that may be asked for: their
	# refusals ask nobody.
	research := task(research_id, "summarise papers on eBPF", {})
	not bridle.approvable with input as research
}
