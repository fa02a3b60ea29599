package config

import (
	"strings"
	"testing"
	"time"
)

// The approvals page is on loopback unless said otherwise, and off with "".
func TestApprovalsConfig(t *testing.T) {
	const base = "roots: [/agents]\npolicy_dir: /etc/bridle/policy\nnode_name: n\n"
	c, err := Parse([]byte(base), "t")
	if err != nil {
		t.Fatal(err)
	}
	a := c.Approvals
	if a.WebAddr() != "127.0.0.1:0" || a.RequestTTL != 10*time.Minute || a.Cooldown != 5*time.Minute ||
		a.Webhook.Timeout != 5*time.Second || *a.Webhook.Retries != 5 {
		t.Fatalf("defaults: %+v web %q", a, a.WebAddr())
	}
	c, err = Parse([]byte(base+"approvals: {web_listen: \"\", request_ttl: 2m}\n"), "t")
	if err != nil || c.Approvals.WebAddr() != "" || c.Approvals.RequestTTL != 2*time.Minute {
		t.Fatalf("web_listen \"\": %+v %v", c, err)
	}
	for _, bad := range []string{"approvals: {web_listen: \"localhost\"}", "approvals: {webhook: {url: \"ftp://x\"}}", "approvals: {cooldown: -1m}"} {
		if _, err := Parse([]byte(base+bad+"\n"), "t"); err == nil || !strings.Contains(err.Error(), "approvals") {
			t.Fatalf("%s: %v", bad, err)
		}
	}
}
