package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/daemon/api"
	"github.com/bridle-sh/bridle/daemon/identity"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/tests/spiretest"
)

const (
	benchAudience     = "spiffe://example.org/bridled"
	benchOrchestrator = "spiffe://example.org/orchestrator/bench"
)

// BenchmarkTaskStartCaller: a task start through a real bridled's API on
// its unix socket, from the request to the answer, by the same caller
// (root, an admin by its uid) once with a JWT-SVID in the Authorization
// header and once without. bridled takes the JWT bundles from a real
// SPIRE agent's Workload API; the token is minted by the real SPIRE server
// for an ID in admins.identities. The difference of the p50s is what the
// token check adds: parsing, the signature against the bundle, audience
// and expiry. Ending the task between iterations is not timed.
func BenchmarkTaskStartCaller(b *testing.B) {
	requireRoot(b)
	sp := spiretest.Start(b, spiretest.Options{})
	tree := newCgroupTree(b)
	root := tree.sub(b, "root")
	workload := "/" + tree.rel(tree.sub(b, filepath.Join("root", "w1")))
	d := startBridled(b, sp, "/"+tree.rel(root))

	token := sp.MintJWT(b, benchOrchestrator, benchAudience, 2*time.Hour)
	// The header is checked, not merely carried: a token for another
	// audience is refused.
	wrong := sp.MintJWT(b, benchOrchestrator, "spiffe://example.org/someone-else", time.Hour)
	if code, body := d.call(b, http.MethodPost, "/v1/tasks", wrong, api.StartRequest{Workload: workload, Intent: "benchmark"}); code != http.StatusUnauthorized {
		b.Fatalf("a token for another audience: %d %s, want 401", code, body)
	}

	interleave(b, []string{"peercred", "jwt-svid"}, func(s string) string { return s }, func(b *testing.B, how string) {
		tok := ""
		if how == "jwt-svid" {
			tok = token
		}
		took := make([]time.Duration, 0, b.N)
		b.StopTimer()
		for i := 0; i < b.N; i++ {
			b.StartTimer()
			start := time.Now()
			code, body := d.call(b, http.MethodPost, "/v1/tasks", tok, api.StartRequest{Workload: workload, Intent: "benchmark"})
			took = append(took, time.Since(start))
			b.StopTimer()
			if code != http.StatusCreated {
				b.Fatalf("task start (%s): %d %s", how, code, body)
			}
			var t api.Task
			if err := json.Unmarshal(body, &t); err != nil {
				b.Fatal(err)
			}
			if code, body := d.call(b, http.MethodDelete, "/v1/tasks/"+t.ID, tok, nil); code != http.StatusOK {
				b.Fatalf("task end (%s): %d %s", how, code, body)
			}
		}
		b.ReportMetric(float64(p50(took).Nanoseconds()), "p50-ns")
	})
}

// BenchmarkSPIREIdentity: from a fresh process born in a fresh cgroup to
// identity.SPIREProvider.Identify returning its SPIFFE ID, as bridled asks
// SPIRE for a workload whose task is being started: its selectors read
// from the kernel (selectors mode), the Delegated Identity API's
// subscription opened on the agent's admin socket, and SPIRE's first
// answer. The workload's entry (selector bridle:cgroup:PATH) is registered
// and synced to the agent beforehand; each iteration creates the cgroup
// anew at that path and starts the process into it (clone3
// CLONE_INTO_CGROUP) after the timer started. The connection to the admin
// socket is kept between iterations, as bridled keeps it.
func BenchmarkSPIREIdentity(b *testing.B) {
	requireRoot(b)
	sp := spiretest.Start(b, spiretest.Options{})
	tree := newCgroupTree(b)
	cg := filepath.Join(tree.dir, "agent")
	rel := "/" + tree.rel(cg)
	const want = "spiffe://example.org/bench/agent"
	sp.CreateEntry(b, want, "bridle:cgroup:"+rel)
	p, err := identity.NewSPIRE(identity.SPIREConfig{
		AdminSocket: sp.AdminSocket, Attest: identity.BySelectors,
		Hold: time.Minute, Timeout: 10 * time.Second, Mount: tree.root,
	}, func(identity.Change) {}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(p.Close)

	// identify runs one workload's life: cgroup, process, Identify; it
	// returns the time from just before the process to the identity.
	identify := func(b *testing.B) (time.Duration, identity.Identity, error) {
		if err := os.Mkdir(cg, 0o755); err != nil {
			b.Fatal(err)
		}
		defer removeCgroup(cg)
		fd, err := syscall.Open(cg, syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer syscall.Close(fd)
		cmd := exec.Command("/usr/bin/sleep", "60")
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
		start := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
		id, err := p.Identify(context.Background(), identity.Workload{Cgroup: rel})
		took := time.Since(start)
		if err == nil {
			p.Release(rel)
		}
		return took, id, err
	}
	// Until the agent has bridled's delegate entry and the workload's
	// (both synced every spiretest.SyncInterval), SPIRE answers nothing.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, id, err := identify(b)
		if err == nil && id.ID == want {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("SPIRE named no identity for %s within 30s: %v %v", rel, id, err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	interleave(b, []string{"selectors"}, func(s string) string { return s }, func(b *testing.B, _ string) {
		took := make([]time.Duration, 0, b.N)
		b.StopTimer()
		for i := 0; i < b.N; i++ {
			d, id, err := identify(b)
			if err != nil || id.ID != want || id.Source != identity.SPIRE {
				b.Fatalf("identity of %s: %+v, %v; want %s from spire", rel, id, err, want)
			}
			took = append(took, d)
		}
		// ns/op is the mean of the measured spans, without the cgroups'
		// creation and removal around them.
		var sum time.Duration
		for _, d := range took {
			sum += d
		}
		b.ReportMetric(float64(sum.Nanoseconds())/float64(len(took)), "ns/op")
		b.ReportMetric(float64(p50(took).Nanoseconds()), "p50-ns")
	})
}

func p50(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// benchBridled is a bridled run from a fresh build for one benchmark.
type benchBridled struct {
	socket string
	client *http.Client
}

// startBridled builds and runs bridled with root as its only root, the
// Workload API of sp for its trust bundles, JWT-SVIDs accepted for
// benchAudience and benchOrchestrator an admin by identity. It returns
// once the API answers; cleanup stops it and removes its pins.
func startBridled(b *testing.B, sp *spiretest.SPIRE, root string) *benchBridled {
	b.Helper()
	// Short: the socket's path must fit a sockaddr_un.
	dir, err := os.MkdirTemp("", "bridled-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "bridled")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/bridled").CombinedOutput(); err != nil {
		b.Fatalf("build bridled: %v\n%s", err, out)
	}
	policyDir := filepath.Join(dir, "policy")
	if err := os.Mkdir(policyDir, 0o755); err != nil {
		b.Fatal(err)
	}
	const rego = `package bridle

binaries := [{"path": "/usr/bin/true"}]

baseline := {"egress": [], "exec": binaries}

envelope := {
	"egress": [{"protocol": "tcp", "cidr": "192.0.2.1/32", "ports": [443]}],
	"exec": binaries,
	"ttl": "1h",
}
`
	if err := os.WriteFile(filepath.Join(policyDir, "bench.rego"), []byte(rego), 0o644); err != nil {
		b.Fatal(err)
	}
	pinRoot := filepath.Join(loader.DefaultPinRoot, "bench")
	sweep(pinRoot, func(dir string) { _ = loader.RemovePins(dir) })
	pinDir := filepath.Join(pinRoot, ownedName(b.Name()))
	d := &benchBridled{socket: filepath.Join(dir, "api.sock")}
	cfg := strings.Join([]string{
		"roots: [" + root + "]",
		"socket: " + d.socket,
		"state_dir: " + filepath.Join(dir, "state"),
		"pin_dir: " + pinDir,
		"policy_dir: " + policyDir,
		"audit_file: " + filepath.Join(dir, "audit.jsonl"),
		"node_name: bench.test",
		"spiffe:",
		"  workload_api: " + (&url.URL{Scheme: "unix", Path: sp.WorkloadSocket}).String(),
		"api:",
		"  jwt_audiences: [" + benchAudience + "]",
		"admins:",
		"  identities: [" + benchOrchestrator + "]",
	}, "\n") + "\n"
	config := filepath.Join(dir, "bridled.yaml")
	if err := os.WriteFile(config, []byte(cfg), 0o644); err != nil {
		b.Fatal(err)
	}
	logPath := filepath.Join(dir, "bridled.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	defer logFile.Close()
	logs := func() string { l, _ := os.ReadFile(logPath); return string(l) }
	cmd := exec.Command(bin, "--config", config)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if err := loader.RemovePins(pinDir); err != nil {
			b.Logf("remove pins %s: %v", pinDir, err)
		}
		_ = os.Remove(pinRoot) // fails while another run still uses it
		if b.Failed() {
			b.Logf("bridled log:\n%s", logs())
		}
	})
	d.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", d.socket)
		},
	}}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if code, _ := d.call(b, http.MethodGet, "/v1/status", "", nil); code == http.StatusOK {
			return d
		}
		select {
		case <-done:
			b.Fatalf("bridled exited while starting:\n%s", logs())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.Fatalf("bridled did not answer within 60s:\n%s", logs())
		}
	}
}

// call sends one API call, with the JWT-SVID token as its bearer token
// unless token is "", and returns the status and body (0 when the call
// did not get through).
func (d *benchBridled) call(b *testing.B, method, path, token string, body any) (int, []byte) {
	var rd io.Reader
	if body != nil {
		j, err := json.Marshal(body)
		if err != nil {
			b.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, "http://bridled"+path, rd)
	if err != nil {
		b.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, []byte(fmt.Sprint(err))
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}
