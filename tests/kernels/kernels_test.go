package main

import (
	"slices"
	"strings"
	"testing"
)

func TestPinnedKernelsParse(t *testing.T) {
	ks, err := parseKernels(pinFile)
	if err != nil {
		t.Fatalf("%s: %v", pinFileName, err)
	}
	var names []string
	for _, k := range ks {
		names = append(names, k.Name)
		if !strings.HasPrefix(k.Package, "linux-image-"+k.Name+".") {
			t.Errorf("kernel %s: package %s is not of that series", k.Name, k.Package)
		}
	}
	if want := []string{"5.10", "6.1", "6.12"}; !slices.Equal(names, want) {
		t.Errorf("pinned kernels %v, want %v", names, want)
	}
	want := []string{"bullseye", "bullseye-security", "bookworm", "bookworm-security", "trixie"}
	if got := suitesOf(ks); !slices.Equal(got, want) {
		t.Errorf("suites %v, want %v", got, want)
	}
}

func TestParseKernelsRejects(t *testing.T) {
	for name, text := range map[string]string{
		"empty":          "# nothing\n",
		"columns":        "6.1 linux-image-6.1.0-1-cloud-amd64 linux-image-6.1.0-*-cloud-amd64 bookworm\n",
		"family":         "6.1 linux-image-6.1.0-1-cloud-amd64 linux-image-6.2.0-*-cloud-amd64 bookworm bpflsm\n",
		"variant":        "6.1 linux-image-6.1.0-1-cloud-amd64 linux-image-6.1.0-*-cloud-amd64 bookworm selinux\n",
		"duplicate name": "6.1 linux-image-6.1.0-1-cloud-amd64 linux-image-6.1.0-*-cloud-amd64 bookworm bpflsm\n6.1 linux-image-6.1.0-2-cloud-amd64 linux-image-6.1.0-*-cloud-amd64 bookworm bpflsm\n",
	} {
		if _, err := parseKernels(text); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func testGuests(t *testing.T) []guest {
	t.Helper()
	ks, err := parseKernels(`
5.10 linux-image-5.10.0-46-cloud-amd64 linux-image-5.10.0-*-cloud-amd64 bullseye,bullseye-security bpflsm
6.12 linux-image-6.12.117+deb13-cloud-amd64 linux-image-6.12.*+deb13-cloud-amd64 trixie bpflsm,nobpflsm # comment
`)
	if err != nil {
		t.Fatal(err)
	}
	return guestsOf(ks)
}

func guestNames(gs []guest) []string {
	var n []string
	for _, g := range gs {
		n = append(n, g.Name)
	}
	return n
}

func TestSelectGuests(t *testing.T) {
	all := testGuests(t)
	for _, tc := range []struct {
		sel  []string
		want []string
	}{
		{nil, []string{"5.10", "6.12", "6.12-nobpflsm"}},
		{[]string{"6.12"}, []string{"6.12", "6.12-nobpflsm"}},
		{[]string{"6.12-nobpflsm"}, []string{"6.12-nobpflsm"}},
		{[]string{"6.12-nobpflsm", "5.10"}, []string{"5.10", "6.12-nobpflsm"}},
	} {
		gs, err := selectGuests(all, tc.sel)
		if err != nil {
			t.Errorf("%v: %v", tc.sel, err)
			continue
		}
		if got := guestNames(gs); !slices.Equal(got, tc.want) {
			t.Errorf("%v: got %v, want %v", tc.sel, got, tc.want)
		}
	}
	if _, err := selectGuests(all, []string{"4.19"}); err == nil || !strings.Contains(err.Error(), "6.12-nobpflsm") {
		t.Errorf("unknown kernel: error %v should list the guests", err)
	}
	gs, _ := selectGuests(all, []string{"6.12"})
	if ks := kernelsOf(gs); len(ks) != 1 {
		t.Errorf("two variants of one kernel fetch it %d times", len(ks))
	}
}

func TestCmdline(t *testing.T) {
	gs := testGuests(t)
	got := cmdline(gs[1], "")
	want := "console=ttyS0 panic=-1 lsm=lockdown,capability,landlock,yama,apparmor,bpf bridle.guest=6.12 bridle.expect_exec_mode=lsm"
	if got != want {
		t.Errorf("bpf guest:\n got %s\nwant %s", got, want)
	}
	got = cmdline(gs[2], " nokaslr ")
	want = "console=ttyS0 panic=-1 lsm=lockdown,capability,landlock,yama,apparmor bridle.guest=6.12-nobpflsm bridle.expect_exec_mode=kill nokaslr"
	if got != want {
		t.Errorf("no-bpf guest:\n got %s\nwant %s", got, want)
	}
}

func TestQemuArgs(t *testing.T) {
	c := vmConfig{Accel: "tcg,thread=multi", Memory: "1G", CPUs: 2, Initrd: "/o/initramfs.cpio"}
	got := strings.Join(qemuArgs(c, "/k/vmlinuz", "console=ttyS0"), " ")
	want := "-accel tcg,thread=multi -cpu max -smp 2 -m 1G -nodefaults -display none -serial stdio -no-reboot -kernel /k/vmlinuz -initrd /o/initramfs.cpio -append console=ttyS0"
	if got != want {
		t.Errorf("\n got %s\nwant %s", got, want)
	}
}

func TestNewestInFamily(t *testing.T) {
	names := []string{
		"linux-image-6.1.0-9-cloud-amd64",
		"linux-image-6.1.0-56-cloud-amd64",
		"linux-image-6.1.0-56-cloud-amd64-dbg",
		"linux-image-6.1.0-56-cloud-amd64-unsigned",
		"linux-image-6.1.0-57-amd64",
		"linux-image-6.12.99+deb13-cloud-amd64",
		"linux-image-6.12.117+deb13-cloud-amd64",
		"linux-image-6.12.119+deb12-cloud-amd64",
		"linux-image-cloud-amd64",
	}
	for family, want := range map[string]string{
		"linux-image-6.1.0-*-cloud-amd64":      "linux-image-6.1.0-56-cloud-amd64",
		"linux-image-6.12.*+deb13-cloud-amd64": "linux-image-6.12.117+deb13-cloud-amd64",
		"linux-image-5.10.0-*-cloud-amd64":     "",
	} {
		if got := newestInFamily(family, names); got != want {
			t.Errorf("%s: got %q, want %q", family, got, want)
		}
	}
}

func TestNaturalLess(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		less bool
	}{
		{"5.10.0-9", "5.10.0-46", true},
		{"5.10.0-46", "5.10.0-9", false},
		{"6.12.99+deb13", "6.12.117+deb13", true},
		{"a-01", "a-1", false},
		{"a-1", "a-1", false},
		{"a", "a-1", true},
		{"abc", "abd", true},
	} {
		if got := naturalLess(tc.a, tc.b); got != tc.less {
			t.Errorf("naturalLess(%q, %q) = %v", tc.a, tc.b, got)
		}
	}
}

func TestBootFlake(t *testing.T) {
	panicked := guestRun{Report: parseSerial("[ 1.7] Kernel panic - not syncing: Fatal exception in interrupt\n")}
	if !panicked.bootFlake() {
		t.Error("panic before /init is not treated as a boot flake")
	}
	started := panicked
	started.Boot = 1
	if started.bootFlake() {
		t.Error("panic after /init started is treated as a boot flake; it may be the code under test")
	}
	slow := panicked
	slow.TimedOut = true
	if slow.bootFlake() {
		t.Error("a timeout is retried")
	}
	hung := guestRun{BootHung: true, TimedOut: true}
	if !hung.bootFlake() {
		t.Error("a kernel that hung before /init is not booted again")
	}
}
