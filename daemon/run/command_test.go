package run

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/bridle-sh/bridle/policy"
)

func TestCommandExecRules(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	bin := write("bin", "\x7fELF")
	script := write("script", "#!/bin/sh -e\necho\n")
	envScript := write("env-script", "#!/usr/bin/env -S sh -e\n")

	if got := commandExecRules(bin); len(got) != 1 || got[0] != (policy.ExecRule{Path: bin}) {
		t.Fatalf("binary: %v", got)
	}
	got := commandExecRules(script)
	if len(got) != 2 || got[0] != (policy.ExecRule{Path: script, ScriptOnly: true}) || got[1] != (policy.ExecRule{Path: "/bin/sh"}) {
		t.Fatalf("script: %v", got)
	}
	got = commandExecRules(envScript)
	if len(got) != 3 || got[1].Path != "/usr/bin/env" || filepath.Base(got[2].Path) != "sh" {
		t.Fatalf("env script: %v", got)
	}
}
