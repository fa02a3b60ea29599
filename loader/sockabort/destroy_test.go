package sockabort

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/loader/internal/kernel"
)

// The test binary doubles as a helper run inside test cgroups, for what the
// probe tool has no action for: holding UDP sockets and many connections.
// BRIDLE_DESTROY_HELPER selects the helper; its arguments follow argv[0].
func init() {
	if os.Getenv("BRIDLE_DESTROY_HELPER") == "" {
		return
	}
	os.Exit(runDestroyHelper(os.Args[1:]))
}

func runDestroyHelper(args []string) int {
	if len(args) < 2 {
		fmt.Println("usage: udp-connected|udp-bound|tcp-many ADDR [N]")
		return 2
	}
	ap, err := netip.ParseAddrPort(args[1])
	if err != nil {
		fmt.Println("error", err)
		return 2
	}
	var family int
	var sa unix.Sockaddr
	if ap.Addr().Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	} else {
		family, sa = unix.AF_INET6, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	switch args[0] {
	case "udp-connected":
		// A connected UDP socket that has sent one datagram, then waits
		// for a reply that never comes; reports what the receive returns,
		// then, once told to on stdin, what a send returns.
		fd, err := unix.Socket(family, unix.SOCK_DGRAM, 0)
		if err == nil {
			err = unix.Connect(fd, sa)
		}
		if err == nil {
			_, err = unix.Write(fd, []byte("hello"))
		}
		if err != nil {
			fmt.Println("error", errName(err))
			return 1
		}
		fmt.Println("ok connected")
		_, _, rerr := unix.Recvfrom(fd, make([]byte, 64), 0)
		fmt.Println("recv", errName(rerr))
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		_, werr := unix.Write(fd, []byte("again"))
		fmt.Println("send", errName(werr))
		return 0
	case "udp-bound":
		// An unconnected socket bound to ADDR (port 0: any), waiting.
		fd, err := unix.Socket(family, unix.SOCK_DGRAM, 0)
		if err == nil {
			err = unix.Bind(fd, sa)
		}
		if err != nil {
			fmt.Println("error", errName(err))
			return 1
		}
		fmt.Println("ok bound")
		_, _, rerr := unix.Recvfrom(fd, make([]byte, 64), 0)
		fmt.Println("recv", errName(rerr))
		return 0
	case "tcp-listen":
		// A listening socket, waiting in accept.
		fd, err := unix.Socket(family, unix.SOCK_STREAM, 0)
		if err == nil {
			err = unix.Bind(fd, sa)
		}
		if err == nil {
			err = unix.Listen(fd, 8)
		}
		if err != nil {
			fmt.Println("error", errName(err))
			return 1
		}
		fmt.Println("ok listening")
		_, _, aerr := unix.Accept(fd)
		fmt.Println("accept", errName(aerr))
		return 0
	case "tcp-many":
		// N connections, held until stdin closes.
		if len(args) != 3 {
			fmt.Println("usage: tcp-many ADDR N")
			return 2
		}
		n, _ := strconv.Atoi(args[2])
		var conns []net.Conn
		for range n {
			c, err := net.Dial("tcp", args[1])
			if err != nil {
				fmt.Println("error", err)
				return 1
			}
			conns = append(conns, c)
		}
		fmt.Println("ok", len(conns))
		_, _ = io.Copy(io.Discard, os.Stdin)
		return 0
	}
	fmt.Println("unknown helper", args[0])
	return 2
}

func errName(err error) string {
	var errno unix.Errno
	if err == nil {
		return "ok"
	}
	if errors.As(err, &errno) {
		return unix.ErrnoName(errno)
	}
	return err.Error()
}

// holder is a process started in a cgroup whose output lines are read as
// they come.
type holder struct {
	name  string
	cmd   *exec.Cmd
	lines chan string
	stdin io.WriteCloser
}

// startIn starts a command in a cgroup and waits for its first line, which
// must begin with "ok".
func startIn(t testing.TB, cgroup, name string, env []string, bin string, args ...string) *holder {
	t.Helper()
	return startInWith(t, cgroup, name, env, nil, bin, args...)
}

// next is the holder's next line, or "" when it ends or the wait runs out.
func (h *holder) next(t testing.TB, wait time.Duration) string {
	t.Helper()
	select {
	case l := <-h.lines:
		return l
	case <-time.After(wait):
		return ""
	}
}

// quiet reports whether the holder printed nothing for a while: its socket
// is still open.
func (h *holder) quiet(wait time.Duration) (bool, string) {
	select {
	case l := <-h.lines:
		return false, l
	case <-time.After(wait):
		return true, ""
	}
}

// tcpServer accepts connections on loopback and keeps them, so a client
// sees its connection end only when something else ends it.
type tcpServer struct {
	ln    net.Listener
	conns chan net.Conn
}

func newTCPServer(t testing.TB, network, addr string) *tcpServer {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &tcpServer{ln: ln, conns: make(chan net.Conn, 1<<15)}
	t.Cleanup(func() {
		ln.Close()
		for {
			select {
			case c := <-s.conns:
				c.Close()
			default:
				return
			}
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns <- c
		}
	}()
	return s
}

func (s *tcpServer) addr() string { return s.ln.Addr().String() }

// resetAll aborts the server side of every connection accepted so far, so
// none lingers in TIME_WAIT and weighs on the next measurement.
func (s *tcpServer) resetAll() {
	for {
		select {
		case c := <-s.conns:
			_ = c.(*net.TCPConn).SetLinger(0)
			c.Close()
		default:
			return
		}
	}
}

// closeAll closes the server side of every connection accepted so far.
func (s *tcpServer) closeAll() {
	for {
		select {
		case c := <-s.conns:
			c.Close()
		default:
			return
		}
	}
}

// subCgroup makes a cgroup below parent, removed before it.
func subCgroup(t testing.TB, parent, name string) string {
	t.Helper()
	dir := filepath.Join(parent, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
		for range 100 {
			if os.Remove(dir) == nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	return dir
}

// destroyerFor returns a destroyer using method. On this project's hosts
// both methods must work; elsewhere a missing one is skipped with the
// reason, unless the kernel has what the method needs.
func destroyerFor(t testing.TB, method DestroyMethod) *Destroyer {
	t.Helper()
	d, err := NewDestroyer(testCgroupRoot(t), method, nil)
	if err != nil {
		var ue *UnsupportedError
		if errors.As(err, &ue) && !(method == DestroyIter && kernel.HasFunc(nil, "bpf_sock_destroy")) {
			t.Skipf("%s method not available here: %v", method, err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// Revocation: a workload holds TCP connections (IPv4, IPv6, one from a
// sub-cgroup) and UDP sockets (connected IPv4 and IPv6, bound unconnected);
// a process in another cgroup holds a connection to the same server. The
// task ends and its sockets are destroyed. Every workload socket is aborted
// at once; the other process's connection is untouched. (That the workload
// cannot connect again is the enforcer's part: loader's TestDestroySockets.)
func TestDestroySockets(t *testing.T) {
	type destroyFunc func(id uint64) (DestroyStats, error)
	methods := []struct {
		name    string
		prepare func(t *testing.T) destroyFunc
	}{
		{"auto", func(t *testing.T) destroyFunc {
			a := testAborter(t)
			if f := a.DestroyFeature(); f.Method == DestroyNone {
				t.Skipf("no way to destroy sockets here: %s", f.Reason)
			}
			return func(id uint64) (DestroyStats, error) { return a.Destroy(id) }
		}},
		{"iter", func(t *testing.T) destroyFunc {
			d := destroyerFor(t, DestroyIter)
			return func(id uint64) (DestroyStats, error) { return d.Destroy(DestroyOptions{}, id) }
		}},
		{"netlink", func(t *testing.T) destroyFunc {
			d := destroyerFor(t, DestroyNetlink)
			return func(id uint64) (DestroyStats, error) { return d.Destroy(DestroyOptions{}, id) }
		}},
	}
	for _, m := range methods {
		t.Run(m.name, func(t *testing.T) {
			requireRoot(t)
			destroy := m.prepare(t)
			cg, id := testCgroup(t)
			probe := probeBinary(t)
			child := subCgroup(t, cg, "child")
			other, _ := testCgroup(t)
			self, _ := os.Executable()
			helper := []string{"BRIDLE_DESTROY_HELPER=1"}

			srv4 := newTCPServer(t, "tcp4", "127.0.0.1:0")
			srv6 := newTCPServer(t, "tcp6", "[::1]:0")
			udp4, err := net.ListenPacket("udp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer udp4.Close()
			udp6, err := net.ListenPacket("udp6", "[::1]:0")
			if err != nil {
				t.Fatal(err)
			}
			defer udp6.Close()

			workload := []*holder{
				startIn(t, cg, "tcp4", nil, probe, "hold-tcp", srv4.addr(), "30"),
				startIn(t, cg, "tcp6", nil, probe, "hold-tcp", srv6.addr(), "30"),
				startIn(t, child, "tcp4 in a sub-cgroup", nil, probe, "hold-tcp", srv4.addr(), "30"),
				startIn(t, cg, "udp4 connected", helper, self, "udp-connected", udp4.LocalAddr().String()),
				startIn(t, cg, "udp6 connected", helper, self, "udp-connected", udp6.LocalAddr().String()),
				startIn(t, cg, "udp4 bound", helper, self, "udp-bound", "127.0.0.1:0"),
			}
			bystander := startIn(t, other, "tcp4 of another cgroup", nil, probe, "hold-tcp", srv4.addr(), "30")

			// The task ends: its sockets go.
			start := time.Now()
			st, err := destroy(id)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: destroyed %d TCP and %d UDP sockets in one call of %v (%d namespace)",
				st.Method, st.TCP, st.UDP, st.Duration, st.Namespaces)
			if st.TCP != 3 || st.UDP != 3 || st.Failed != 0 {
				t.Errorf("stats %+v, want 3 TCP, 3 UDP, no failure", st)
			}

			want := map[string]string{
				"tcp4":                 "closed ECONNABORTED",
				"tcp6":                 "closed ECONNABORTED",
				"tcp4 in a sub-cgroup": "closed ECONNABORTED",
				"udp4 connected":       "recv ECONNABORTED",
				"udp6 connected":       "recv ECONNABORTED",
				"udp4 bound":           "recv ECONNABORTED",
			}
			for _, h := range workload {
				got := h.next(t, 2*time.Second)
				t.Logf("%s: %q, seen %v after the call began", h.name, got, time.Since(start).Round(time.Microsecond))
				if got != want[h.name] {
					t.Errorf("%s: got %q, want %q", h.name, got, want[h.name])
				}
			}
			// A send on a connected UDP socket is not checked by the
			// cgroup hooks. Once the call has returned the socket has
			// lost its peer, so a plain send has no destination. (The
			// receive is woken a moment before the peer is cleared: a
			// send racing with the call itself can still go out.)
			for _, h := range workload[3:5] {
				if _, err := io.WriteString(h.stdin, "send\n"); err != nil {
					t.Fatal(err)
				}
				if got := h.next(t, 2*time.Second); got != "send EDESTADDRREQ" {
					t.Errorf("%s: got %q after the call, want send EDESTADDRREQ", h.name, got)
				}
			}
			if ok, l := bystander.quiet(200 * time.Millisecond); !ok {
				t.Fatalf("another cgroup's connection ended: %q", l)
			}
			// Its connection still works end to end: closing the server
			// side gives it an orderly EOF, not a reset.
			srv4.closeAll()
			if got := bystander.next(t, 2*time.Second); got != "closed EOF" {
				t.Fatalf("another cgroup's connection: %q, want closed EOF", got)
			}
		})
	}
}

// The socket tables are per network namespace. A workload process in a
// namespace of its own keeps its connection when only the caller's
// namespace is swept, and loses it when DestroySockets finds the namespace
// through the workload's processes.
func TestDestroySocketsOtherNetNS(t *testing.T) {
	for _, method := range []DestroyMethod{DestroyIter, DestroyNetlink} {
		t.Run(string(method), func(t *testing.T) {
			requireRoot(t)
			d := destroyerFor(t, method)
			cg, id := testCgroup(t)
			probe := probeBinary(t)

			h, err := inNewNetNS(func() (*holder, error) {
				// The listener and the holder are created on the
				// namespace's thread, so both live in it.
				srv, err := net.Listen("tcp4", "127.0.0.1:0")
				if err != nil {
					return nil, err
				}
				t.Cleanup(func() { srv.Close() })
				go func() {
					for {
						c, err := srv.Accept()
						if err != nil {
							return
						}
						t.Cleanup(func() { c.Close() })
					}
				}()
				return startIn(t, cg, "tcp4 in another netns", nil, probe, "hold-tcp", srv.Addr().String(), "30"), nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if h == nil {
				t.FailNow() // startIn failed on the namespace's thread
			}

			st, err := d.Destroy(DestroyOptions{NetNS: "/proc/self/ns/net"}, id)
			if err != nil {
				t.Fatal(err)
			}
			if st.TCP != 0 {
				t.Fatalf("host namespace sweep: %+v, want nothing destroyed", st)
			}
			if ok, l := h.quiet(100 * time.Millisecond); !ok {
				t.Fatalf("connection ended by a sweep of another namespace: %q", l)
			}

			start := time.Now()
			st, err = d.Destroy(DestroyOptions{}, id)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %+v", method, st)
			if st.TCP != 1 || st.Namespaces != 2 {
				t.Fatalf("stats %+v, want 1 TCP socket over 2 namespaces", st)
			}
			if got := h.next(t, 2*time.Second); got != "closed ECONNABORTED" {
				t.Fatalf("%q, want closed ECONNABORTED", got)
			}
			t.Logf("aborted %v after the call began", time.Since(start))
		})
	}
}

// inNewNetNS runs fn on a thread in a new network namespace with loopback
// up, then brings the thread back to where it was.
func inNewNetNS[T any](fn func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		defer func() { done <- r }()
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			r.err = err
			return
		}
		defer home.Close()
		if r.err = unix.Unshare(unix.CLONE_NEWNET); r.err != nil {
			return
		}
		if r.err = loopbackUp(); r.err == nil {
			r.v, r.err = fn()
		}
		if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err != nil {
			// Stay locked: Go retires the thread with the goroutine.
			r.err = errors.Join(r.err, err)
			return
		}
		runtime.UnlockOSThread()
	}()
	r := <-done
	return r.v, r.err
}

// loopbackUp brings up lo in the calling thread's network namespace.
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

// Listening sockets stay open unless asked for.
func TestDestroySocketsListeners(t *testing.T) {
	for _, method := range []DestroyMethod{DestroyIter, DestroyNetlink} {
		t.Run(string(method), func(t *testing.T) {
			requireRoot(t)
			d := destroyerFor(t, method)
			cg, id := testCgroup(t)
			self, _ := os.Executable()
			h := startIn(t, cg, "listener", []string{"BRIDLE_DESTROY_HELPER=1"}, self, "tcp-listen", "127.0.0.1:0")
			st, err := d.Destroy(DestroyOptions{}, id)
			if err != nil {
				t.Fatal(err)
			}
			if st.TCP != 0 || (method == DestroyIter && st.Kept != 1) {
				t.Fatalf("listener destroyed by default: %+v", st)
			}
			if ok, l := h.quiet(100 * time.Millisecond); !ok {
				t.Fatalf("listener ended: %q", l)
			}
			st, err = d.Destroy(DestroyOptions{Listeners: true}, id)
			if err != nil {
				t.Fatal(err)
			}
			if st.TCP != 1 {
				t.Fatalf("listener not destroyed when asked: %+v", st)
			}
			got := h.next(t, 2*time.Second)
			t.Logf("listener: %q", got)
			if !strings.HasPrefix(got, "accept E") {
				t.Fatalf("%q, want accept failing", got)
			}
		})
	}
}

// A cgroup id that names nothing, and the root cgroup, are refused.
func TestDestroySocketsBadCgroup(t *testing.T) {
	requireRoot(t)
	d := destroyerFor(t, DestroyAuto)
	if _, err := d.Destroy(DestroyOptions{}, 1); err == nil || !strings.Contains(err.Error(), "root cgroup") {
		t.Fatalf("root cgroup: %v", err)
	}
	if _, err := d.Destroy(DestroyOptions{}, 1<<62); err == nil || !strings.Contains(err.Error(), "no such cgroup") {
		t.Fatalf("unknown cgroup: %v", err)
	}
}

// The netlink filter is a sock_diag bytecode program the kernel audits
// before running; this checks its jumps without a kernel.
func TestCgroupBytecodeLayout(t *testing.T) {
	for n := 1; n <= 4; n++ {
		ids := make([]uint64, n)
		for i := range ids {
			ids[i] = uint64(100 + i)
		}
		bc := cgroupBytecode(ids)
		if want := n*16 - 4; len(bc) != want {
			t.Fatalf("%d ids: %d bytes, want %d", n, len(bc), want)
		}
		// Run the program as the kernel does for each id and for a miss.
		for _, probe := range append(ids, 999) {
			want := probe != 999
			if got := runBytecode(bc, probe); got != want {
				t.Errorf("%d ids, cgroup %d: matched %v, want %v", n, probe, got, want)
			}
		}
	}
}

// runBytecode mirrors inet_diag_bc_run for the two ops the filter uses.
func runBytecode(bc []byte, cgroup uint64) bool {
	off, l := 0, len(bc)
	for l > 0 {
		code, yes := bc[off], int(bc[off+1])
		no := int(uint16(bc[off+2]) | uint16(bc[off+3])<<8)
		match := false
		switch code {
		case inetDiagBcCgroupCond:
			id := uint64(0)
			for i := 7; i >= 0; i-- {
				id = id<<8 | uint64(bc[off+4+i])
			}
			match = id == cgroup
		case inetDiagBcJmp:
			match = false
		}
		if match {
			off, l = off+yes, l-yes
		} else {
			off, l = off+no, l-no
		}
	}
	return l == 0
}

// BenchmarkDestroySockets measures one DestroySockets call. "scan" sweeps a
// table holding N idle connections of another cgroup (2N sockets with the
// server side): the cost every revocation pays on a busy host. "abort"
// destroys N connections of the target cgroup.
func BenchmarkDestroySockets(b *testing.B) {
	requireRoot(b)
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	helper := []string{"BRIDLE_DESTROY_HELPER=1"}
	for _, method := range []DestroyMethod{DestroyIter, DestroyNetlink} {
		d := destroyerFor(b, method)
		for _, n := range []int{0, 1000, 10000} {
			b.Run(fmt.Sprintf("scan/%s/%d", method, n), func(b *testing.B) {
				_, id := testCgroup(b)
				other, _ := testCgroup(b)
				srv := newTCPServer(b, "tcp4", "127.0.0.1:0")
				if n > 0 {
					startIn(b, other, "idle", helper, self, "tcp-many", srv.addr(), strconv.Itoa(n))
					// Runs before the helper is killed: the server
					// resets, so no side is left in TIME_WAIT.
					b.Cleanup(srv.resetAll)
				}
				b.ResetTimer()
				for b.Loop() {
					if _, err := d.Destroy(DestroyOptions{}, id); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
		for _, n := range []int{1, 100, 1000} {
			b.Run(fmt.Sprintf("abort/%s/%d", method, n), func(b *testing.B) {
				target, id := testCgroup(b)
				srv := newTCPServer(b, "tcp4", "127.0.0.1:0")
				var total time.Duration
				var iters int
				for b.Loop() {
					b.StopTimer()
					h := startIn(b, target, "workload", helper, self, "tcp-many", srv.addr(), strconv.Itoa(n))
					b.StartTimer()
					st, err := d.Destroy(DestroyOptions{}, id)
					b.StopTimer()
					if err != nil {
						b.Fatal(err)
					}
					if st.TCP != n {
						b.Fatalf("destroyed %d, want %d", st.TCP, n)
					}
					total += st.Duration
					iters++
					h.stdin.Close()
					_ = h.cmd.Wait()
					srv.resetAll()
					b.StartTimer()
				}
				b.ReportMetric(float64(total.Nanoseconds())/float64(iters)/float64(n), "ns/socket")
			})
		}
	}
}
