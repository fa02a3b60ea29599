package config

import (
	"strings"
	"testing"
)

func TestParseDefaultsAndStrictness(t *testing.T) {
	c, err := Parse([]byte("roots: [/a.slice/]\npolicy_dir: /etc/bridle/policy\nnode_name: n1\n"), "t")
	if err != nil {
		t.Fatal(err)
	}
	if c.Roots[0] != "/a.slice" || c.Socket != DefaultSocket || c.PinDir != DefaultPinDir || c.StateDir != DefaultStateDir {
		t.Fatalf("defaults: %+v", c)
	}
	if got := c.Identity("/a.slice/w1"); got != "spiffe://n1/workload/a.slice/w1" {
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
	if got := c.Identity("/a/coding/w"); got != "spiffe://example.org/agent/coding/y" {
		t.Fatalf("longest match: %q", got)
	}
	if got := c.Identity("/a/other"); got != "spiffe://example.org/agent/x" {
		t.Fatalf("prefix: %q", got)
	}
	if !c.IsAdmin(0, nil) || !c.IsAdmin(1000, nil) || !c.IsAdmin(7, []uint32{50}) || c.IsAdmin(7, []uint32{8}) {
		t.Fatal("admins")
	}
	if _, ok := c.RootOf("/ab"); ok {
		t.Fatal("/ab is not under /a")
	}
}
