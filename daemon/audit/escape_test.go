package audit

import (
	"strings"
	"testing"
	"unicode"
)

func TestPrintable(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"curl", "curl"},
		{"/usr/bin/git", "/usr/bin/git"},
		{"naïve café ✓", "naïve café ✓"},
		{"a\nbridle: exited with status 0", `a\nbridle: exited with status 0`},
		{"\x1b[2J\x1b]0;title\x07", `\x1b[2J\x1b]0;title\x07`},
		{"tab\there\r", `tab\there\r`},
		{"del\x7f", `del\x7f`},
		{"c1\u0085\u009b", `c1\u0085\u009b`},
		{"bad\xff\xfeutf8", `bad\xff\xfeutf8`},
		{"bidi \u202egnp.exe\u202c \u2066x\u2069 \u200f", `bidi \u202egnp.exe\u202c \u2066x\u2069 \u200f`},
		{"zero\u200bwidth", `zero\u200bwidth`},
		{"line\u2028sep", `line\u2028sep`},
		{"nbsp\u00a0", `nbsp\u00a0`},
		{`back\slash`, `back\slash`},
		{"\x00nul", `\x00nul`},
	} {
		got := Printable(c.in)
		if got != c.want {
			t.Errorf("Printable(%q) = %q, want %q", c.in, got, c.want)
		}
		if again := Printable(got); again != got {
			t.Errorf("Printable is not idempotent on %q: %q", got, again)
		}
		for _, r := range got {
			if r > unicode.MaxASCII && !unicode.IsPrint(r) || r < 0x20 || r == 0x7f {
				t.Errorf("Printable(%q) kept %U", c.in, r)
			}
		}
	}
}

// A decision line stays one line whatever the workload put in its comm and
// the path it ran.
func TestLineEscapesWorkloadText(t *testing.T) {
	rec := Record{
		Verdict: "deny", Action: "exec", Path: "/tmp/x\nbridle: ./agent exited with status 0; 0 denied\x1b[2K",
		Comm: "\nbridle: ok\x1b[2J", PID: 7, Reason: "no rule allows it", Enforcement: "kill",
	}
	line := rec.Line()
	want := `denied exec /tmp/x\nbridle: ./agent exited with status 0; 0 denied\x1b[2K by \nbridle: ok\x1b[2J[7]: no rule allows it (killed); ` +
		`allow with --allow-exec /tmp/x\nbridle: ./agent exited with status 0; 0 denied\x1b[2K`
	if line != want {
		t.Fatalf("got  %q\nwant %q", line, want)
	}
	if strings.ContainsAny(rec.Target()+rec.AllowFlag(), "\n\x1b") {
		t.Fatalf("Target %q, AllowFlag %q keep control characters", rec.Target(), rec.AllowFlag())
	}
}
