package spiretest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The test binary doubles as the workload: run with fetchEnv set, it asks
// the Workload API at that socket for its X509-SVID, as whatever uid it was
// started with, and prints the SPIFFE ID; with goneEnv set too, it waits
// until the agent has no SVID for it any more.
const (
	fetchEnv     = "SPIRETEST_FETCH_SOCKET"
	goneEnv      = "SPIRETEST_FETCH_GONE"
	fetchTimeout = 20 * time.Second
)

func TestMain(m *testing.M) {
	if sock := os.Getenv(fetchEnv); sock != "" {
		if os.Getenv(goneEnv) != "" {
			os.Exit(waitNoSVID(sock))
		}
		os.Exit(fetchSVID(sock))
	}
	os.Exit(m.Run())
}

// waitNoSVID retries until the Workload API says it has no identity for
// this process (its entry deleted, the agent synced).
func waitNoSVID(sock string) int {
	ctx, cancel := context.WithTimeout(context.Background(), fetchTimeout)
	defer cancel()
	for ctx.Err() == nil {
		svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+sock))
		if status.Code(err) == codes.PermissionDenied {
			return 0
		}
		if err == nil {
			fmt.Println(svid.ID.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Fprintf(os.Stderr, "uid %d: still an X509-SVID from %s after %v\n", os.Getuid(), sock, fetchTimeout)
	return 1
}

// fetchSVID retries until the agent has an SVID for this process: an entry
// created a moment ago reaches the agent at its next sync, and until then
// the Workload API answers that there is no identity.
func fetchSVID(sock string) int {
	ctx, cancel := context.WithTimeout(context.Background(), fetchTimeout)
	defer cancel()
	var last error
	for ctx.Err() == nil {
		svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+sock))
		if err == nil {
			fmt.Println(svid.ID.String())
			return 0
		}
		last = err
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Fprintf(os.Stderr, "uid %d: no X509-SVID from %s within %v: %v\n", os.Getuid(), sock, fetchTimeout, last)
	return 1
}

// workload runs the test binary as uid and returns the SPIFFE ID it got from
// the Workload API. The binary is copied into the SPIRE dir first: go test's
// build dir is private to root.
func workload(t *testing.T, s *SPIRE, uid uint32, env ...string) string {
	t.Helper()
	bin := filepath.Join(s.Dir, "workload")
	if _, err := os.Stat(bin); errors.Is(err, os.ErrNotExist) {
		copyExecutable(t, bin)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(append(os.Environ(), fetchEnv+"="+s.WorkloadSocket), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("workload as uid %d: %v: %s", uid, err, stderr.String())
	}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	var id string
	for sc.Scan() {
		id = sc.Text()
	}
	return id
}

func copyExecutable(t *testing.T, dst string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: workloads run as other uids, and bridled's entry is for uid 0")
	}
}

// The workloads' SVIDs come from a real agent through the Workload API, each
// to the process whose uid its entry selects; bridled's own entry is there
// from Start.
func TestWorkloadSVIDs(t *testing.T) {
	requireRoot(t)
	begin := time.Now()
	s := Start(t, Options{})
	started := time.Since(begin)

	if got, want := workload(t, s, 0), "spiffe://example.org/bridled"; got != want {
		t.Fatalf("uid 0 got %q, want %q", got, want)
	}
	t.Logf("Start took %v; the first SVID (bridled's, uid 0) arrived %v after Start began",
		started.Round(time.Millisecond), time.Since(begin).Round(time.Millisecond))

	const uid = 4242
	want := "spiffe://example.org/agent/uid/4242"
	created := time.Now()
	id := s.CreateEntry(t, want, fmt.Sprintf("unix:uid:%d", uid))
	if got := workload(t, s, uid); got != want {
		t.Fatalf("uid %d got %q, want %q", uid, got, want)
	}
	t.Logf("a new entry (%s) reached its workload in %v", id, time.Since(created).Round(time.Millisecond))

	// The agent restarted on the same sockets is the same node: the entries
	// parented to it still give SVIDs.
	s.StopAgent(t)
	restarted := time.Now()
	s.StartAgent(t)
	if got := workload(t, s, uid); got != want {
		t.Fatalf("after an agent restart uid %d got %q, want %q", uid, got, want)
	}
	t.Logf("after an agent restart the SVID was back in %v", time.Since(restarted).Round(time.Millisecond))

	deleted := time.Now()
	s.DeleteEntry(t, id)
	workload(t, s, uid, goneEnv+"=1")
	t.Logf("a deleted entry's SVID was gone from the agent in %v", time.Since(deleted).Round(time.Millisecond))
}

// Minted SVIDs stand for callers that are not on this node: the JWT carries
// the subject and audience asked for, the X509-SVID chains to the bundle.
func TestMint(t *testing.T) {
	s := Start(t, Options{TrustDomain: "mint.test"})

	const subject, audience = "spiffe://mint.test/orchestrator/ci", "spiffe://mint.test/bridled"
	token := s.MintJWT(t, subject, audience, 5*time.Minute)
	jwt, err := jwtsvid.ParseInsecure(token, []string{audience})
	if err != nil {
		t.Fatalf("jwtsvid.ParseInsecure: %v", err)
	}
	if jwt.ID.String() != subject || !slices.Contains(jwt.Audience, audience) {
		t.Fatalf("JWT-SVID for %s, audience %v; want %s, %s", jwt.ID, jwt.Audience, subject, audience)
	}
	if left := time.Until(jwt.Expiry); left > 5*time.Minute || left < 4*time.Minute {
		t.Fatalf("JWT-SVID expires in %v, want about 5m", left)
	}

	certPEM, keyPEM, bundlePEM := s.MintX509(t, subject)
	svid, err := x509svid.Parse(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("x509svid.Parse: %v", err)
	}
	if svid.ID.String() != subject {
		t.Fatalf("X509-SVID for %s, want %s", svid.ID, subject)
	}
	bundle, err := x509bundle.Parse(spiffeid.RequireTrustDomainFromString("mint.test"), bundlePEM)
	if err != nil {
		t.Fatalf("x509bundle.Parse: %v", err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil {
		t.Fatalf("minted X509-SVID does not chain to the bundle: %v", err)
	}
}

// The cache directory is named after the SPIRE version tests/spire builds.
func TestVersionMatchesModule(t *testing.T) {
	mod, err := os.ReadFile("../spire/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(mod), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "github.com/spiffe/spire" {
			if f[1] != Version {
				t.Fatalf("tests/spire/go.mod pins SPIRE %s, spiretest.Version is %s", f[1], Version)
			}
			return
		}
	}
	t.Fatal("tests/spire/go.mod has no github.com/spiffe/spire requirement")
}
