# A coding agent: works on a repository from the team's git host, fetches
# dependencies from the package registry, asks the LLM API for help, and
# runs git and the Go toolchain.
#
# All addresses are documentation ranges (RFC 5737 and RFC 3849); put your
# own in their place. Bridle allows addresses, not names: list the
# addresses your services answer on.
package bridle.agents.coding

git_host := "192.0.2.10"

registry := "198.51.100.0/25"

llm_api := ["203.0.113.0/24", "2001:db8:1::/48"]

# The resolver the node uses. DNS is a way out too (data can ride in the
# names looked up), so name one resolver rather than allowing port 53
# everywhere.
resolver := "192.0.2.53"

# Clone and fetch over HTTPS, always.
egress contains {"protocol": "tcp", "cidr": git_host, "ports": [443]}

# Push over SSH only when the task says it pushes. The label is set by
# whoever starts the task, who is trusted to start it at all.
egress contains {"protocol": "tcp", "cidr": git_host, "ports": [22]} if {
	input.task.labels.git == "push"
}

egress contains {"protocol": "tcp", "cidr": registry, "ports": [443]}

egress contains {"protocol": "tcp", "cidr": cidr, "ports": [443]} if {
	some cidr in llm_api
}

egress contains {"protocol": "any", "cidr": resolver, "ports": [53]}

exec contains {"path": "/usr/bin/git"}

# git runs its transports (git-remote-https, ...) from here.
exec contains {"dir": "/usr/lib/git-core"}

# go and gofmt, and the compiler, linker and vet that `go build` runs.
exec contains {"dir": "/usr/local/go/bin"}

exec contains {"dir": "/usr/local/go/pkg/tool"}

exec contains {"path": "/usr/bin/ssh"} if {
	input.task.labels.git == "push"
}

# A coding task lives at most two hours; a task asking for less gets less.
envelope := {"egress": egress, "exec": exec, "ttl": "2h"}

# What a coding task may ask for beyond its envelope: a push over SSH it
# was not started for, packages from the public registry mirror, and
# GitHub by name. Each is a question to a person, answered for a while:
# max_ttl caps the answer, and approvers (when given) say who may give it;
# without them, bridled's admins do.
approvable := {
	"egress": [
		{"protocol": "tcp", "cidr": git_host, "ports": [22], "max_ttl": "30m"},
		{"protocol": "tcp", "cidr": "198.51.100.128/25", "ports": [443], "max_ttl": "1h"},
		{"protocol": "tcp", "host": "*.github.com", "ports": [443], "max_ttl": "30m", "approvers": {"uids": [1000], "identities": ["spiffe://example.org/human"]}},
	],
	"exec": [{"path": "/usr/bin/ssh", "max_ttl": "30m"}],
}

deny contains "a coding task must name its repository in the label repo" if {
	not input.task.labels.repo
}
