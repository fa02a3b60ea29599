package daemon

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/bridle-sh/bridle/daemon/api"
	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/config"
	"github.com/bridle-sh/bridle/daemon/identity"
	"github.com/bridle-sh/bridle/daemon/node"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
	"github.com/bridle-sh/bridle/policy/engine"
)

// These tests serve the task API on real sockets, a unix socket and a
// loopback TCP port with mutual TLS, over a node whose kernel is a no-op
// (what the kernel does with a task is the end-to-end tests' business).
// The trust domain's keys are made here: a CA for X.509-SVIDs and a key
// for JWT-SVIDs, in bundles the daemon takes through the same go-spiffe
// source interfaces the Workload API's sources implement.

const (
	trustDomain  = "example.org"
	bridledID    = "spiffe://example.org/bridled"
	orchestrator = "spiffe://example.org/orchestrator/team-a"
	ciID         = "spiffe://example.org/orchestrator/ci"
	outsiderID   = "spiffe://example.org/intruder"
)

// callersPolicy starts a task only for the team-a orchestrator, and says in
// its refusal what it saw of the requester.
const callersPolicy = `package bridle

baseline := {"egress": [], "exec": []}

envelope := {"egress": [], "exec": [], "ttl": "1h"}

deny contains msg if {
	input.requester.identity != "spiffe://example.org/orchestrator/team-a"
	msg := sprintf("requester identity %q auth %q is not the team-a orchestrator", [input.requester.identity, input.requester.auth])
}
`

// trust is a trust domain's authorities, made for one test.
type trust struct {
	td     spiffeid.TrustDomain
	caKey  *ecdsa.PrivateKey
	ca     *x509.Certificate
	jwtKey *ecdsa.PrivateKey
	jwtKID string
}

func newTrust(t *testing.T, td string) *trust {
	t.Helper()
	tr := &trust{td: spiffeid.RequireTrustDomainFromString(td), caKey: newKey(t), jwtKey: newKey(t), jwtKID: "jwt-" + td}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{Organization: []string{td}},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs: []*url.URL{tr.td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, tr.caKey.Public(), tr.caKey)
	if err != nil {
		t.Fatal(err)
	}
	if tr.ca, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	return tr
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func (tr *trust) x509Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(tr.td, []*x509.Certificate{tr.ca})
}

func (tr *trust) jwtBundle() *jwtbundle.Bundle {
	return jwtbundle.FromJWTAuthorities(tr.td, map[string]crypto.PublicKey{tr.jwtKID: tr.jwtKey.Public()})
}

// svid issues an X.509-SVID for id.
func (tr *trust) svid(t *testing.T, id string) *x509svid.SVID {
	t.Helper()
	key := newKey(t)
	sid := spiffeid.RequireFromString(id)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		NotBefore:    time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{sid.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tr.ca, key.Public(), tr.caKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: sid, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

// token signs a JWT-SVID for sub with this trust domain's JWT key.
func (tr *trust) token(t *testing.T, sub, aud string, expires time.Time) string {
	t.Helper()
	return signToken(t, tr.jwtKey, tr.jwtKID, sub, aud, expires)
}

func signToken(t *testing.T, key *ecdsa.PrivateKey, kid, sub, aud string, expires time.Time) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader(jose.HeaderKey("kid"), kid))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{
		Subject: sub, Audience: jwt.Audience{aud},
		IssuedAt: jwt.NewNumericDate(time.Now().Add(-2 * time.Minute)), Expiry: jwt.NewNumericDate(expires),
	}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// noKernel takes every write and holds nothing.
type noKernel struct{}

func (noKernel) WriteRules(uint32, policy.RuleSet) error                { return nil }
func (noKernel) SetTask(uint32, time.Time, uint32) error                { return nil }
func (noKernel) BindWorkload(uint64, uint32, loader.WorkloadMode) error { return nil }
func (noKernel) UnbindWorkload(uint64) error                            { return nil }
func (noKernel) ClearSlot(uint32) error                                 { return nil }
func (noKernel) DestroySockets(...uint64) (loader.DestroyStats, error) {
	return loader.DestroyStats{}, nil
}
func (noKernel) Bindings() (map[uint64]uint32, error)                  { return map[uint64]uint32{}, nil }
func (noKernel) ClearSlotsExcept(map[uint32]bool) error                { return nil }
func (noKernel) Learn(uint32, uint32, []loader.LearnedAddr) error      { return nil }
func (noKernel) Unlearn(uint32, []loader.LearnedAddr) error            { return nil }
func (noKernel) Features() loader.Features                             { return loader.Features{} }
func (noKernel) UnixConnections(uint64) ([]loader.UnixConn, error)     { return nil, nil }
func (noKernel) TakeSuppressed(uint64, uint32) (uint64, error)         { return 0, nil }
func (noKernel) AttachCgroup(string) error                             { return nil }
func (noKernel) ForgetCgroup(uint64) error                             { return nil }
func (noKernel) SetResolver(netip.AddrPort, netip.AddrPort) error      { return nil }
func (noKernel) GrantAddrs(uint32, uint32, []loader.GrantedAddr) error { return nil }
func (noKernel) RevokeAddrs(uint32, []loader.GrantedAddr) error        { return nil }
func (noKernel) GrantExec(uint32, uint32, []loader.GrantedExec) error  { return nil }
func (noKernel) RevokeExec(uint32, []loader.GrantedExec) error         { return nil }
func (noKernel) AbortTo(uint64, policy.Protocol, netip.Addr, []policy.PortRange) (loader.DestroyStats, error) {
	return loader.DestroyStats{}, nil
}
func (noKernel) ShutdownUnix(uint64, []loader.UnixConn) (loader.UnixStats, error) {
	return loader.UnixStats{}, nil
}
func (noKernel) DNSPeer(policy.Protocol, netip.AddrPort) (loader.DNSPeer, error) {
	return loader.DNSPeer{}, loader.ErrNoPeer
}

// lockedBuffer is the audit file of a daemon under test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) Close() error { return nil }

func (l *lockedBuffer) records(t *testing.T) []audit.Record {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []audit.Record
	dec := json.NewDecoder(bytes.NewReader(l.b.Bytes()))
	for dec.More() {
		var r audit.Record
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("audit: %v", err)
		}
		out = append(out, r)
	}
	return out
}

// callersEnv is a daemon serving the task API on a unix socket and over
// mutual TLS, with one empty workload cgroup to start tasks for.
type callersEnv struct {
	d        *Daemon
	trust    *trust
	audit    *lockedBuffer
	socket   string
	tcp      string // IP:PORT of api.tcp_listen
	workload string
}

// newCallersEnv starts a daemon. roots, if given, replace the test's own
// root (the callers' own cgroup among them makes every caller a workload).
func newCallersEnv(t *testing.T, roots ...string) *callersEnv {
	t.Helper()
	tr := newTrust(t, trustDomain)
	cgRoot := t.TempDir() // stands for the cgroup v2 mount
	root := "/bridle-callers-test"
	wl := root + "/w1"
	if err := os.MkdirAll(filepath.Join(cgRoot, wl), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cgRoot, wl, "cgroup.procs"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	policyDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(policyDir, "bridle.rego"), []byte(callersPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte(fmt.Sprintf(`roots: [%s]
policy_dir: %s
node_name: n1
spiffe: {workload_api: "unix:///nonexistent/api.sock"}
api:
  jwt_audiences: [%q]
  tcp_listen: "127.0.0.1:0"
  tcp_authorized: [%q, %q]
admins: {uids: [%d], identities: [%q]}
readers: {identities: [%q]}
`, root, policyDir, bridledID, orchestrator, ciID, os.Getuid(), orchestrator, ciID)), "test")
	if err != nil {
		t.Fatal(err)
	}
	// Added past the config's checks: the callers' own cgroup may be the
	// cgroup v2 root itself, which no config may confine.
	cfg.Roots = append(cfg.Roots, roots...)
	eng := engine.NewEngine()
	if err := eng.LoadDir(context.Background(), policyDir); err != nil {
		t.Fatal(err)
	}
	ab := &lockedBuffer{}
	d := &Daemon{
		cfg: cfg, log: slog.New(slog.DiscardHandler), cgRoot: cgRoot,
		engine: eng, audit: newAuditLog(ab), refusals: newRefusals(), hardening: newHardening(),
		listeners: map[string]api.Listener{},
		svids: SVIDSources{
			SVID: tr.svid(t, bridledID), X509Bundles: tr.x509Bundle(),
			JWTBundles: jwtbundle.NewSet(tr.jwtBundle()),
		},
	}
	d.node = node.New(node.Options{
		Kernel: noKernel{}, Engine: eng, NodeName: "n1", CgroupRoot: cgRoot, Roots: cfg.Roots,
		Identities: identity.NewStatic(cfg.StaticIdentity(), cgRoot), Records: d.audit.Write, Log: d.log,
	})
	t.Cleanup(d.node.Wait)

	env := &callersEnv{d: d, trust: tr, audit: ab, socket: filepath.Join(t.TempDir(), "api.sock"), workload: wl}
	uln, err := net.Listen("unix", env.socket)
	if err != nil {
		t.Fatal(err)
	}
	tln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	env.tcp = tln.Addr().String()
	errLog := log.New(io.Discard, "", 0) // refused handshakes, as expected
	for _, serve := range []struct {
		srv *http.Server
		ln  net.Listener
	}{{d.apiServer(errLog), d.unixListener(uln)}, {d.apiServer(errLog), d.tlsListener(tln)}} {
		go func() { _ = serve.srv.Serve(serve.ln) }()
		t.Cleanup(func() { _ = serve.srv.Close() })
	}
	return env
}

// unixClient calls the socket with token as its bearer token ("" none).
func (e *callersEnv) unixClient(token string) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &bearer{token: token, next: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", e.socket)
		},
	}}}
}

// tlsClient calls api.tcp_listen with svid, trusting bundle for bridled.
func (e *callersEnv) tlsClient(svid *x509svid.SVID, bundle *x509bundle.Bundle) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(spiffeid.RequireFromString(bridledID))),
	}}
}

type bearer struct {
	token string
	next  http.RoundTripper
}

func (b *bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	if b.token != "" {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+b.token)
	}
	return b.next.RoundTrip(r)
}

// startTask asks for a task over c at base (http://bridled or
// https://IP:PORT) and returns the status and body.
func (e *callersEnv) startTask(t *testing.T, c *http.Client, base string) (int, string, error) {
	t.Helper()
	body, _ := json.Marshal(api.StartRequest{Workload: e.workload, Intent: "fix the build"})
	resp, err := c.Post(base+"/v1/tasks", "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

func (e *callersEnv) endAll(t *testing.T) {
	t.Helper()
	for _, tk := range e.d.node.List() {
		if _, err := e.d.node.End(tk.ID, "test over"); err != nil {
			t.Fatal(err)
		}
	}
}

// A valid JWT-SVID makes its subject the requester the policy sees.
func TestJWTSVIDCallerStartsTask(t *testing.T) {
	e := newCallersEnv(t)
	tok := e.trust.token(t, orchestrator, bridledID, time.Now().Add(5*time.Minute))
	status, body, err := e.startTask(t, e.unixClient(tok), "http://bridled")
	if err != nil || status != http.StatusCreated {
		t.Fatalf("valid token: %d %s %v", status, body, err)
	}
	var task api.Task
	if err := json.Unmarshal([]byte(body), &task); err != nil || task.Workload != e.workload {
		t.Fatalf("task %s: %v", body, err)
	}
	e.endAll(t)

	// The same call without the token: the policy sees a requester with
	// no identity (the test's uid is an admin), and says so.
	status, body, err = e.startTask(t, e.unixClient(""), "http://bridled")
	if err != nil || status != http.StatusForbidden || !strings.Contains(body, `requester identity \"\" auth \"peercred\"`) {
		t.Fatalf("no token: %d %s %v", status, body, err)
	}
	// Another ID's valid token: admitted only by the uid, and its ID is
	// what the policy sees.
	tok = e.trust.token(t, ciID, bridledID, time.Now().Add(5*time.Minute))
	status, body, err = e.startTask(t, e.unixClient(tok), "http://bridled")
	if err != nil || status != http.StatusForbidden || !strings.Contains(body, `requester identity \"`+ciID+`\" auth \"jwt-svid\"`) {
		t.Fatalf("ci's token: %d %s %v", status, body, err)
	}
}

// A token that does not hold is a 401 with the reason and an audit record,
// and the call is not judged by the caller's uid instead (root's would
// have been admitted).
func TestJWTSVIDRefusals(t *testing.T) {
	e := newCallersEnv(t)
	other := newTrust(t, "other.org")
	later := time.Now().Add(5 * time.Minute)
	for _, tc := range []struct {
		name, token, want string
	}{
		{"wrong audience", e.trust.token(t, orchestrator, "spiffe://example.org/someone-else", later), "audience"},
		{"expired", e.trust.token(t, orchestrator, bridledID, time.Now().Add(-time.Minute)), "expired"},
		// Within go-jose's minute of leeway, which bridled does not give.
		{"expired seconds ago", e.trust.token(t, orchestrator, bridledID, time.Now().Add(-2*time.Second)), "expired"},
		{"unknown key", signToken(t, newKey(t), e.trust.jwtKID, orchestrator, bridledID, later), "unable to get claims"},
		{"unknown key id", signToken(t, e.trust.jwtKey, "k-unknown", orchestrator, bridledID, later), "no JWT authority"},
		{"unknown trust domain", other.token(t, "spiffe://other.org/orchestrator/team-a", bridledID, later), "no bundle found"},
		{"malformed", "not.a.jwt", "unable to parse"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(e.audit.records(t))
			status, body, err := e.startTask(t, e.unixClient(tc.token), "http://bridled")
			if err != nil || status != http.StatusUnauthorized || !strings.Contains(body, tc.want) {
				t.Fatalf("%d %s %v, want 401 saying %q", status, body, err, tc.want)
			}
			if n := len(e.d.node.List()); n != 0 {
				t.Fatalf("%d tasks started", n)
			}
			recs := e.audit.records(t)[before:]
			if len(recs) != 1 {
				t.Fatalf("audit records %+v, want one", recs)
			}
			r := recs[0]
			if r.Action != "api" || r.Verdict != "deny" || r.Path != "POST /v1/tasks" || !strings.Contains(r.Reason, tc.want) || r.PID != uint32(os.Getpid()) {
				t.Fatalf("audit record %+v", r)
			}
		})
	}
	// A bearer header that is not one is refused the same way.
	req, _ := http.NewRequest(http.MethodGet, "http://bridled/v1/status", nil)
	req.Header.Set("Authorization", "Basic cm9vdDo=")
	resp, err := e.unixClient("").Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(b), "Bearer") {
		t.Fatalf("basic auth: %d %s", resp.StatusCode, b)
	}
	// Two Authorization headers, a good token beside a bad one: refused,
	// whichever a proxy or a client library would have picked.
	req, _ = http.NewRequest(http.MethodGet, "http://bridled/v1/status", nil)
	req.Header.Add("Authorization", "Bearer "+e.trust.token(t, orchestrator, bridledID, later))
	req.Header.Add("Authorization", "Bearer not.a.jwt")
	resp, err = e.unixClient("").Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("two Authorization headers: %d %s", resp.StatusCode, b)
	}
}

// A workload is refused even with a valid token.
func TestJWTSVIDWorkloadRefused(t *testing.T) {
	self, err := procCgroup(os.Getpid())
	if err != nil {
		t.Skipf("no cgroup v2 entry for this process: %v", err)
	}
	e := newCallersEnv(t, self)
	tok := e.trust.token(t, orchestrator, bridledID, time.Now().Add(5*time.Minute))
	status, body, err := e.startTask(t, e.unixClient(tok), "http://bridled")
	if err != nil || status != http.StatusForbidden || !strings.Contains(body, "caller is a workload") {
		t.Fatalf("workload with a valid token: %d %s %v", status, body, err)
	}
	if n := len(e.d.node.List()); n != 0 {
		t.Fatalf("%d tasks started", n)
	}
	recs := e.audit.records(t)
	if len(recs) != 1 || recs[0].Identity != orchestrator || recs[0].Workload != self {
		t.Fatalf("audit records %+v", recs)
	}
}

// Over mutual TLS: an authorised ID's call works and the policy sees its
// ID; a certificate from another CA, or an ID outside tcp_authorized,
// fails the handshake; an authorised ID that is only a reader is refused
// what needs an admin.
func TestMTLSCallers(t *testing.T) {
	e := newCallersEnv(t)
	base := "https://" + e.tcp
	bundle := e.trust.x509Bundle()

	status, body, err := e.startTask(t, e.tlsClient(e.trust.svid(t, orchestrator), bundle), base)
	if err != nil || status != http.StatusCreated {
		t.Fatalf("authorised orchestrator: %d %s %v", status, body, err)
	}
	e.endAll(t)

	untrusted := newTrust(t, trustDomain) // same name, another CA
	for name, c := range map[string]*http.Client{
		"untrusted CA":           e.tlsClient(untrusted.svid(t, orchestrator), bundle),
		"outside tcp_authorized": e.tlsClient(e.trust.svid(t, outsiderID), bundle),
	} {
		_, _, err := e.startTask(t, c, base)
		if err == nil {
			t.Fatalf("%s: the call went through", name)
		}
		t.Logf("%s: %v", name, err)
	}
	if n := len(e.d.node.List()); n != 0 {
		t.Fatalf("%d tasks started", n)
	}
	// Plain TLS without a client certificate fails too.
	pool := x509.NewCertPool()
	pool.AddCert(e.trust.ca)
	plain := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		InsecureSkipVerify: true, // the server's SPIFFE certificate names no host
	}}}
	if _, err := plain.Get(base + "/v1/status"); err == nil {
		t.Fatal("a caller without a certificate was served")
	}

	ci := e.tlsClient(e.trust.svid(t, ciID), bundle)
	status, body, err = e.startTask(t, ci, base)
	if err != nil || status != http.StatusForbidden || !strings.Contains(body, "is not an admin") || !strings.Contains(body, "admins.identities") {
		t.Fatalf("reader starting a task: %d %s %v", status, body, err)
	}
	resp, err := ci.Get(base + "/v1/tasks")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("reader listing tasks: %d", resp.StatusCode)
	}
	recs := e.audit.records(t)
	last := recs[len(recs)-1]
	if last.Action != "api" || last.Identity != ciID || last.Address != "127.0.0.1" || last.PID != 0 {
		t.Fatalf("audit record of the reader's refused start: %+v", last)
	}
}

// authorize admits by uid or by proved identity, whichever holds.
func TestAuthorizeByUIDOrIdentity(t *testing.T) {
	d := &Daemon{cfg: &config.Config{Roots: []string{"/agents"}, Admins: config.Admins{UIDs: []uint32{1000}, Identities: []string{orchestrator}}, Readers: config.Admins{Identities: []string{"spiffe://example.org"}}}}
	id := spiffeid.RequireFromString
	user := Peer{UID: 2000, GID: 2000, Cgroup: "/user.slice/u"}
	for _, tc := range []struct {
		name        string
		c           Caller
		need        access
		wantRefused string
	}{
		{"admin uid", Caller{Peer: Peer{UID: 1000, Cgroup: "/user.slice/u"}, Auth: engine.AuthPeerCred}, needAdmin, ""},
		{"plain user", Caller{Peer: user, Auth: engine.AuthPeerCred}, needReader, "uid 2000 is neither an admin nor a reader"},
		{"user with the orchestrator's token", Caller{Peer: user, Identity: id(orchestrator), Auth: engine.AuthJWTSVID}, needAdmin, ""},
		{"user with a reader's token", Caller{Peer: user, Identity: id(ciID), Auth: engine.AuthJWTSVID}, needAdmin, "uid 2000 with identity " + ciID + " (JWT-SVID) is not an admin of this node (admins.uids, gids, identities)"},
		{"user with a reader's token reading", Caller{Peer: user, Identity: id(ciID), Auth: engine.AuthJWTSVID}, needReader, ""},
		{"workload with the orchestrator's token", Caller{Peer: Peer{UID: 1000, Cgroup: "/agents/w"}, Identity: id(orchestrator), Auth: engine.AuthJWTSVID}, needReader, "caller is a workload"},
		{"tcp orchestrator", Caller{Identity: id(orchestrator), Auth: engine.AuthX509SVID, Remote: "192.0.2.1:4000"}, needAdmin, ""},
		{"tcp other domain", Caller{Identity: id("spiffe://other.org/x"), Auth: engine.AuthX509SVID, Remote: "192.0.2.1:4000"}, needReader, "readers.identities"},
	} {
		got := d.authorize(tc.c, tc.need)
		if tc.wantRefused == "" && got != "" || tc.wantRefused != "" && !strings.Contains(got, tc.wantRefused) {
			t.Errorf("%s: %q, want refusal %q", tc.name, got, tc.wantRefused)
		}
	}
	r := Caller{Identity: id(orchestrator), Auth: engine.AuthX509SVID}.Requester()
	if r.UID != engine.NoUID || r.GID != engine.NoUID || r.Identity != orchestrator || r.Auth != "x509-svid" {
		t.Errorf("TCP requester %+v: no uid, the proved identity", r)
	}
}

// Without a Workload API bridled does not start, and says why.
func TestWorkloadAPIUnreachable(t *testing.T) {
	addr := "unix://" + filepath.Join(t.TempDir(), "none.sock")
	_, _, err := openWorkloadAPI(context.Background(), addr, true, 500*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "spiffe.workload_api") || !strings.Contains(err.Error(), "SPIRE agent") {
		t.Fatalf("err %v", err)
	}
	t.Log(err)
}

// api.tcp_listen's connections are bounded per address, before the TLS
// handshake: one over the limit is closed and the refusal recorded.
func TestTCPConnectionLimit(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := make(chan string, 1)
	tl := newTCPListener(ln, config.APILimits{Connections: 4, ConnectionsPerUID: 1}, func(remote, reason string) { refused <- reason })
	defer tl.Close()
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	first, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	held := <-accepted
	second, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if reason := <-refused; !strings.Contains(reason, "loopback holds 1 TCP connections") {
		t.Fatalf("refusal %q", reason)
	}
	_ = second.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := second.Read(make([]byte, 1)); err == nil {
		t.Fatal("the connection over the limit stayed open")
	}
	held.Close() // gives its place back
	third, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	select {
	case c := <-accepted:
		c.Close()
	case r := <-refused:
		t.Fatalf("after a close: refused %q", r)
	}
}

// The CLI's client proves its caller both ways: a token file on the
// socket, an SVID and bundle in PEM files over mutual TLS.
func TestClientProofs(t *testing.T) {
	e := newCallersEnv(t)
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ctx := context.Background()
	req := api.StartRequest{Workload: e.workload, Intent: "fix the build"}

	tokenFile := write("token", []byte(e.trust.token(t, orchestrator, bridledID, time.Now().Add(5*time.Minute))+"\n"))
	task, err := api.NewClient(e.socket).WithTokenFile(tokenFile).StartTask(ctx, req)
	if err != nil {
		t.Fatalf("with a token file: %v", err)
	}
	if _, err := api.NewClient(e.socket).WithTokenFile(tokenFile).EndTask(ctx, task.ID); err != nil {
		t.Fatal(err)
	}

	certPEM, keyPEM, err := e.trust.svid(t, orchestrator).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	bundlePEM, err := e.trust.x509Bundle().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	c, err := api.NewTLSClient("https://"+e.tcp, write("svid.pem", certPEM), write("key.pem", keyPEM), write("bundle.pem", bundlePEM))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartTask(ctx, req); err != nil {
		t.Fatalf("over mutual TLS: %v", err)
	}
}

// Every address of 127.0.0.0/8 reaches a listener on 127.0.0.1, and any
// local user may bind any of them as its source: counted one by one, a
// single local process would hold the whole TCP pool from 127.0.0.2,
// 127.0.0.3… (connections held through the TLS handshake's timeout), and
// no orchestrator could connect. Loopback callers are one address.
func TestTCPConnectionLimitLoopbackIsOneAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := make(chan string, 4)
	tl := newTCPListener(ln, config.APILimits{Connections: 4, ConnectionsPerUID: 1}, func(remote, reason string) { refused <- reason })
	defer tl.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	for i, src := range []string{"127.0.0.2", "127.0.0.3"} {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		select {
		case a := <-accepted:
			defer a.Close()
			if i > 0 {
				t.Fatalf("a second loopback connection (from %s) accepted over the per-address limit", src)
			}
		case r := <-refused:
			if i == 0 {
				t.Fatalf("first: refused %q", r)
			}
			t.Log(r)
		case <-time.After(5 * time.Second):
			t.Fatal("neither accepted nor refused")
		}
	}
}

// A Workload API that does not answer at start leaves bridled running with
// SVID callers refused, saying why, until it answers.
func TestWorkloadAPILate(t *testing.T) {
	addr := "unix://" + filepath.Join(t.TempDir(), "absent.sock")
	w := openLate(context.Background(), addr, true, 200*time.Millisecond, slog.New(slog.DiscardHandler))
	defer w.Close()
	if w.Degraded() == "" {
		t.Fatal("no Workload API, yet not degraded")
	}
	if _, err := w.GetJWTBundleForTrustDomain(spiffeid.RequireTrustDomainFromString("example.org")); err == nil || !strings.Contains(err.Error(), "no trust bundles") {
		t.Fatalf("bundle without a Workload API: %v", err)
	}
	if _, err := w.GetX509SVID(); err == nil {
		t.Fatal("an SVID without a Workload API")
	}
}
