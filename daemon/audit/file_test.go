package audit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestOpenFileRefusesWhatItWouldFollow(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "rc")
	if err := os.WriteFile(target, []byte("# rc\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, make := range map[string]func(p string) error{
		"symlink":   func(p string) error { return os.Symlink(target, p) },
		"hard link": func(p string) error { return os.Link(target, p) },
		"fifo":      func(p string) error { return unix.Mkfifo(p, 0o666) },
		"directory": func(p string) error { return os.Mkdir(p, 0o755) },
	} {
		p := filepath.Join(sub, strings.ReplaceAll(name, " ", "-"))
		if err := make(p); err != nil {
			t.Fatal(err)
		}
		if f, err := OpenFile(p); err == nil {
			f.Close()
			t.Errorf("%s: opened", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	// A symlink in a directory component, not only the last one.
	if err := os.Symlink(dir, filepath.Join(sub, "up")); err != nil {
		t.Fatal(err)
	}
	if f, err := OpenFile(filepath.Join(sub, "up", "fresh.jsonl")); err == nil {
		f.Close()
		t.Error("a path through a symlinked directory was opened")
	}
	if b, _ := os.ReadFile(target); string(b) != "# rc\n" {
		t.Fatalf("target changed: %q", b)
	}
	if _, err := os.Stat(filepath.Join(dir, "fresh.jsonl")); err == nil {
		t.Fatal("a file was created through the symlinked directory")
	}

	// A plain path: created 0600, then appended to.
	p := filepath.Join(sub, "audit.jsonl")
	for i := range 2 {
		f, err := OpenFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString("{}\n"); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if i == 0 {
			if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
				t.Fatalf("created with mode %v", fi.Mode())
			}
		}
	}
	if b, _ := os.ReadFile(p); string(b) != "{}\n{}\n" {
		t.Fatalf("appended: %q", b)
	}
}
