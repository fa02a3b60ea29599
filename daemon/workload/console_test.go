package workload

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// Pipes and files are the workload's as they are: no pty, nothing relayed.
func TestStdioWithoutTerminal(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	s, err := OpenStdio(r, w, w, Credentials{UID: uint32(os.Getuid())})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.console != nil || s.files != [3]*os.File{r, w, w} {
		t.Fatalf("stdio of pipes changed: %+v", s.files)
	}
	var buf bytes.Buffer
	if s.Writer(&buf) != &buf {
		t.Fatal("messages wrapped without a terminal")
	}
}

// Each terminal among stdin, stdout and stderr becomes the workload's own
// pty, set up like the invoker's terminal; the others stay.
func TestStdioWithTerminal(t *testing.T) {
	master, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	defer master.Close()
	defer tty.Close()
	if err := pty.Setsize(master, &pty.Winsize{Rows: 33, Cols: 111}); err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()

	s, err := OpenStdio(tty, w, tty, Credentials{UID: uint32(os.Getuid()), GID: uint32(os.Getgid())})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := s.console
	if c == nil {
		t.Fatal("no pty for a terminal")
	}
	if s.files[0] != c.slave || s.files[1] != w || s.files[2] != c.slave || c.ctty != 0 {
		t.Fatalf("workload stdio %v, pty %v, ctty %d", s.files, c.slave, c.ctty)
	}
	if c.in != tty || c.out != tty {
		t.Fatalf("relay reads %v and writes %v, want the terminal both ways", c.in, c.out)
	}
	if rows, cols, err := pty.Getsize(c.slave); err != nil || rows != 33 || cols != 111 {
		t.Fatalf("pty size %dx%d (%v), want the terminal's 33x111", rows, cols, err)
	}
	want, _ := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	got, _ := unix.IoctlGetTermios(int(c.slave.Fd()), unix.TCGETS)
	if want.Lflag != got.Lflag || want.Iflag != got.Iflag || want.Cc != got.Cc {
		t.Fatalf("pty settings %+v, want the terminal's %+v", got, want)
	}

	// Raw mode and back; bridle's own lines keep their carriage returns
	// meanwhile.
	var out bytes.Buffer
	msg := crlfWriter{w: &out, raw: &c.raw}
	if err := s.beforeStart(); err != nil {
		t.Fatal(err)
	}
	raw, _ := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if raw.Lflag&unix.ICANON != 0 || raw.Oflag&unix.OPOST != 0 {
		t.Fatalf("terminal not raw: %+v", raw)
	}
	_, _ = msg.Write([]byte("bridle: one\nbridle: two\n"))
	s.Close()
	_, _ = msg.Write([]byte("bridle: three\n"))
	if got := out.String(); got != "bridle: one\r\nbridle: two\r\nbridle: three\n" {
		t.Fatalf("messages %q", got)
	}
	after, _ := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if *after != *want {
		t.Fatalf("terminal not restored: %+v, want %+v", after, want)
	}
}

func TestUnescapeOctal(t *testing.T) {
	for in, want := range map[string]string{
		`/mnt/a\040b`:  "/mnt/a b",
		`/x\011y\134z`: "/x\ty\\z",
		`/plain`:       "/plain",
		`/end\04`:      `/end\04`,
	} {
		if got := unescapeOctal(in); got != want {
			t.Errorf("unescapeOctal(%q) = %q, want %q", in, got, want)
		}
	}
}

// The process's own mountinfo parses, with proc among its file systems.
func TestMountinfo(t *testing.T) {
	mounts, err := mountinfo()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		if m.fstype == "proc" && strings.HasPrefix(m.point, "/") && len(m.options) > 0 {
			return
		}
	}
	t.Fatalf("no proc mount among %+v", mounts)
}
