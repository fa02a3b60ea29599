// Package smoke checks that a kernel-matrix guest offers what Bridle's
// privileged tests rely on. It is the runner's own self-test:
//
//	go run ./tests/kernels -pkg ./tests/kernels/testdata/smoke
//
// Outside a guest (BRIDLE_GUEST unset) every test skips, so it never touches
// the host.
package smoke

import (
	"bufio"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

func inGuest(t *testing.T) {
	t.Helper()
	if os.Getenv("BRIDLE_GUEST") == "" {
		t.Skip("not in a kernel-matrix guest (BRIDLE_GUEST unset)")
	}
}

// mountPoint finds the first mount of fstype in /proc/self/mountinfo, the way
// Bridle finds cgroup2 and bpffs instead of assuming their paths.
func mountPoint(t *testing.T, fstype string) string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) >= 5 && len(qf) >= 1 && qf[0] == fstype {
			return pf[4]
		}
	}
	t.Fatalf("no %s mount in /proc/self/mountinfo", fstype)
	return ""
}

func TestKernelRelease(t *testing.T) {
	inGuest(t)
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest %s runs kernel %s", os.Getenv("BRIDLE_GUEST"), strings.TrimSpace(string(b)))
}

func TestActiveLSMsMatchVariant(t *testing.T) {
	inGuest(t)
	b, err := os.ReadFile("/sys/kernel/security/lsm")
	if err != nil {
		t.Fatal(err)
	}
	lsms := strings.Split(strings.TrimSpace(string(b)), ",")
	t.Logf("active LSMs: %s", strings.Join(lsms, ","))
	hasBPF := slices.Contains(lsms, "bpf")
	switch mode := os.Getenv("BRIDLE_EXPECT_EXEC_MODE"); mode {
	case "lsm":
		if !hasBPF {
			t.Errorf("expect_exec_mode=lsm but bpf is not an active LSM")
		}
	case "kill":
		if hasBPF {
			t.Errorf("expect_exec_mode=kill but bpf is an active LSM")
		}
	default:
		t.Errorf("BRIDLE_EXPECT_EXEC_MODE=%q, want lsm or kill", mode)
	}
}

func TestBTF(t *testing.T) {
	inGuest(t)
	st, err := os.Stat("/sys/kernel/btf/vmlinux")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("/sys/kernel/btf/vmlinux: %d bytes", st.Size())
}

func TestCgroup2(t *testing.T) {
	inGuest(t)
	root := mountPoint(t, "cgroup2")
	dir := filepath.Join(root, "bridle-smoke")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(dir)
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	t.Logf("cgroup2 at %s; child cgroup id (inode) %d", root, st.Ino)
}

func TestBPFFS(t *testing.T) {
	inGuest(t)
	root := mountPoint(t, "bpf")
	var fs syscall.Statfs_t
	if err := syscall.Statfs(root, &fs); err != nil {
		t.Fatal(err)
	}
	const bpfFSMagic = 0xcafe4a11
	if fs.Type != bpfFSMagic {
		t.Fatalf("%s: filesystem magic %#x, want bpffs %#x", root, fs.Type, bpfFSMagic)
	}
	t.Logf("bpffs at %s", root)
}

func TestLoopback(t *testing.T) {
	inGuest(t)
	for _, network := range []string{"tcp4", "tcp6"} {
		t.Run(network, func(t *testing.T) {
			l, err := net.Listen(network, "localhost:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			go func() {
				if c, err := l.Accept(); err == nil {
					c.Close()
				}
			}()
			c, err := net.Dial(network, l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
		})
	}
}

func TestTestdataIsWorkingDirectory(t *testing.T) {
	inGuest(t)
	if _, err := os.Stat("testdata/marker.txt"); err != nil {
		t.Fatalf("package testdata not found from the working directory: %v", err)
	}
}

// deniedUID is the user the LSM test's program refuses to let exec. Keying on
// a uid no one else uses keeps the program from touching the guest's init
// or the test binary itself.
const deniedUID = 4242

// TestBPFLSMDeniesExec loads a bprm_check_security program that refuses exec
// to deniedUID and checks the kernel enforces it exactly when bpf is an
// active LSM. In the nobpflsm guest the program still loads and attaches,
// and exec still succeeds: the trap that makes Bridle probe
// /sys/kernel/security/lsm instead of trusting a successful attach.
func TestBPFLSMDeniesExec(t *testing.T) {
	inGuest(t)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:       "smoke_bprm",
		Type:       ebpf.LSM,
		AttachType: ebpf.AttachLSMMac,
		AttachTo:   "bprm_check_security",
		License:    "GPL",
		Instructions: asm.Instructions{
			asm.FnGetCurrentUidGid.Call(),
			asm.Mov.Reg32(asm.R0, asm.R0), // keep the uid, the low half
			asm.JNE.Imm(asm.R0, deniedUID, "allow"),
			asm.Mov.Imm(asm.R0, -1), // -EPERM
			asm.Return(),
			asm.Mov.Imm(asm.R0, 0).WithSymbol("allow"),
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("load LSM program: %+v", err)
	}
	defer prog.Close()
	l, err := link.AttachLSM(link.LSMOptions{Program: prog})
	if err != nil {
		t.Fatalf("attach LSM program: %v", err)
	}
	defer l.Close()

	cmd := exec.Command("/bin/busybox", "true")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: deniedUID, Gid: deniedUID}}
	err = cmd.Run()
	switch mode := os.Getenv("BRIDLE_EXPECT_EXEC_MODE"); mode {
	case "lsm":
		if !errors.Is(err, syscall.EPERM) {
			t.Fatalf("exec as uid %d: got %v, want EPERM from the LSM program", deniedUID, err)
		}
		t.Logf("exec as uid %d refused: %v", deniedUID, err)
	case "kill":
		if err != nil {
			t.Fatalf("exec as uid %d: %v; without bpf in lsm= the program should never run", deniedUID, err)
		}
		t.Logf("program attached but never ran, as expected without the bpf LSM")
	default:
		t.Fatalf("BRIDLE_EXPECT_EXEC_MODE=%q, want lsm or kill", mode)
	}
}
