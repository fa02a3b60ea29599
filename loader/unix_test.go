package loader

import (
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bridle-sh/bridle/policy"
)

// The unix programs build their rule key from the raw address the caller
// passed, so a hostile caller picks its bytes and length: NULs inside an
// abstract name, junk after a path's NUL, a length that cuts a name short,
// a sun_path with no NUL at all. Each must give the key of the name the
// kernel will connect to, nothing else.
func TestUnixKeyFromRawAddress(t *testing.T) {
	e := testEnforcer(t)
	if f := e.Features(); !f.UnixHooks {
		t.Skipf("kernel %s has no cgroup unix socket hooks (6.7+): %s", f.Kernel, f.UnixReason)
	}
	cg, id := testCgroup(t)
	if err := e.AttachCgroup(cg); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "a.sock")
	abstract := fmt.Sprintf("bridle-key-%d", os.Getpid())
	for _, name := range []string{path, "@" + abstract, "@" + abstract + "\x00tail"} {
		acceptAll(t, "unix", name)
	}
	probe := probeBinary(t)
	rs, err := policy.Compile(policy.Envelope{
		Exec: []policy.ExecRule{{Path: probe}},
		Unix: []string{path, "@" + abstract},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.WriteRules(BaselineSlot, rs); err != nil {
		t.Fatal(err)
	}
	if err := e.BindWorkload(id, BaselineSlot, WorkloadMode{}); err != nil {
		t.Fatal(err)
	}

	long := strings.Repeat("x", 108) // a whole sun_path, no NUL
	for _, c := range []struct {
		name    string
		sunPath string
		addrlen int // 0: 2 + len(sunPath)
		allowed bool
	}{
		{"path", path, 0, true},
		{"path with its NUL", path + "\x00", 0, true},
		{"path, NUL, junk", path + "\x00junk", 0, true},
		{"path cut short by the length", path + "junk", 2 + len(path), true},
		{"longer path", path + "junk", 0, false},
		{"prefix of the path", path[:len(path)-1], 0, false},
		{"abstract", "\x00" + abstract, 0, true},
		{"abstract, junk past the length", "\x00" + abstract + "junk", 2 + 1 + len(abstract), true},
		{"abstract with a NUL inside", "\x00" + abstract + "\x00tail", 0, false},
		{"abstract with a trailing NUL", "\x00" + abstract + "\x00", 0, false},
		{"abstract prefix", "\x00" + abstract[:len(abstract)-1], 0, false},
		{"108 bytes, no NUL", long, 0, false},
		{"abstract spelled as a path", abstract, 0, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := []string{"unix-raw", hex.EncodeToString([]byte(c.sunPath))}
			if c.addrlen != 0 {
				args = append(args, fmt.Sprint(c.addrlen))
			}
			out, err := runIn(t, cg, probe, args...)
			refused := strings.Contains(out, "EPERM connect")
			switch {
			case c.allowed && (err != nil || refused):
				t.Fatalf("want allowed: %v %q", err, out)
			case !c.allowed && !refused:
				t.Fatalf("want EPERM: %v %q", err, out)
			}
		})
	}
}
