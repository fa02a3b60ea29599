package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/config"
	"github.com/bridle-sh/bridle/policy/engine"
)

// serveGuarded serves one guarded handler on a unix socket with the
// daemon's peer-credential hook and returns a client for it.
func serveGuarded(t *testing.T, d *Daemon, need access) *http.Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:     d.guard(need, func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, http.StatusOK, "ok") }),
		ConnContext: connContext,
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", sock)
		},
	}}
}

func testDaemon(t *testing.T, roots []string, auditBuf *bytes.Buffer) *Daemon {
	t.Helper()
	return &Daemon{
		cfg:      &config.Config{Roots: roots, NodeName: "n"},
		log:      slog.New(slog.DiscardHandler),
		audit:    newAuditLog(nopCloser{auditBuf}),
		engine:   engine.NewEngine(),
		refusals: newRefusals(),
	}
}

func get(t *testing.T, c *http.Client) (int, string) {
	t.Helper()
	resp, err := c.Get("http://bridled/x")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// The caller's cgroup comes from the kernel: a caller whose cgroup lies
// under a root is refused and audited, whoever it is.
func TestGuardRefusesCallersInsideRoots(t *testing.T) {
	self, err := procCgroup(os.Getpid())
	if err != nil {
		t.Skipf("no cgroup v2 entry for this process: %v", err)
	}
	var auditBuf bytes.Buffer
	d := testDaemon(t, []string{self}, &auditBuf)
	status, body := get(t, serveGuarded(t, d, needReader))
	if status != http.StatusForbidden || !strings.Contains(body, "workload") {
		t.Fatalf("caller inside a root: %d %s", status, body)
	}
	var rec audit.Record
	if err := json.Unmarshal(auditBuf.Bytes(), &rec); err != nil {
		t.Fatalf("audit record %q: %v", auditBuf.String(), err)
	}
	if rec.Action != "api" || rec.Verdict != "deny" || rec.Workload != self || rec.PID != uint32(os.Getpid()) {
		t.Fatalf("audit record: %+v", rec)
	}
}

func TestGuardAdmits(t *testing.T) {
	var auditBuf bytes.Buffer
	d := testDaemon(t, []string{"/bridle-guard-test-nowhere"}, &auditBuf)
	uid := uint32(os.Getuid())
	reader, admin := d.cfg.IsReader(uid, nil), d.cfg.IsAdmin(uid, nil)
	status, body := get(t, serveGuarded(t, d, needReader))
	if reader && status != http.StatusOK || !reader && status != http.StatusForbidden {
		t.Fatalf("read by uid %d (reader %v): %d %s", uid, reader, status, body)
	}
	status, body = get(t, serveGuarded(t, d, needAdmin))
	if admin && status != http.StatusOK || !admin && status != http.StatusForbidden {
		t.Fatalf("mutating call by uid %d (admin %v): %d %s", uid, admin, status, body)
	}
}

func TestProcCgroup(t *testing.T) {
	p, err := procCgroup(os.Getpid())
	if err != nil {
		t.Skipf("no cgroup v2 entry: %v", err)
	}
	if !strings.HasPrefix(p, "/") {
		t.Fatalf("cgroup %q", p)
	}
	if _, err := procCgroup(-1); err == nil {
		t.Fatal("pid -1 has a cgroup")
	}
}

// A live caller is identified on both paths: through its SO_PEERPIDFD and,
// as on kernels before 6.5, through a pidfd opened by PID.
func TestReadPeerLiveCaller(t *testing.T) {
	self, err := procCgroup(os.Getpid())
	if err != nil {
		t.Skipf("no cgroup v2 entry for this process: %v", err)
	}
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	defer func(v bool) { peerPidfd = v }(peerPidfd)
	for _, pidfd := range []bool{true, false} {
		peerPidfd = pidfd
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		p := readPeer(s)
		c.Close()
		s.Close()
		if p.Err != nil || p.Cgroup != self || p.PID != int32(os.Getpid()) || p.UID != uint32(os.Getuid()) || p.Comm == "" {
			t.Fatalf("SO_PEERPIDFD %v: %+v (err %v), want this process in %s", pidfd, p, p.Err, self)
		}
	}
}

// Under a low descriptor limit the API's connection limits are lowered, so
// that connections can never take the descriptors revocation needs.
func TestFitFDLimits(t *testing.T) {
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	defer unix.Setrlimit(unix.RLIMIT_NOFILE, &old)
	lim := config.APILimits{Connections: 64, ConnectionsPerUID: 8, AdminConnections: 64, MetricsConnections: 16}
	if err := fitFDLimits(&lim, false); err != nil || lim.Connections != 64 {
		t.Fatalf("under limit %d: %v %+v", old.Cur, err, lim)
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: 600, Max: old.Max}); err != nil {
		t.Fatal(err)
	}
	err := fitFDLimits(&lim, false)
	if err == nil || lim.Connections+lim.AdminConnections+lim.MetricsConnections+2+fdReserve > 600 || lim.ConnectionsPerUID > lim.Connections {
		t.Fatalf("under limit 600: %v %+v", err, lim)
	}
	t.Log(err)
}
