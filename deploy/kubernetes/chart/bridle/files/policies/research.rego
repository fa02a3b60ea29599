# A read-only research agent: asks the LLM API and reads the web mirror of
# papers and documentation, over HTTPS and nothing else. It runs no program
# besides the one it was started as, and reaches no local socket.
#
# Addresses are documentation ranges (RFC 5737 and RFC 3849).
package bridle.agents.research

llm_api := ["203.0.113.0/24", "2001:db8:1::/48"]

# The mirror the research agent reads from.
mirror := ["198.51.100.128/25", "2001:db8:2::/48"]

resolver := "192.0.2.53"

egress contains {"protocol": "tcp", "cidr": cidr, "ports": [443]} if {
	some cidr in array.concat(llm_api, mirror)
}

egress contains {"protocol": "any", "cidr": resolver, "ports": [53]}

# Thirty minutes, written in seconds (a duration string works too).
envelope := {"egress": egress, "exec": [], "ttl": 1800}

deny contains "research agents are read-only: a task that writes needs a coding agent" if {
	input.task.labels.access == "write"
}
