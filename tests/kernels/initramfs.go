package main

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"text/template"
)

// cpioWriter writes the "newc" cpio format, the one the kernel unpacks as an
// initramfs. It is small enough to keep here rather than depend on the cpio
// package being installed.
type cpioWriter struct {
	w   *bufio.Writer
	ino uint32
	off int64
}

func newCPIOWriter(w io.Writer) *cpioWriter {
	return &cpioWriter{w: bufio.NewWriterSize(w, 1<<20)}
}

const (
	cpioDir     = 0o040000
	cpioFile    = 0o100000
	cpioSymlink = 0o120000
	cpioChar    = 0o020000
)

// header writes one entry header and its name. rdev is (major, minor) for
// device nodes.
func (c *cpioWriter) header(name string, mode uint32, size int64, rdevMajor, rdevMinor uint32) error {
	c.ino++
	nlink := uint32(1)
	if mode&0o170000 == cpioDir {
		nlink = 2
	}
	fields := []uint32{
		c.ino, mode, 0, 0, nlink, 0, uint32(size),
		0, 0, rdevMajor, rdevMinor, uint32(len(name) + 1), 0,
	}
	if size > 0xffffffff {
		return fmt.Errorf("cpio: %s: %d bytes is too large for newc", name, size)
	}
	var b bytes.Buffer
	b.WriteString("070701")
	for _, f := range fields {
		fmt.Fprintf(&b, "%08x", f)
	}
	b.WriteString(name)
	b.WriteByte(0)
	if err := c.write(b.Bytes()); err != nil {
		return err
	}
	return c.pad()
}

func (c *cpioWriter) write(p []byte) error {
	n, err := c.w.Write(p)
	c.off += int64(n)
	return err
}

// pad aligns the stream to 4 bytes, as newc requires after names and data.
func (c *cpioWriter) pad() error {
	if r := c.off % 4; r != 0 {
		return c.write(make([]byte, 4-r))
	}
	return nil
}

func (c *cpioWriter) Dir(name string, perm uint32) error {
	return c.header(name, cpioDir|perm, 0, 0, 0)
}

func (c *cpioWriter) Symlink(name, target string) error {
	if err := c.header(name, cpioSymlink|0o777, int64(len(target)), 0, 0); err != nil {
		return err
	}
	if err := c.write([]byte(target)); err != nil {
		return err
	}
	return c.pad()
}

func (c *cpioWriter) CharDev(name string, perm, major, minor uint32) error {
	return c.header(name, cpioChar|perm, 0, major, minor)
}

func (c *cpioWriter) File(name string, perm uint32, size int64, r io.Reader) error {
	if err := c.header(name, cpioFile|perm, size, 0, 0); err != nil {
		return err
	}
	n, err := io.Copy(writerFunc(c.write), io.LimitReader(r, size))
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("cpio: %s: short read (%d of %d bytes)", name, n, size)
	}
	return c.pad()
}

// Close writes the trailer entry and flushes.
func (c *cpioWriter) Close() error {
	if err := c.header("TRAILER!!!", 0, 0, 0, 0); err != nil {
		return err
	}
	return c.w.Flush()
}

type writerFunc func([]byte) error

func (f writerFunc) Write(p []byte) (int, error) {
	if err := f(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// entry is one file of the initramfs. Exactly one of Src (a host path),
// Data, Target (symlink) or Dev (character device) is used, or none for a
// directory.
type entry struct {
	Path   string // absolute path in the guest
	Mode   fs.FileMode
	Src    string
	Data   []byte
	Target string
	Dev    [2]uint32
}

// tree is the initramfs being assembled, keyed by guest path so later
// additions replace earlier ones and parent directories are implied.
type tree map[string]entry

func (t tree) dir(p string) {
	for p != "/" && p != "." {
		if _, ok := t[p]; !ok {
			t[p] = entry{Path: p, Mode: fs.ModeDir | 0o755}
		}
		p = path.Dir(p)
	}
}

func (t tree) add(e entry) {
	t.dir(path.Dir(e.Path))
	t[e.Path] = e
}

// addHost copies a host file or directory (recursively) to guest path dst.
// Symlinks are kept as links; modes keep their permission bits.
func (t tree) addHost(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		g := path.Join(dst, filepath.ToSlash(rel))
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			t.add(entry{Path: g, Mode: fs.ModeSymlink | 0o777, Target: target})
		case info.IsDir():
			t.dir(g)
			t[g] = entry{Path: g, Mode: fs.ModeDir | info.Mode().Perm()}
		case info.Mode().IsRegular():
			t.add(entry{Path: g, Mode: info.Mode().Perm(), Src: p})
		default:
			return fmt.Errorf("%s: only files, directories and symlinks can go into the initramfs", p)
		}
		return nil
	})
}

// write emits the tree in path order, so every directory precedes its
// contents, as the kernel's unpacker needs.
func (t tree) write(w io.Writer) error {
	paths := make([]string, 0, len(t))
	for p := range t {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	c := newCPIOWriter(w)
	for _, p := range paths {
		e := t[p]
		name := strings.TrimPrefix(p, "/")
		perm := uint32(e.Mode.Perm())
		var err error
		switch {
		case e.Mode.IsDir():
			err = c.Dir(name, perm)
		case e.Mode&fs.ModeSymlink != 0:
			err = c.Symlink(name, e.Target)
		case e.Mode&fs.ModeCharDevice != 0:
			err = c.CharDev(name, perm, e.Dev[0], e.Dev[1])
		case e.Src != "":
			err = copyInto(c, name, perm, e.Src)
		default:
			err = c.File(name, perm, int64(len(e.Data)), bytes.NewReader(e.Data))
		}
		if err != nil {
			return fmt.Errorf("initramfs %s: %w", p, err)
		}
	}
	return c.Close()
}

func copyInto(c *cpioWriter, name string, perm uint32, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	return c.File(name, perm, st.Size(), f)
}

// testBinary is one compiled test package as the guest runs it.
type testBinary struct {
	Name string // file name under /bridle/bin, e.g. loader.test
	Dir  string // guest working directory: the package's path under /bridle/src
}

// Guest paths. Tests find their package directory (and its testdata) as the
// working directory, as under `go test`; extra files default to guestFiles.
const (
	guestBin   = "/bridle/bin"
	guestSrc   = "/bridle/src"
	guestFiles = "/bridle/files"
)

// Markers the init script prints on ttyS0, at the start of a line, and the
// runner parses. They are unlike anything `go test -v` prints.
const (
	markerPrefix = "@@bridle "
	markerFact   = markerPrefix + "fact "
	markerBegin  = markerPrefix + "begin "
	markerEnd    = markerPrefix + "end "
	markerDmesg  = markerPrefix + "dmesg"
	markerDone   = markerPrefix + "done"
)

var initTemplate = template.Must(template.New("init").Parse(`#!/bin/busybox sh
# /init of a Bridle kernel-matrix guest: set up the filesystems Bridle's
# privileged tests need, report what the kernel offers, run each test binary
# between markers the runner parses, then power off.
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run

fact() { echo "{{.Fact}}$1=$2"; }
# The mount points of these exist in sysfs when the kernel supports the
# filesystem; a failure is reported, not fatal, so tests can say what is missing.
try_mount() {
	if mount -t "$1" "$1" "$2" 2>/dev/null; then fact "mount.$1" ok; else fact "mount.$1" failed; fi
}
try_mount cgroup2 /sys/fs/cgroup
try_mount bpf /sys/fs/bpf
try_mount securityfs /sys/kernel/security
try_mount debugfs /sys/kernel/debug
try_mount tracefs /sys/kernel/tracing
if ip link set lo up; then fact net.lo up; else fact net.lo failed; fi

for w in $(cat /proc/cmdline); do
	case "$w" in
	bridle.guest=*) export BRIDLE_GUEST="${w#*=}" ;;
	bridle.expect_exec_mode=*) export BRIDLE_EXPECT_EXEC_MODE="${w#*=}" ;;
	esac
done
{{range .Env}}export {{.}}
{{end -}}
fact uname "$(uname -r)"
fact lsm "$(cat /sys/kernel/security/lsm 2>/dev/null)"
if [ -e /sys/kernel/btf/vmlinux ]; then fact btf yes; else fact btf no; fi
fact guest "$BRIDLE_GUEST"
fact expect_exec_mode "$BRIDLE_EXPECT_EXEC_MODE"

# Only critical kernel messages interleave with test output from here on;
# everything else is printed after the tests.
dmesg -n 3
dmesg -c >/dev/null

{{range .Binaries}}
echo "{{$.Begin}}{{.Name}}"
cd {{.Dir}} && {{$.Bin}}/{{.Name}} -test.v -test.count=1{{range $.Flags}} {{.}}{{end}}
rc=$?
cd /
echo; echo "{{$.End}}{{.Name}} exit=$rc"
{{end}}
echo; echo "{{.Dmesg}}"
dmesg
echo; echo "{{.Done}}"
sync
poweroff -f
`))

// initScript renders /init for the given binaries; flags are passed to every
// binary after -test.v -test.count=1, env (KEY=VALUE) is exported before
// the tests; both are shell-quoted here.
func initScript(bins []testBinary, flags, env []string) string {
	var qenv []string
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		qenv = append(qenv, k+"="+shellQuote(v))
	}
	quoted := make([]string, len(flags))
	for i, f := range flags {
		quoted[i] = shellQuote(f)
	}
	qbins := make([]testBinary, len(bins))
	for i, b := range bins {
		qbins[i] = testBinary{Name: b.Name, Dir: shellQuote(b.Dir)}
	}
	var b strings.Builder
	err := initTemplate.Execute(&b, map[string]any{
		"Binaries": qbins, "Flags": quoted, "Env": qenv, "Bin": guestBin,
		"Fact": markerFact, "Begin": markerBegin, "End": markerEnd,
		"Dmesg": markerDmesg, "Done": markerDone,
	})
	if err != nil {
		panic(err) // the template is fixed; an error is a bug here
	}
	return b.String()
}

func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=./:,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// baseTree is the guest's fixed part: busybox, /init, the device node the
// kernel opens as init's console before /dev is mounted, and the few /etc
// files Go's pure resolvers read (users for tests that drop privileges,
// hosts so "localhost" resolves without DNS).
func baseTree(busybox, init string) tree {
	t := tree{}
	for _, d := range []string{"/bin", "/sbin", "/usr/bin", "/usr/sbin", "/proc", "/sys", "/dev", "/tmp", "/run", "/root", "/etc", guestBin, guestSrc} {
		t.dir(d)
	}
	t["/tmp"] = entry{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777}
	t.add(entry{Path: "/bin/busybox", Mode: 0o755, Src: busybox})
	t.add(entry{Path: "/init", Mode: 0o755, Data: []byte(init)})
	t.add(entry{Path: "/dev/console", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o600, Dev: [2]uint32{5, 1}})
	t.add(entry{Path: "/etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")})
	t.add(entry{Path: "/etc/group", Mode: 0o644, Data: []byte("root:x:0:\nnogroup:x:65534:\n")})
	t.add(entry{Path: "/etc/hosts", Mode: 0o644, Data: []byte("127.0.0.1 localhost\n::1 localhost\n")})
	return t
}

// checkStaticBusybox makes sure busybox can run in a guest with no shared
// libraries: Debian's busybox-static package installs such a /bin/busybox,
// the plain busybox package a dynamic one.
func checkStaticBusybox(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("busybox %s: %w; install it with: apt-get install busybox-static", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("busybox %s is dynamically linked; the guest needs a static one: apt-get install busybox-static", p)
		}
	}
	return nil
}
