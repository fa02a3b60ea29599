package bridle.agents.coding_test

import data.bridle.agents.coding

task(labels) := {
	"identity": "spiffe://example.org/agent/coding/alice",
	"task": {"id": "t1", "intent": "fix the build", "labels": labels, "ttl": 0},
}

test_git_over_https_registry_and_llm_api if {
	env := coding.envelope with input as task({"repo": "bridle"})
	{"protocol": "tcp", "cidr": "192.0.2.10", "ports": [443]} in env.egress
	{"protocol": "tcp", "cidr": "198.51.100.0/25", "ports": [443]} in env.egress
	{"protocol": "tcp", "cidr": "203.0.113.0/24", "ports": [443]} in env.egress
	{"protocol": "tcp", "cidr": "2001:db8:1::/48", "ports": [443]} in env.egress
}

test_ssh_and_push_only_for_push_tasks if {
	read := coding.envelope with input as task({"repo": "bridle"})
	push := coding.envelope with input as task({"repo": "bridle", "git": "push"})
	ssh := {"protocol": "tcp", "cidr": "192.0.2.10", "ports": [22]}
	not ssh in read.egress
	ssh in push.egress
	not {"path": "/usr/bin/ssh"} in read.exec
	{"path": "/usr/bin/ssh"} in push.exec
}

test_git_and_toolchain_may_run if {
	env := coding.envelope with input as task({"repo": "bridle"})
	{"path": "/usr/bin/git"} in env.exec
	{"dir": "/usr/local/go/bin"} in env.exec
	{"dir": "/usr/local/go/pkg/tool"} in env.exec
}

test_only_the_resolver_for_dns if {
	env := coding.envelope with input as task({"repo": "bridle"})
	dns := [e | some e in env.egress; 53 in e.ports]
	dns == [{"protocol": "any", "cidr": "192.0.2.53", "ports": [53]}]
}

test_at_most_two_hours if {
	coding.envelope.ttl == "2h" with input as task({"repo": "bridle"})
}

test_repository_label_is_required if {
	"a coding task must name its repository in the label repo" in coding.deny with input as task({})
	count(coding.deny) == 0 with input as task({"repo": "bridle"})
}

test_push_may_be_asked_for if {
	a := coding.approvable with input as task({"repo": "bridle"})
	{"protocol": "tcp", "cidr": "192.0.2.10", "ports": [22], "max_ttl": "30m"} in a.egress
	{"path": "/usr/bin/ssh", "max_ttl": "30m"} in a.exec
}

test_github_by_name_needs_a_named_approver if {
	a := coding.approvable with input as task({"repo": "bridle"})
	some e in a.egress
	e.host == "*.github.com"
	e.approvers.uids == [1000]
}

test_nothing_approvable_is_already_allowed if {
	env := coding.envelope with input as task({"repo": "bridle"})
	a := coding.approvable with input as task({"repo": "bridle"})
	every e in a.egress {
		not e in env.egress
	}
}
