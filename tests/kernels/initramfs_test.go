package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// cpioEntry is one entry as read back by readNewc.
type cpioEntry struct {
	Mode         uint32
	Data         string
	Major, Minor uint32
}

// readNewc is an independent newc reader, so the writer is checked against
// the format rather than against itself.
func readNewc(t *testing.T, b []byte) map[string]cpioEntry {
	t.Helper()
	out := map[string]cpioEntry{}
	align := func(n int) int { return (n + 3) &^ 3 }
	off := 0
	for {
		if len(b) < off+110 || string(b[off:off+6]) != "070701" {
			t.Fatalf("offset %d: bad newc magic", off)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return uint32(v)
		}
		mode, size, namesize := field(1), int(field(6)), int(field(11))
		name := string(b[off+110 : off+110+namesize-1])
		data := align(off + 110 + namesize)
		if name == "TRAILER!!!" {
			return out
		}
		out[name] = cpioEntry{Mode: mode, Data: string(b[data : data+size]), Major: field(9), Minor: field(10)}
		off = align(data + size)
	}
}

func TestTreeWritesNewc(t *testing.T) {
	host := t.TempDir()
	if err := os.MkdirAll(filepath.Join(host, "probe", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(host, "probe", "sub", "bin"), []byte("#!/bin/sh\n"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub/bin", filepath.Join(host, "probe", "link")); err != nil {
		t.Fatal(err)
	}
	busybox := filepath.Join(host, "busybox")
	if err := os.WriteFile(busybox, []byte("not really busybox"), 0o755); err != nil {
		t.Fatal(err)
	}

	tr := baseTree(busybox, "#!/bin/busybox sh\n")
	if err := tr.addHost(filepath.Join(host, "probe"), "/bridle/files/probe"); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := tr.write(&buf); err != nil {
		t.Fatal(err)
	}
	got := readNewc(t, buf.Bytes())

	for name, want := range map[string]cpioEntry{
		"init":                       {Mode: cpioFile | 0o755, Data: "#!/bin/busybox sh\n"},
		"bin/busybox":                {Mode: cpioFile | 0o755, Data: "not really busybox"},
		"dev/console":                {Mode: cpioChar | 0o600, Major: 5, Minor: 1},
		"tmp":                        {Mode: cpioDir | 0o777},
		"bridle/files/probe/sub/bin": {Mode: cpioFile | 0o750, Data: "#!/bin/sh\n"},
		"bridle/files/probe/link":    {Mode: cpioSymlink | 0o777, Data: "sub/bin"},
		"bridle/files/probe/sub":     {Mode: cpioDir | 0o755},
		"bridle/files":               {Mode: cpioDir | 0o755},
		"etc/hosts":                  {Mode: cpioFile | 0o644, Data: "127.0.0.1 localhost\n::1 localhost\n"},
		"bridle/bin":                 {Mode: cpioDir | 0o755},
		"bridle/src":                 {Mode: cpioDir | 0o755},
		"usr/sbin":                   {Mode: cpioDir | 0o755},
	} {
		e, ok := got[name]
		if !ok {
			t.Errorf("%s: missing", name)
			continue
		}
		// The sticky bit of /tmp is not a permission bit; compare the rest.
		if e.Mode&^0o1000 != want.Mode || e.Data != want.Data || e.Major != want.Major || e.Minor != want.Minor {
			t.Errorf("%s: got %+v (mode %o), want %+v (mode %o)", name, e, e.Mode, want, want.Mode)
		}
	}
	// Parents must come before children for the kernel's unpacker.
	order := strings.Index(buf.String(), "bridle/files/probe/sub\x00")
	if order < 0 || order > strings.Index(buf.String(), "bridle/files/probe/sub/bin\x00") {
		t.Error("directory written after its contents")
	}
}

func TestInitScript(t *testing.T) {
	s := initScript([]testBinary{
		{Name: "loader.test", Dir: "/bridle/src/loader"},
		{Name: "tests-e2e.test", Dir: "/bridle/src/tests/e2e"},
	}, []string{"-test.run=TestExec|TestConnect", "-test.timeout=10m0s"}, []string{"BRIDLE_E2E_PROBE=/bridle/files/probe", "X=a b"})
	for _, want := range []string{
		"#!/bin/busybox sh\n",
		"mount -t devtmpfs devtmpfs /dev\n",
		"try_mount cgroup2 /sys/fs/cgroup\n",
		"try_mount bpf /sys/fs/bpf\n",
		"try_mount securityfs /sys/kernel/security\n",
		"ip link set lo up",
		`echo "@@bridle begin loader.test"`,
		"cd /bridle/src/loader && /bridle/bin/loader.test -test.v -test.count=1 '-test.run=TestExec|TestConnect' -test.timeout=10m0s\n",
		`echo; echo "@@bridle end tests-e2e.test exit=$rc"`,
		"bridle.expect_exec_mode=*) export BRIDLE_EXPECT_EXEC_MODE=",
		"export BRIDLE_E2E_PROBE=/bridle/files/probe\nexport X='a b'\nfact uname",
		"poweroff -f\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("init script lacks %q:\n%s", want, s)
		}
	}
	if strings.Index(s, "loader.test -test.v") > strings.Index(s, "tests-e2e.test -test.v") {
		t.Error("binaries run out of order")
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"-test.v":        "-test.v",
		"/bridle/src/a":  "/bridle/src/a",
		"":               "''",
		"a b":            "'a b'",
		"it's":           `'it'\''s'`,
		"-test.run=A|B$": "'-test.run=A|B$'",
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestCheckStaticBusyboxRejectsNonELF(t *testing.T) {
	p := filepath.Join(t.TempDir(), "busybox")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := checkStaticBusybox(p)
	if err == nil || !strings.Contains(err.Error(), "apt-get install busybox-static") {
		t.Errorf("error %v should say how to install busybox-static", err)
	}
}

func TestAddHostRejectsSpecialFiles(t *testing.T) {
	tr := tree{}
	err := tr.addHost("/dev/null", "/x")
	if err == nil {
		t.Error("device node accepted")
	}
}
