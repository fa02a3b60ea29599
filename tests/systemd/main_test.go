package main

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// The console interleaves systemd's coloured status lines and kernel
// messages with the checks' lines; only the marked ones count.
func TestParseLine(t *testing.T) {
	console := "\x1b[0;32m  OK  \x1b[0m] Reached target multi-user.target\r\n" +
		"BRIDLE-SYSTEMD: BOOTED\r\n" +
		"BRIDLE-SYSTEMD: FACT uname=6.12.117+deb13-cloud-amd64\n" +
		"[   12.5] random kernel line BRIDLE-SYSTEMD: PASS install\n" +
		"BRIDLE-SYSTEMD: FAIL task-grants bridle task start: refused (422)\n" +
		"BRIDLE-SYSTEMD: LOG degraded: no\n" +
		"BRIDLE-SYSTEMD: DONE\n"
	var r result
	r.Booted = 1
	for _, l := range strings.SplitAfter(console, "\n") {
		r.parseLine(l)
	}
	want := []check{
		{Name: "install", Status: "PASS"},
		{Name: "task-grants", Status: "FAIL", Detail: "bridle task start: refused (422)"},
	}
	if !slices.Equal(r.Checks, want) {
		t.Errorf("checks = %+v, want %+v", r.Checks, want)
	}
	if !r.Done || len(r.Facts) != 1 || len(r.Logs) != 1 {
		t.Errorf("done=%v facts=%q logs=%q", r.Done, r.Facts, r.Logs)
	}
	if ps := r.problems(); len(ps) != 1 || ps[0] != "check task-grants failed" {
		t.Errorf("problems = %q, want only the failed check", ps)
	}
}

func TestProblemsWithoutChecks(t *testing.T) {
	if ps := (result{}).problems(); len(ps) == 0 {
		t.Error("a guest that never reached the checks passed")
	}
}

// The cache key follows the package set, not its order or the mirror.
func TestImageKey(t *testing.T) {
	a := defaultImage
	b := defaultImage
	b.Packages = slices.Clone(a.Packages)
	slices.Reverse(b.Packages)
	b.Mirror = "http://mirror.example/debian"
	if a.key() != b.key() {
		t.Errorf("key depends on order or mirror: %s != %s", a.key(), b.key())
	}
	b.Packages = append(b.Packages, "curl")
	if a.key() == b.key() {
		t.Error("key ignores the package list")
	}
}

// The Vagrant VM is provisioned by the script the guest installs with, so
// the VM a user boots is the deployment these checks test.
func TestVagrantProvisionsWithInstallScript(t *testing.T) {
	b, err := os.ReadFile("../../Vagrantfile")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "/bridle/deploy/systemd/install.sh /bridle") {
		t.Error("the Vagrantfile's provisioning does not run deploy/systemd/install.sh")
	}
}
