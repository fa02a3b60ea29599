package config

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const callersBase = "roots: [/a]\npolicy_dir: /p\nnode_name: n\n"

func TestCallersConfig(t *testing.T) {
	c, err := Parse([]byte(callersBase+`
spiffe: {workload_api: "unix:///run/spire/agent/public/api.sock"}
api:
  jwt_audiences: ["spiffe://example.org/bridled"]
  tcp_listen: "127.0.0.1:8443"
  tcp_authorized: ["spiffe://example.org/orchestrator/ci", "spiffe://partner.org"]
admins: {identities: ["spiffe://example.org/orchestrator/team-a"]}
readers: {identities: ["spiffe://example.org"]}
`), "t")
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString
	for _, tc := range []struct {
		id            string
		admin, reader bool
	}{
		{"spiffe://example.org/orchestrator/team-a", true, true},
		{"spiffe://example.org/orchestrator/team-a/x", false, true},
		{"spiffe://example.org/anything", false, true},
		{"spiffe://other.org/orchestrator/team-a", false, false},
	} {
		if a, r := c.IsAdminIdentity(id(tc.id)), c.IsReaderIdentity(id(tc.id)); a != tc.admin || r != tc.reader {
			t.Errorf("%s: admin %v reader %v, want %v %v", tc.id, a, r, tc.admin, tc.reader)
		}
	}
	if !MatchID(c.API.TCPAuthorized, id("spiffe://partner.org/any/one")) || MatchID(c.API.TCPAuthorized, id("spiffe://example.org/orchestrator/ci2")) {
		t.Error("tcp_authorized: a trust domain admits its IDs, an exact ID only itself")
	}
}

func TestCallersConfigRefused(t *testing.T) {
	const src = "spiffe: {workload_api: \"unix:///run/api.sock\"}\n"
	for _, tc := range []struct{ doc, want string }{
		{"spiffe: {workload_api: /run/api.sock}\n", "spiffe.workload_api"},
		{"spiffe: {workload_api: \"unix://run/api.sock\"}\n", "spiffe.workload_api"},
		{"spiffe: {workload_api: \"tcp://localhost:1\"}\n", "spiffe.workload_api"},
		{"api: {jwt_audiences: [x]}\n", "needs spiffe.workload_api"},
		{"api: {tcp_listen: \"127.0.0.1:8443\", tcp_authorized: [\"spiffe://example.org\"]}\n", "needs spiffe.workload_api"},
		{src + "api: {tcp_listen: \"127.0.0.1:8443\"}\n", "admit no caller"},
		{src + "api: {tcp_listen: \"localhost:8443\", tcp_authorized: [\"spiffe://example.org\"]}\n", "api.tcp_listen"},
		{src + "api: {tcp_authorized: [\"spiffe://example.org\"]}\n", "without api.tcp_listen"},
		{src + "api: {tcp_listen: \"127.0.0.1:8443\", tcp_authorized: [\"example.org/x\"]}\n", "api.tcp_authorized[0]"},
		{src + "api: {jwt_audiences: [\"\"]}\n", "empty audience"},
		{src + "api: {jwt_audiences: [a]}\nadmins: {identities: [\"spiffe://Example.org/x\"]}\n", "admins.identities[0]"},
		{src + "api: {jwt_audiences: [a]}\nreaders: {identities: [\"spiffe://example.org/a/../b\"]}\n", "readers.identities[0]"},
		{"admins: {identities: [\"spiffe://example.org/x\"]}\n", "no caller can prove"},
		{src + "api: {jwt_audience: [a]}\n", "jwt_audience"},
	} {
		_, err := Parse([]byte(callersBase+tc.doc), "t")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want one saying %q", tc.doc, err, tc.want)
		}
	}
	for _, ok := range []string{
		"spiffe: {workload_api: \"tcp://127.0.0.1:8081\"}\n",
		src + "api: {jwt_audiences: [bridled]}\nadmins: {identities: [\"spiffe://example.org/x\"]}\n",
	} {
		if _, err := Parse([]byte(callersBase+ok), "t"); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
}
