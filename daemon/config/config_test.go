package config

import (
	"strings"
	"testing"

	"github.com/bridle-sh/bridle/daemon/identity"
)

func staticID(c *Config, cgroup string) string {
	return identity.NewStatic(c.StaticIdentity(), "/sys/fs/cgroup").Known(cgroup).ID
}

func TestParseDefaultsAndStrictness(t *testing.T) {
	c, err := Parse([]byte("roots: [/a.slice/]\npolicy_dir: /etc/bridle/policy\nnode_name: n1\n"), "t")
	if err != nil {
		t.Fatal(err)
	}
	if c.Roots[0] != "/a.slice" || c.Socket != DefaultSocket || c.PinDir != DefaultPinDir || c.StateDir != DefaultStateDir {
		t.Fatalf("defaults: %+v", c)
	}
	if c.HardeningCheckInterval != DefaultHardeningCheckInterval {
		t.Fatalf("hardening_check_interval default: %v", c.HardeningCheckInterval)
	}
	if _, err := Parse([]byte("roots: [/a]\npolicy_dir: /p\nhardening_check_interval: 10ms\n"), "t"); err == nil {
		t.Fatal("a hardening check every 10ms accepted")
	}
	if got := staticID(c, "/a.slice/w1"); got != "spiffe://n1/workload/a.slice/w1" {
		t.Fatalf("default identity %q", got)
	}
	_, err = Parse([]byte("roots: [/a]\npolicy_dir: /p\nsockett: /x\n"), "t")
	if err == nil || !strings.Contains(err.Error(), "sockett") {
		t.Fatalf("unknown field: %v", err)
	}
	for _, bad := range []string{"", "policy_dir: /p\n", "roots: [a]\npolicy_dir: /p\n", "roots: [/]\npolicy_dir: /p\n", "roots: [/a/../b]\npolicy_dir: /p\n"} {
		if _, err := Parse([]byte(bad), "t"); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestIdentityMappingAndAdmins(t *testing.T) {
	c, err := Parse([]byte("roots: [/a]\npolicy_dir: /p\nnode_name: n\nidentities:\n  /a: spiffe://example.org/agent/x\n  /a/coding: spiffe://example.org/agent/coding/y\nadmins: {uids: [1000], gids: [50]}\n"), "t")
	if err != nil {
		t.Fatal(err)
	}
	if got := staticID(c, "/a/coding/w"); got != "spiffe://example.org/agent/coding/y" {
		t.Fatalf("longest match: %q", got)
	}
	if got := staticID(c, "/a/other"); got != "spiffe://example.org/agent/x" {
		t.Fatalf("prefix: %q", got)
	}
	if !c.IsAdmin(0, nil) || !c.IsAdmin(1000, nil) || !c.IsAdmin(7, []uint32{50}) || c.IsAdmin(7, []uint32{8}) {
		t.Fatal("admins")
	}
	if _, ok := c.RootOf("/ab"); ok {
		t.Fatal("/ab is not under /a")
	}
}

// The shipped example configuration parses as it is.
func TestExampleConfigParses(t *testing.T) {
	c, err := Load("../../deploy/systemd/bridled.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.AuditRotate.MaxSizeMB != 100 || c.MetricsListen == "" || c.PolicyDir == "" {
		t.Fatalf("example config: %+v", c)
	}
}

func TestPolicySourceAndRotation(t *testing.T) {
	c, err := Parse([]byte("roots: [/a]\npolicy_bundle: {url: https://p.example, resource: b.tar.gz, ca_cert_file: /etc/bridle/ca.pem, poll_min: 5s, poll_max: 10s}\n"), "t")
	if err != nil {
		t.Fatal(err)
	}
	if c.PolicyBundle.PollMin.Seconds() != 5 || c.AuditRotate.MaxSizeMB != 100 || c.AuditRotate.MaxFiles != 10 {
		t.Fatalf("bundle config and rotation defaults: %+v %+v", c.PolicyBundle, c.AuditRotate)
	}
	for bad, want := range map[string]string{
		"roots: [/a]\n": "policy_dir",
		"roots: [/a]\npolicy_dir: /p\npolicy_bundle: {url: https://x, resource: r}\n":  "not both",
		"roots: [/a]\npolicy_bundle: {url: https://x}\n":                               "resource",
		"roots: [/a]\npolicy_dir: /p\naudit_rotate: {max_files: -1}\n":                 "negative",
		"roots: [/a]\npolicy_bundle: {url: https://x, resource: r, verify: {id: k}}\n": "key_file",
	} {
		if _, err := Parse([]byte(bad), "t"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error about %s", bad, err, want)
		}
	}
}

// A bundle URL a workload could serve is refused at load, with the reason:
// a workload listening on the bundle's loopback port served its own policy
// and received the bearer token.
func TestEscapeBundleSquatConfig(t *testing.T) {
	const base = "roots: [/a]\npolicy_bundle: "
	for bad, want := range map[string]string{
		"{url: http://127.0.0.1:8181, resource: b}":                                                "without verify",
		"{url: http://localhost:8181, resource: b}":                                                "without verify",
		"{url: http://127.0.0.1:8181, resource: b, token_file: /t, verify: {id: k, key_file: /k}}": "bearer token",
		"{url: https://p.example, resource: b}":                                                    "neither verify nor ca_cert_file",
		"{url: https://p.example, resource: b, token_file: /t}":                                    "neither verify nor ca_cert_file",
		"{url: ftp://p.example, resource: b, verify: {id: k, key_file: /k}}":                       "want http(s)",
		"{url: http://127.0.0.1:8181, resource: b, token_file: /t, ca_cert_file: /ca.pem}":         "bearer token",
	} {
		if _, err := Parse([]byte(base+bad+"\n"), "t"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want a refusal about %q", bad, err, want)
		}
	}
	for _, good := range []string{
		"{url: http://127.0.0.1:8181, resource: b, verify: {id: k, key_file: /k}}",
		"{url: https://p.example, resource: b, ca_cert_file: /ca.pem, token_file: /t}",
		"{url: https://p.example, resource: b, verify: {id: k, key_file: /k}, token_file: /t}",
	} {
		if _, err := Parse([]byte(base+good+"\n"), "t"); err != nil {
			t.Errorf("%s: %v", good, err)
		}
	}
}

func TestReadersAndLimits(t *testing.T) {
	c, err := Parse([]byte("roots: [/a]\npolicy_dir: /p\nadmins: {uids: [1000]}\nreaders: {gids: [60]}\n"), "t")
	if err != nil {
		t.Fatal(err)
	}
	if !c.IsReader(1000, nil) || !c.IsReader(7, []uint32{60}) || c.IsReader(7, []uint32{8}) || c.IsAdmin(7, []uint32{60}) {
		t.Fatal("readers")
	}
	l := c.APILimits
	if l.Connections != DefaultAPIConnections || l.ConnectionsPerUID != DefaultAPIConnectionsPerUID ||
		l.AdminConnections != DefaultAdminConnections || l.MetricsConnections != DefaultMetricsConnections {
		t.Fatalf("limit defaults: %+v", l)
	}
	for _, bad := range []string{"{connections: -1}", "{connections: 4, connections_per_uid: 5}"} {
		if _, err := Parse([]byte("roots: [/a]\npolicy_dir: /p\napi_limits: "+bad+"\n"), "t"); err == nil {
			t.Errorf("api_limits %s accepted", bad)
		}
	}
}

func TestDNSSettings(t *testing.T) {
	good := "roots: [/a]\npolicy_dir: /p\ndns:\n  upstream: 10.0.0.2\n  listen4: 127.0.0.1:0\n  listen6: \"[::1]:5300\"\n  ttl_floor: 5s\n  wildcard_names: 10\n"
	c, err := Parse([]byte(good), "bridled.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.DNS.Upstream != "10.0.0.2" || c.DNS.TTLFloor.String() != "5s" || c.DNS.WildcardNames != 10 {
		t.Errorf("dns settings %+v", c.DNS)
	}
	for _, bad := range []string{
		"dns:\n  upstream: resolver.example\n",
		"dns:\n  listen4: \"[::1]:53\"\n",
		"dns:\n  listen6: 127.0.0.1:53\n",
		"dns:\n  ttl_floor: -1s\n",
		"dns:\n  wildcard_rate: -1\n",
		"dns:\n  upstrem: 10.0.0.2\n",
		"dns:\n  listen4: 0.0.0.0:53\n",
		"dns:\n  listen6: \"[::]:53\"\n",
	} {
		if _, err := Parse([]byte("roots: [/a]\npolicy_dir: /p\n"+bad), "bridled.yaml"); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// dns.interface is for pods: the addresses put on it must be ones their
// network namespaces reach, and the link must exist.
func TestDNSInterface(t *testing.T) {
	base := "roots: [/a]\npolicy_dir: /p\n"
	good := base + "dns:\n  interface: lo\n  listen4: 169.254.20.10:53\n  listen6: \"[fd00:b41d::53]:53\"\n"
	c, err := Parse([]byte(good), "bridled.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.DNS.Interface != "lo" {
		t.Errorf("dns settings %+v", c.DNS)
	}
	for bad, want := range map[string]string{
		"dns:\n  interface: lo\n":                                                            "set dns.listen4",
		"dns:\n  interface: lo\n  listen4: 127.0.0.1:53\n":                                   "loopback",
		"dns:\n  interface: lo\n  listen4: 169.254.20.10:53\n  listen6: \"[::1]:53\"\n":      "loopback",
		"dns:\n  interface: lo\n  listen4: 169.254.20.10:53\n  listen6: \"[fe80::53]:53\"\n": "link-local",
		"dns:\n  interface: nosuch-if0\n  listen4: 169.254.20.10:53\n":                       "nosuch-if0",
	} {
		_, err := Parse([]byte(base+bad), "bridled.yaml")
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error naming %q", bad, err, want)
		}
	}
}

func TestIdentityConfig(t *testing.T) {
	base := "roots: [/a]\npolicy_dir: /p\nnode_name: n\n"
	c, err := Parse([]byte(base+"identity:\n  static:\n    cgroups: {\"/a/coding-*\": \"spiffe://example.org/agent/coding/{cgroup}\"}\n    units: {\"review-*.service\": \"spiffe://example.org/review/{unit}\"}\n    uids: {1000: \"spiffe://example.org/uid/{uid}\"}\n"), "t")
	if err != nil {
		t.Fatal(err)
	}
	if c.Identity.Source != "static" {
		t.Fatalf("default source %q", c.Identity.Source)
	}
	if got := staticID(c, "/a/coding-1/x"); got != "spiffe://example.org/agent/coding/a/coding-1/x" {
		t.Fatalf("cgroup pattern: %q", got)
	}
	if got := staticID(c, "/a/review-7.service"); got != "spiffe://example.org/review/review-7.service" {
		t.Fatalf("unit pattern: %q", got)
	}
	c, err = Parse([]byte(base+"identity:\n  source: spire\n  spire: {admin_socket: /run/spire/admin.sock}\n"), "t")
	if err != nil {
		t.Fatal(err)
	}
	if s := c.Identity.SPIRE; s.Attest != "selectors" || s.Hold != DefaultSPIREHold || s.Timeout != DefaultSPIRETimeout {
		t.Fatalf("spire defaults: %+v", s)
	}
	for bad, want := range map[string]string{
		"identity: {source: spire}\n":                                                                 "admin_socket",
		"identity: {source: vault}\n":                                                                 "want static or spire",
		"identity: {spire: {admin_socket: /x}}\n":                                                     "source: spire",
		"identity: {source: spire, spire: {admin_socket: x}}\n":                                       "absolute",
		"identity: {source: spire, spire: {admin_socket: /x, attest: magic}}\n":                       "selectors or pid",
		"identity: {static: {cgroups: {\"/a\": \"spiffe://example.org/{team}\"}}}\n":                  "unknown placeholder",
		"identity: {static: {units: {\"a/b\": \"spiffe://example.org/x\"}}}\n":                        "unit name pattern",
		"identity: {static: {uids: {7: \"http://x\"}}}\n":                                             "uids[7]",
		"identities: {/a: spiffe://e.org/x}\nidentity: {static: {cgroups: {/a: spiffe://e.org/y}}}\n": "also in",
	} {
		_, err := Parse([]byte(base+bad), "t")
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err %v, want %q", bad, err, want)
		}
	}
}

func TestApprovalsSettings(t *testing.T) {
	c, err := Parse([]byte("roots: [/a]\npolicy_dir: /p\n"), "bridled.yaml")
	if err != nil {
		t.Fatal(err)
	}
	a := c.Approvals
	if a.RequestTTL != DefaultApprovalRequestTTL || a.Cooldown != DefaultApprovalCooldown || a.WebListen == nil ||
		*a.WebListen != DefaultApprovalWebListen || a.Webhook.Timeout != DefaultWebhookTimeout || *a.Webhook.Retries != DefaultWebhookRetries {
		t.Errorf("defaults %+v", a)
	}
	c, err = Parse([]byte("roots: [/a]\npolicy_dir: /p\napprovals:\n  request_ttl: 2m\n  web_listen: \"\"\n  webhook:\n    url: https://hooks.example/x\n    retries: 0\n"), "bridled.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if a := c.Approvals; a.RequestTTL.String() != "2m0s" || *a.WebListen != "" || *a.Webhook.Retries != 0 || a.Webhook.URL != "https://hooks.example/x" {
		t.Errorf("settings %+v", a)
	}
	for _, bad := range []string{
		"approvals:\n  request_ttl: -1m\n",
		"approvals:\n  request_ttl: 10ms\n",
		"approvals:\n  cooldown: -1s\n",
		"approvals:\n  web_listen: localhost\n",
		"approvals:\n  webhook:\n    url: ftp://x/\n",
		"approvals:\n  webhook:\n    retries: -1\n",
		"approvals:\n  webhok: {}\n",
	} {
		if _, err := Parse([]byte("roots: [/a]\npolicy_dir: /p\n"+bad), "bridled.yaml"); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
