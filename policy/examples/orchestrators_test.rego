package bridle_test

import data.bridle

team_a := "spiffe://example.org/orchestrator/team-a"

team_a_coder := "spiffe://example.org/agent/team-a/coding/alice"

by(requester, auth, id) := {
	"identity": id,
	"workload": {"cgroup": "/agents/w1", "labels": {}},
	"task": {"id": "t1", "intent": "fix the build", "labels": {"repo": "bridle"}, "ttl": 0},
	"requester": {"uid": 1000, "gid": 1000, "identity": requester, "auth": auth},
}

test_orchestrator_starts_coding_tasks_for_its_agents if {
	req := by(team_a, "jwt-svid", team_a_coder)
	count(bridle.deny) == 0 with input as req
	bridle.envelope == data.bridle.agents.coding.envelope with input as req
}

test_orchestrator_over_mtls_likewise if {
	count(bridle.deny) == 0 with input as by(team_a, "x509-svid", team_a_coder)
}

test_orchestrator_refused_for_other_teams_agents if {
	other := "spiffe://example.org/agent/coding/bob"
	msg := sprintf("orchestrator %q may start tasks only for agents under spiffe://example.org/agent/team-a/, not for %q", [team_a, other])
	msg in bridle.deny with input as by(team_a, "jwt-svid", other)
}

test_orchestrator_refused_other_kinds if {
	# Under team-a/, but not a coding agent.
	id := "spiffe://example.org/agent/team-a/research/carol"
	some msg in bridle.deny with input as by(team_a, "jwt-svid", id)
	startswith(msg, sprintf("orchestrator %q may start only", [team_a]))
}

test_unknown_svid_caller_refused if {
	ci := "spiffe://example.org/orchestrator/ci"
	sprintf("%q is not an orchestrator this policy knows", [ci]) in bridle.deny with input as by(ci, "x509-svid", team_a_coder)
}

test_peercred_admin_not_restricted if {
	count(bridle.deny) == 0 with input as by("", "peercred", "spiffe://example.org/agent/coding/bob")
}
