package bench

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// The DNS benchmarks' client is a process of its own: a confined workload
// is a cgroup, and the resolver answering it runs in the benchmark process,
// whose sockets must stay outside that cgroup. It is this test binary run
// again with queryClientEnv set, so the same client, built once, queries
// the upstream directly, Bridle's resolver directly and, from inside a
// workload, whatever address the kernel steers to the resolver.
//
// It reads commands on stdin, one a line,
//
//	query SERVER NAME N WORKERS
//
// sends N A queries for NAME to SERVER (an IPv4 address and port) from
// WORKERS unconnected UDP sockets, each worker one query at a time, and
// answers "ok ELAPSED P50 P99" (nanoseconds) or "err MESSAGE". Each query
// is one sendto and one recvfrom with a prebuilt message, so the client
// costs the server under test as little as a client can; the answer must
// be NOERROR with an answer record, carry the query's ID and come from
// SERVER, as a stub resolver requires.
const queryClientEnv = "BRIDLE_BENCH_DNS_CLIENT"

func TestMain(m *testing.M) {
	if os.Getenv(queryClientEnv) != "" {
		os.Exit(queryClientMain(os.Stdin, os.Stdout))
	}
	os.Exit(m.Run())
}

func queryClientMain(in io.Reader, out io.Writer) int {
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		res, err := runQueries(strings.Fields(sc.Text()))
		if err != nil {
			fmt.Fprintf(out, "err %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
			continue
		}
		fmt.Fprintf(out, "ok %d %d %d\n", res.elapsed, res.p50, res.p99)
	}
	return 0
}

// queryResult is one command's outcome: the wall time of all its queries
// and the median and 99th percentile of a single query's round trip.
type queryResult struct {
	elapsed, p50, p99 time.Duration
}

func runQueries(args []string) (queryResult, error) {
	if len(args) != 5 || args[0] != "query" {
		return queryResult{}, fmt.Errorf("command %q: want query SERVER NAME N WORKERS", args)
	}
	server, err := netip.ParseAddrPort(args[1])
	if err != nil || !server.Addr().Is4() {
		return queryResult{}, fmt.Errorf("server %q: want an IPv4 address and port", args[1])
	}
	n, err1 := strconv.Atoi(args[3])
	workers, err2 := strconv.Atoi(args[4])
	if err1 != nil || err2 != nil || n < 1 || workers < 1 {
		return queryResult{}, fmt.Errorf("count %q and workers %q: want positive numbers", args[3], args[4])
	}
	workers = min(workers, n)
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(args[2]), dns.TypeA)
	msg, err := q.Pack()
	if err != nil {
		return queryResult{}, fmt.Errorf("pack query: %w", err)
	}
	lat := make([][]time.Duration, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		share := n / workers
		if w < n%workers {
			share++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat[w], errs[w] = queryLoop(server, msg, share, uint16(w)<<12)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return queryResult{}, err
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	return queryResult{elapsed: elapsed, p50: all[len(all)/2], p99: all[len(all)*99/100]}, nil
}

// queryLoop sends n queries one after the other from one socket and
// returns each one's round trip. IDs start at idBase, so workers' replies
// cannot be taken for each other's.
func queryLoop(server netip.AddrPort, msg []byte, n int, idBase uint16) ([]time.Duration, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval((2 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return nil, err
	}
	to := &unix.SockaddrInet4{Addr: server.Addr().As4(), Port: int(server.Port())}
	q := slices.Clone(msg)
	buf := make([]byte, 1500)
	out := make([]time.Duration, n)
	for i := range n {
		id := idBase | uint16(i)&0x0fff
		q[0], q[1] = byte(id>>8), byte(id)
		t0 := time.Now()
		err := retryEINTR(func() error { return unix.Sendto(fd, q, 0, to) })
		if err != nil {
			return nil, fmt.Errorf("send to %s: %w", server, err)
		}
		var k int
		var from unix.Sockaddr
		err = retryEINTR(func() (err error) {
			k, from, err = unix.Recvfrom(fd, buf, 0)
			return err
		})
		out[i] = time.Since(t0)
		if err != nil {
			return nil, fmt.Errorf("receive from %s: %w", server, err)
		}
		if err := checkReply(buf[:k], id, from, server); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// retryEINTR retries a system call the Go runtime's preemption signal
// interrupted: a socket with a receive timeout is not restarted by the
// kernel.
func retryEINTR(call func() error) error {
	for {
		if err := call(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// checkReply reads a reply's header: what a stub resolver checks before it
// takes an answer, and that there is one.
func checkReply(b []byte, id uint16, from unix.Sockaddr, server netip.AddrPort) error {
	sa, ok := from.(*unix.SockaddrInet4)
	if !ok || netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)) != server {
		return fmt.Errorf("reply from %v, want %s", from, server)
	}
	if len(b) < 12 {
		return fmt.Errorf("reply of %d bytes", len(b))
	}
	if got := uint16(b[0])<<8 | uint16(b[1]); got != id {
		return fmt.Errorf("reply with ID %d, want %d", got, id)
	}
	if b[2]&0x80 == 0 {
		return errors.New("reply is not a response")
	}
	if rcode := b[3] & 0x0f; rcode != dns.RcodeSuccess {
		return fmt.Errorf("reply %s", dns.RcodeToString[int(rcode)])
	}
	if ancount := uint16(b[6])<<8 | uint16(b[7]); ancount == 0 {
		return errors.New("reply without an answer")
	}
	return nil
}

// queryClient is a running client process.
type queryClient struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

// startQueryClient starts a client process and, when cgroup is not empty,
// moves it into that cgroup before it makes any socket: from then on the
// kernel treats it as that cgroup's workload.
func startQueryClient(tb testing.TB, root, cgroup string) *queryClient {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), queryClientEnv+"=1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start the query client: %v", err)
	}
	tb.Cleanup(func() {
		in.Close()
		if err := cmd.Wait(); err != nil {
			tb.Errorf("query client: %v", err)
		}
	})
	if cgroup != "" {
		pid := strconv.Itoa(cmd.Process.Pid)
		if err := os.WriteFile(filepath.Join(cgroup, "cgroup.procs"), []byte(pid), 0); err != nil {
			tb.Fatalf("move the query client into %s: %v", cgroup, err)
		}
		if now, err := processCgroup(root, cmd.Process.Pid); err != nil || now != cgroup {
			tb.Fatalf("query client is in cgroup %s, want %s (%v)", now, cgroup, err)
		}
	}
	return &queryClient{cmd: cmd, in: in, out: bufio.NewScanner(out)}
}

// processCgroup is a process's cgroup v2 directory.
func processCgroup(root string, pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "0::"); ok {
			return filepath.Join(root, rest), nil
		}
	}
	return "", fmt.Errorf("no cgroup v2 entry for process %d", pid)
}

// query runs one command in the client.
func (c *queryClient) query(server netip.AddrPort, name string, n, workers int) (queryResult, error) {
	if _, err := fmt.Fprintf(c.in, "query %s %s %d %d\n", server, name, n, workers); err != nil {
		return queryResult{}, fmt.Errorf("query client: %w", err)
	}
	if !c.out.Scan() {
		return queryResult{}, fmt.Errorf("query client ended: %v", c.out.Err())
	}
	line := c.out.Text()
	if msg, ok := strings.CutPrefix(line, "err "); ok {
		return queryResult{}, errors.New(msg)
	}
	var r queryResult
	var e, p50, p99 int64
	if _, err := fmt.Sscanf(line, "ok %d %d %d", &e, &p50, &p99); err != nil {
		return queryResult{}, fmt.Errorf("query client said %q: %w", line, err)
	}
	r.elapsed, r.p50, r.p99 = time.Duration(e), time.Duration(p50), time.Duration(p99)
	return r, nil
}

// measureQueries is one benchmark variant: b.N queries by the client,
// reported as the client timed them (the pipe to the client is not
// counted): ns/op is wall time over queries, which with several workers is
// the inverse of the throughput, not a latency.
func measureQueries(b *testing.B, c *queryClient, server netip.AddrPort, name string, workers int) {
	r, err := c.query(server, name, b.N, workers)
	if err != nil {
		b.Fatalf("%d queries for %s to %s: %v", b.N, name, server, err)
	}
	b.ReportMetric(float64(r.elapsed.Nanoseconds())/float64(b.N), "ns/op")
	b.ReportMetric(float64(b.N)/r.elapsed.Seconds(), "queries/s")
	b.ReportMetric(float64(r.p50.Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(r.p99.Nanoseconds()), "p99-ns")
}
