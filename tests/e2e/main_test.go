// Package e2e runs `bridle run` against the real kernel: real cgroups, real
// BPF programs, real processes that connect and exec. Every test here needs
// root, and CI runs them as root.
package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/tests/netnstest"

	"github.com/bridle-sh/bridle/daemon/audit"
)

var (
	bridleBin string // the bridle binary under test
	probeBin  string // tests/probe, run inside workloads
	binDir    string // world-readable directory holding both
	netnsPath string // the network namespace the tests run in

	// Two copies of the probe: distinct binaries (inodes) with identical
	// content, so exec tests need nothing from the system they run on.
	toolsDir    string
	allowedTool string
	refusedTool string
	execMode    string // what Bridle's own probe chose: lsm or kill
	features    status // what `bridle status` reported
)

// status is the part of `bridle status --json` the tests use.
type status struct {
	Kernel     string `json:"kernel"`
	ExecMode   string `json:"exec_mode"`
	UnixHooks  bool   `json:"unix_hooks"`
	UnixReason string `json:"unix_reason"`

	SocketDestroy       string `json:"socket_destroy"`
	SocketDestroyReason string `json:"socket_destroy_reason"`
	UnixShutdown        string `json:"unix_shutdown"`
	UnixShutdownReason  string `json:"unix_shutdown_reason"`

	SeccompGuard      string `json:"seccomp_guard"`
	FamilyGuard       bool   `json:"family_guard"`
	FamilyGuardReason string `json:"family_guard_reason"`
	UsernsGuard       bool   `json:"userns_guard"`
	UsernsGuardReason string `json:"userns_guard_reason"`
}

// workloadUser is the unprivileged user workloads run as.
const workloadUser = "nobody"

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e: these tests load BPF programs and need root (sudo make test)")
		return 1
	}
	sweepLeftovers()
	var err error
	binDir, err = os.MkdirTemp("", "bridle-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(binDir)
	// The workload user must be able to reach the probe.
	if err := os.Chmod(binDir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	bridleBin = filepath.Join(binDir, "bridle")
	probeBin = filepath.Join(binDir, "probe")
	for bin, pkg := range map[string]string{bridleBin: "../../cmd/bridle", probeBin: "../probe"} {
		if b := os.Getenv("BRIDLE_E2E_" + strings.ToUpper(filepath.Base(bin))); b != "" {
			// Prebuilt binaries, e.g. inside a kernel-matrix guest.
			if err := copyFile(b, bin); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			continue
		}
		out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, out)
			return 1
		}
	}
	toolsDir = filepath.Join(binDir, "tools")
	allowedTool, refusedTool = filepath.Join(toolsDir, "allowed"), filepath.Join(toolsDir, "refused")
	if err := os.Mkdir(toolsDir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for _, p := range []string{allowedTool, refusedTool} {
		if err := copyFile(probeBin, p); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	cleanup, err := setupNetns()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: network namespace:", err)
		return 1
	}
	defer cleanup()
	if execMode, err = probeExecMode(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "e2e: exec enforcement mode on this kernel: %s\n", execMode)
	return m.Run()
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

// setupNetns creates a private network namespace with loopback up and
// unprivileged ping allowed, so no test traffic leaves it and no host
// sysctl changes.
func setupNetns() (func(), error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(orig)
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("unshare: %w", err)
	}
	// Keep the namespace alive with a bind mount of this thread's handle.
	netnsPath = filepath.Join(binDir, "netns")
	if err := os.WriteFile(netnsPath, nil, 0o600); err != nil {
		return nil, err
	}
	if err := unix.Mount("/proc/thread-self/ns/net", netnsPath, "", unix.MS_BIND, ""); err != nil {
		return nil, fmt.Errorf("bind netns: %w", err)
	}
	setup := func() error {
		if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			return fmt.Errorf("ip link set lo up: %v %s", err, out)
		}
		if err := os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte("0 2147483647"), 0); err != nil {
			return err
		}
		return nil
	}
	// exec.Command forks from this locked thread, so the children inherit
	// its network namespace.
	err = setup()
	if rerr := unix.Setns(orig, unix.CLONE_NEWNET); rerr != nil {
		panic("e2e: cannot return to the host network namespace: " + rerr.Error())
	}
	if err != nil {
		return nil, err
	}
	return func() { _ = unix.Unmount(netnsPath, unix.MNT_DETACH) }, nil
}

// inNetns runs f on a thread inside the test namespace; sockets f creates
// stay there.
func inNetns(t testing.TB, f func()) {
	t.Helper()
	netnstest.Do(t, netnsPath, f)
}

func probeExecMode() (string, error) {
	out, err := exec.Command(bridleBin, "status", "--json").Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		return "", fmt.Errorf("bridle status: %w: %s", err, stderr)
	}
	if err := json.Unmarshal(out, &features); err != nil {
		return "", err
	}
	return features.ExecMode, nil
}

// result is what one `bridle run` did.
type result struct {
	stdout, stderr string
	status         int
	records        []audit.Record
}

// probeLine is the probe's one-line verdict (its first stdout line).
func (r result) probeLine() string {
	line, _, _ := strings.Cut(r.stdout, "\n")
	return line
}

// bridleRun runs `bridle run FLAGS -- CMD...` in the test namespace as the
// workload user, with decision records written to a file.
func bridleRun(t testing.TB, flags []string, cmd ...string) result {
	t.Helper()
	auditFile := filepath.Join(t.TempDir(), "audit.jsonl")
	args := append([]string{"--net=" + netnsPath, "--", bridleBin, "run", "--user", workloadUser, "--audit", auditFile}, flags...)
	args = append(args, "--")
	args = append(args, cmd...)
	c := exec.Command("nsenter", args...)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("bridle run: %v", err)
		}
		ws := ee.Sys().(syscall.WaitStatus)
		r.status = ws.ExitStatus()
	}
	if b, err := os.ReadFile(auditFile); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			var rec audit.Record
			if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
				t.Fatalf("audit record %q: %v", sc.Text(), err)
			}
			r.records = append(r.records, rec)
		}
	}
	t.Logf("bridle run %v -- %v\nstatus %d\nstdout: %s\nstderr: %s", flags, cmd, r.status, r.stdout, r.stderr)
	return r
}

// probe runs the probe as the workload's command with the probe itself
// allowed to run.
func probe(t testing.TB, flags []string, action ...string) result {
	t.Helper()
	flags = append([]string{"--allow-exec", probeBin}, flags...)
	return bridleRun(t, flags, append([]string{probeBin}, action...)...)
}

func wantAllowed(t testing.TB, r result) {
	t.Helper()
	if r.status != 0 || !strings.HasPrefix(r.probeLine(), "ok") {
		t.Fatalf("want allowed, got status %d line %q\n%s", r.status, r.probeLine(), r.stderr)
	}
}

// wantRefused checks the kernel refused the action (EPERM) and that Bridle
// recorded a matching denial.
func wantRefused(t testing.TB, r result, action, protocol string) audit.Record {
	t.Helper()
	if r.status != 2 || !strings.HasPrefix(r.probeLine(), "EPERM") {
		t.Fatalf("want EPERM, got status %d line %q\n%s", r.status, r.probeLine(), r.stderr)
	}
	return wantRecord(t, r, "deny", action, protocol)
}

func wantRecord(t testing.TB, r result, verdict, action, protocol string) audit.Record {
	t.Helper()
	for _, rec := range r.records {
		if string(rec.Verdict) == verdict && string(rec.Action) == action && string(rec.Protocol) == protocol {
			return rec
		}
	}
	t.Fatalf("no %s %s/%s record among %+v", verdict, action, protocol, r.records)
	return audit.Record{}
}

// tcpListener accepts and closes connections in the test namespace.
func tcpListener(t testing.TB, network, addr string) int {
	t.Helper()
	ln := listenInNetns(t, network, addr)
	t.Cleanup(func() { ln.Close() })
	go acceptAndClose(ln)
	return ln.Addr().(*net.TCPAddr).Port
}

// listenInNetns opens a TCP listener in the test namespace.
func listenInNetns(t testing.TB, network, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	var err error
	inNetns(t, func() { ln, err = net.Listen(network, addr) })
	if err != nil {
		// Which addresses the namespace has, for a listener that fails.
		out, _ := exec.Command("nsenter", "--net="+netnsPath, "--", "ip", "addr").CombinedOutput()
		t.Fatalf("%v; the test namespace's addresses:\n%s", err, out)
	}
	return ln
}

// udpListener returns a port with a UDP socket bound in the test namespace.
func udpListener(t testing.TB, network, addr string) int {
	t.Helper()
	var pc net.PacketConn
	inNetns(t, func() {
		var err error
		pc, err = net.ListenPacket(network, addr)
		if err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().(*net.UDPAddr).Port
}

// acceptAndClose serves a listener until it is closed.
func acceptAndClose(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}

// tcpHoldingListener accepts connections in the test namespace and keeps
// them open until the test ends, so only the client side can end them.
func tcpHoldingListener(t testing.TB, network, addr string) int {
	t.Helper()
	return holdConnections(t, listenInNetns(t, network, addr))
}

// holdConnections accepts every connection of ln and keeps them open until
// the test ends; it returns ln's port.
func holdConnections(t testing.TB, ln net.Listener) int {
	var held []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for _, c := range held {
			c.Close()
		}
	})
	return ln.Addr().(*net.TCPAddr).Port
}
