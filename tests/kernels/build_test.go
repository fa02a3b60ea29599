package main

import (
	"slices"
	"testing"
)

func TestBinaryName(t *testing.T) {
	for _, tc := range []struct{ rel, importPath, want string }{
		{"loader", "github.com/bridle-sh/bridle/loader", "loader.test"},
		{"tests/e2e", "github.com/bridle-sh/bridle/tests/e2e", "tests-e2e.test"},
		{"", "github.com/bridle-sh/bridle", "bridle.test"},
	} {
		if got := binaryName(tc.rel, tc.importPath); got != tc.want {
			t.Errorf("binaryName(%q) = %q, want %q", tc.rel, got, tc.want)
		}
	}
}

func TestParseExtraFile(t *testing.T) {
	for in, want := range map[string]extraFile{
		"bin/probe":                 {Src: "bin/probe", Dst: "/bridle/files/probe"},
		"bin/probe=/usr/bin/probe":  {Src: "bin/probe", Dst: "/usr/bin/probe"},
		"policy/=/etc/bridle/rego/": {Src: "policy/", Dst: "/etc/bridle/rego"},
	} {
		got, err := parseExtraFile(in)
		if err != nil || got != want {
			t.Errorf("parseExtraFile(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "=/x", "a=relative/path"} {
		if _, err := parseExtraFile(bad); err == nil {
			t.Errorf("parseExtraFile(%q): no error", bad)
		}
	}
}

func TestParseBuild(t *testing.T) {
	for in, want := range map[string]extraFile{
		"./cmd/bridle":                           {Src: "./cmd/bridle", Dst: "/bridle/files/bridle"},
		"./tests/probe=/usr/bin/probe":           {Src: "./tests/probe", Dst: "/usr/bin/probe"},
		"github.com/bridle-sh/bridle/cmd/bridle": {Src: "github.com/bridle-sh/bridle/cmd/bridle", Dst: "/bridle/files/bridle"},
	} {
		got, err := parseBuild(in)
		if err != nil || got != want {
			t.Errorf("parseBuild(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	if _, err := parseBuild("./x=rel"); err == nil {
		t.Error("relative guest path accepted")
	}
}

func TestParseEnv(t *testing.T) {
	for _, ok := range []string{"BRIDLE_E2E_PROBE=/bridle/files/probe", "A=", "_x=a=b"} {
		if _, err := parseEnv(ok); err != nil {
			t.Errorf("parseEnv(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"A", "=x", "1A=x", "A-B=x", "A B=x"} {
		if _, err := parseEnv(bad); err == nil {
			t.Errorf("parseEnv(%q): no error", bad)
		}
	}
}

func TestParseLdd(t *testing.T) {
	out := "\tlinux-vdso.so.1 (0x00007ffb6b6fb000)\n" +
		"\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007ffb6b4ff000)\n" +
		"\t/lib64/ld-linux-x86-64.so.2 (0x00007ffb6b6fd000)\n"
	got, err := parseLdd(out)
	want := []string{"/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("got %q, %v; want %q", got, err, want)
	}
	if _, err := parseLdd("\tlibfoo.so.1 => not found\n"); err == nil {
		t.Error("a missing library was not an error")
	}
	if got, err := parseLdd("\tstatically linked\n"); err != nil || len(got) != 0 {
		t.Errorf("static: %q, %v", got, err)
	}
}
