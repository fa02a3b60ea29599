package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// These tests run the probe unconfined against real loopback listeners: every
// action must report "ok" when nothing stops it, so that under Bridle an
// "EPERM" can only mean Bridle (or the kernel policy it set) said no.

func buildProbe(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "probe")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// runProbe returns the probe's trimmed stdout and exit status.
func runProbe(t *testing.T, bin string, args ...string) (string, int) {
	t.Helper()
	return runCmd(t, exec.Command(bin, args...))
}

func runCmd(t *testing.T, cmd *exec.Cmd) (string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	timer := time.AfterFunc(30*time.Second, func() { _ = cmd.Process.Kill() })
	defer timer.Stop()
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run %v: %v", cmd.Args, err)
	}
	if stderr.Len() > 0 {
		t.Logf("%v stderr: %s", cmd.Args[1:], strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), cmd.ProcessState.ExitCode()
}

func expect(t *testing.T, bin string, wantOut string, wantCode int, args ...string) {
	t.Helper()
	out, code := runProbe(t, bin, args...)
	if out != wantOut || code != wantCode {
		t.Errorf("probe %s: got %q exit %d, want %q exit %d", strings.Join(args, " "), out, code, wantOut, wantCode)
	}
}

// tcpListener accepts and closes connections until the test ends.
func tcpListener(t *testing.T, network, addr string) (port int) {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatalf("listen %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

func udpListener(t *testing.T, network, addr string) net.PacketConn {
	t.Helper()
	pc, err := net.ListenPacket(network, addr)
	if err != nil {
		t.Fatalf("listen %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// expectDatagram checks that the probe's payload arrived.
func expectDatagram(t *testing.T, pc net.PacketConn) {
	t.Helper()
	buf := make([]byte, 1500)
	_ = pc.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		t.Errorf("listener %s: no datagram: %v", pc.LocalAddr(), err)
		return
	}
	if string(buf[:n]) != string(payload) {
		t.Errorf("listener %s: got %q", pc.LocalAddr(), buf[:n])
	}
}

// closedPort finds a loopback TCP port with nothing listening.
func closedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

func TestProbe(t *testing.T) {
	bin := buildProbe(t)
	p4 := tcpListener(t, "tcp4", "127.0.0.1:0")
	p6 := tcpListener(t, "tcp6", "[::1]:0")
	a4 := fmt.Sprintf("127.0.0.1:%d", p4)
	a6 := fmt.Sprintf("[::1]:%d", p6)
	mapped := fmt.Sprintf("[::ffff:127.0.0.1]:%d", p4)

	t.Run("usage", func(t *testing.T) {
		for _, args := range [][]string{{}, {"no-such-action"}, {"tcp"}, {"tcp", "::1:80"}, {"tcp", "[127.0.0.1]:80"},
			{"udp-sendmmsg", "127.0.0.1:1", "[::1]:1"}} {
			if _, code := runProbe(t, bin, args...); code != exitUsage {
				t.Errorf("probe %q: exit %d, want %d", args, code, exitUsage)
			}
		}
	})

	t.Run("tcp", func(t *testing.T) {
		expect(t, bin, "ok", 0, "tcp", a4)
		expect(t, bin, "ok", 0, "tcp", a6)
		expect(t, bin, "ok", 0, "tcp", mapped)
		expect(t, bin, "error ECONNREFUSED", exitError, "tcp", fmt.Sprintf("127.0.0.1:%d", closedPort(t)))
	})

	t.Run("tcp-fastopen", func(t *testing.T) {
		for _, a := range []string{a4, a6, mapped} {
			out, code := runProbe(t, bin, "tcp-fastopen", a)
			if code != 0 || !strings.HasPrefix(out, "ok") {
				t.Errorf("tcp-fastopen %s: got %q exit %d", a, out, code)
			}
		}
	})

	t.Run("iouring-connect", func(t *testing.T) {
		if reason := ioUringUnavailable(); reason != "" {
			t.Skip(reason)
		}
		expect(t, bin, "ok", 0, "iouring-connect", a4)
		expect(t, bin, "ok", 0, "iouring-connect", a6)
		expect(t, bin, "ok", 0, "iouring-connect", mapped)
		expect(t, bin, "error ECONNREFUSED", exitError, "iouring-connect", fmt.Sprintf("127.0.0.1:%d", closedPort(t)))
	})

	t.Run("udp", func(t *testing.T) {
		u4 := udpListener(t, "udp4", "127.0.0.1:0")
		u4b := udpListener(t, "udp4", "127.0.0.1:0")
		u6 := udpListener(t, "udp6", "[::1]:0")
		ua4, ua4b, ua6 := u4.LocalAddr().String(), u4b.LocalAddr().String(), u6.LocalAddr().String()
		uMapped := fmt.Sprintf("[::ffff:127.0.0.1]:%d", u4.LocalAddr().(*net.UDPAddr).Port)

		for _, act := range []string{"udp-connect", "udp-sendto"} {
			expect(t, bin, "ok", 0, act, ua4)
			expectDatagram(t, u4)
			expect(t, bin, "ok", 0, act, ua6)
			expectDatagram(t, u6)
			expect(t, bin, "ok", 0, act, uMapped)
			expectDatagram(t, u4)
		}

		expect(t, bin, "ok sent=2", 0, "udp-sendmmsg", ua4, ua4b)
		expectDatagram(t, u4)
		expectDatagram(t, u4b)
		// Port 0 is invalid for a UDP destination (EINVAL): the second
		// message fails, exercising the short-count report.
		expect(t, bin, "error EINVAL sent=1", exitError, "udp-sendmmsg", ua4, "127.0.0.1:0")
		expectDatagram(t, u4)
	})

	t.Run("listen", func(t *testing.T) {
		portFile := filepath.Join(t.TempDir(), "port")
		done := make(chan string, 1)
		go func() {
			out, _ := runProbe(t, bin, "tcp-listen", "127.0.0.1:0", portFile, "10")
			done <- out
		}()
		var port string
		for deadline := time.Now().Add(10 * time.Second); port == ""; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("tcp-listen wrote no port")
			}
			if b, err := os.ReadFile(portFile); err == nil {
				port = strings.TrimSpace(string(b))
			}
		}
		c, err := net.Dial("tcp", "127.0.0.1:"+port)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if out := <-done; out != "ok accepted" {
			t.Errorf("tcp-listen: got %q", out)
		}
		expect(t, bin, "ok", 0, "udp-bind", "127.0.0.1:0")
		expect(t, bin, "ok", 0, "sockopt-pass")
	})

	// Unconfined, every routing action sends. The IPv4 source route and
	// the destination options header need CAP_NET_RAW on recent kernels.
	t.Run("routing", func(t *testing.T) {
		u4 := udpListener(t, "udp4", "127.0.0.1:0").LocalAddr().String()
		u6 := udpListener(t, "udp6", "[::1]:0").LocalAddr().String()
		expect(t, bin, "ok", 0, "rr4-cmsg", u4, "m")
		expect(t, bin, "ok", 0, "rthdr6", u6, "::1", "m")
		if out, code := runProbe(t, bin, "rthdr6-compat", u6, "::1", "m"); code != 0 && !strings.HasPrefix(out, "error ENOSYS") {
			t.Errorf("rthdr6-compat: got %q exit %d", out, code)
		}
		// Only Mobile IPv6 kernels take a routing header as ancillary data.
		if out, code := runProbe(t, bin, "rthdr6-cmsg", u6, "::1", "m"); code != 0 && out != "error EINVAL" {
			t.Errorf("rthdr6-cmsg: got %q exit %d", out, code)
		}
		if os.Geteuid() != 0 {
			t.Skip("the source route and destination options actions need CAP_NET_RAW: run as root")
		}
		expect(t, bin, "ok", 0, "srr4", u4, "127.0.0.1", "m")
		expect(t, bin, "ok", 0, "srr4-cmsg", u4, "127.0.0.1", "m")
		expect(t, bin, "ok", 0, "dstopts6-cmsg", u6, "m")
	})

	t.Run("unix", func(t *testing.T) {
		dir := t.TempDir()
		stream := filepath.Join(dir, "stream.sock")
		abstract := fmt.Sprintf("@bridle-probe-test-%d", os.Getpid())
		for _, name := range []string{stream, abstract} {
			ln, err := net.Listen("unix", name)
			if err != nil {
				t.Fatalf("listen unix %s: %v", name, err)
			}
			defer ln.Close()
			expect(t, bin, "ok", 0, "unix", name)
		}
		dgram := filepath.Join(dir, "dgram.sock")
		for _, name := range []string{dgram, abstract + "-dgram"} {
			pc, err := net.ListenPacket("unixgram", name)
			if err != nil {
				t.Fatalf("listen unixgram %s: %v", name, err)
			}
			defer pc.Close()
			expect(t, bin, "ok", 0, "unix-dgram", name)
			expectDatagram(t, pc)
		}
		expect(t, bin, "error ENOENT", exitError, "unix", filepath.Join(dir, "missing.sock"))
	})

	t.Run("raw", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("raw and packet sockets need CAP_NET_RAW; not root")
		}
		expect(t, bin, "ok", 0, "raw4")
		expect(t, bin, "ok", 0, "raw6")
		expect(t, bin, "ok", 0, "packet")
	})

	t.Run("exec", func(t *testing.T) {
		expect(t, bin, "", 0, "exec", "/bin/true")
		expect(t, bin, "", 1, "exec", "/bin/false")
		expect(t, bin, "error ENOENT", exitError, "exec", "/nonexistent/program")
		for _, act := range []string{"exec", "execveat", "exec-procfd", "exec-memfd"} {
			expect(t, bin, "", 0, act, "/bin/true")
			expect(t, bin, "", 1, act, "/bin/false")
			expect(t, bin, act+" passes args", 0, act, "/bin/echo", act, "passes", "args")
		}
	})

	t.Run("spawn", func(t *testing.T) {
		expect(t, bin, "ok", 0, "spawn", "tcp", a4)
		expect(t, bin, "error ECONNREFUSED", exitError, "spawn", "tcp", fmt.Sprintf("127.0.0.1:%d", closedPort(t)))
		expect(t, bin, "", 1, "spawn", "exec", "/bin/false")
		expect(t, bin, "killed SIGKILL", 128+9, "spawn", "exec", "/bin/sh", "-c", "kill -9 $$")
		expect(t, bin, "ok", 0, "spawn", "spawn", "tcp", a6)
	})

	t.Run("daemonize", func(t *testing.T) {
		dir := t.TempDir()
		res := filepath.Join(dir, "tcp.result")
		expect(t, bin, "ok daemonized", 0, "daemonize", res, "tcp", a4)
		if got := pollFile(t, res); got != "ok\n0\n" {
			t.Errorf("daemonize tcp result: %q", got)
		}

		// The grandchild reads its own /proc stat a moment later: by then
		// it must be in another session and not a child of the top-level
		// probe, and the top-level probe must have returned without it.
		res = filepath.Join(dir, "stat.result")
		cmd := exec.Command(bin, "daemonize", res, "exec", "/bin/sh", "-c", "sleep 1; cat /proc/$PPID/stat")
		out, code := runCmd(t, cmd)
		if out != "ok daemonized" || code != 0 {
			t.Fatalf("daemonize: got %q exit %d", out, code)
		}
		if _, err := os.Stat(res); err == nil {
			t.Errorf("result file exists as soon as daemonize returned: the top-level probe waited")
		}
		lines := strings.Split(pollFile(t, res), "\n")
		if len(lines) < 2 || lines[1] != "0" {
			t.Fatalf("daemonize stat result: %q", lines)
		}
		// Fields after "pid (comm)": state ppid pgrp session ...
		fields := strings.Fields(lines[0][strings.LastIndexByte(lines[0], ')')+1:])
		ppid, _ := strconv.Atoi(fields[1])
		sid, _ := strconv.Atoi(fields[3])
		mySid, _ := unix.Getsid(0)
		if ppid == cmd.Process.Pid || ppid == 0 {
			t.Errorf("grandchild's parent is %d (top-level probe %d): not reparented", ppid, cmd.Process.Pid)
		}
		if sid == mySid || sid == 0 {
			t.Errorf("grandchild's session %d is the test's session %d: no setsid", sid, mySid)
		}
	})

	t.Run("hold-tcp", func(t *testing.T) {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			// First connection: closed by the server after a moment (EOF);
			// the second is held open until the probe's timeout.
			c, err := ln.Accept()
			if err != nil {
				return
			}
			time.Sleep(200 * time.Millisecond)
			c.Close()
			c2, err := ln.Accept()
			if err != nil {
				return
			}
			defer c2.Close()
			time.Sleep(2 * time.Second)
		}()
		addr := ln.Addr().String()
		expect(t, bin, "ok connected\nclosed EOF", 0, "hold-tcp", addr, "10")
		expect(t, bin, "ok connected\nclosed timeout", 0, "hold-tcp", addr, "0.3")
	})

	t.Run("sleep", func(t *testing.T) {
		expect(t, bin, "ok", 0, "sleep", "0.1")
	})

	t.Run("ping", func(t *testing.T) {
		testPing(t, bin)
	})
}

// pollFile waits for the daemonized grandchild's result file.
func pollFile(t *testing.T, path string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil {
			return string(b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no result file %s", path)
	return ""
}

// ioUringUnavailable says why io_uring cannot be used here at all, or "".
func ioUringUnavailable() string {
	if b, err := os.ReadFile("/proc/sys/kernel/io_uring_disabled"); err == nil && strings.TrimSpace(string(b)) == "2" {
		return "io_uring disabled: kernel.io_uring_disabled=2"
	}
	var params [120]byte
	fd, _, e := unix.Syscall(unix.SYS_IO_URING_SETUP, 1, uintptr(unsafe.Pointer(&params[0])), 0)
	if e == unix.ENOSYS {
		return "io_uring_setup: ENOSYS (kernel built without io_uring)"
	}
	if e == 0 {
		unix.Close(int(fd))
	}
	return ""
}

// testPing runs the ping actions in a fresh network namespace, where the
// test may set net.ipv4.ping_group_range without touching the host. A
// locked OS thread enters the namespace; probes forked from it inherit it.
// The thread is never unlocked, so the Go runtime discards it afterwards.
func testPing(t *testing.T, bin string) {
	type result struct {
		args []string
		out  string
		code int
	}
	type report struct {
		skip    string
		err     error
		results []result
	}
	done := make(chan report)
	go func() {
		var r report
		defer func() { done <- r }()
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			r.skip = fmt.Sprintf("cannot create a network namespace: %v", err)
			return
		}
		if err := loopbackUp(); err != nil {
			r.err = fmt.Errorf("bring lo up in the new netns: %w", err)
			return
		}
		run := func(args ...string) {
			cmd := exec.Command(bin, args...)
			var stdout bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, os.Stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if err != nil && !errors.As(err, &ee) {
				r.err = err
				return
			}
			r.results = append(r.results, result{args, strings.TrimSpace(stdout.String()), cmd.ProcessState.ExitCode()})
		}
		// A new netns starts with ping_group_range "1 0" (nobody): the
		// kernel refuses the ping socket itself, a refusal without Bridle.
		run("ping", "127.0.0.1")
		gid := os.Getgid()
		rng := []byte(fmt.Sprintf("%d %d\n", gid, gid))
		if err := os.WriteFile("/proc/sys/net/ipv4/ping_group_range", rng, 0); err != nil {
			r.err = fmt.Errorf("set ping_group_range in the new netns: %w", err)
			return
		}
		for _, act := range []string{"ping", "ping-sendto"} {
			run(act, "127.0.0.1")
			run(act, "::1")
			run(act, "[::1]")
		}
	}()
	r := <-done
	if r.skip != "" {
		t.Skip(r.skip)
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	for i, res := range r.results {
		wantOut, wantCode := "ok reply", 0
		if i == 0 {
			wantOut, wantCode = "EPERM socket EACCES", exitDenied
		}
		if res.out != wantOut || res.code != wantCode {
			t.Errorf("probe %s (in netns): got %q exit %d, want %q exit %d", strings.Join(res.args, " "), res.out, res.code, wantOut, wantCode)
		}
	}
}

// loopbackUp sets IFF_UP on lo in the calling thread's network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}
