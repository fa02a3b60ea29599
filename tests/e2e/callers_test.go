package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/bridle-sh/bridle/tests/spiretest"
)

const (
	// orchestratorOK is in admins.identities; orchestratorOther is in the
	// trust domain (so api.tcp_authorized lets it connect) but not an admin.
	orchestratorOK    = "spiffe://example.org/orchestrator/ok"
	orchestratorOther = "spiffe://example.org/orchestrator/other"
	bridledAudience   = "spiffe://example.org/bridled"
)

// callersDaemon is a bridled that takes its trust bundles and its own
// X.509-SVID from a real SPIRE agent's Workload API, accepts JWT-SVIDs for
// its audience on the socket and serves the task API over mutual TLS on
// loopback; only orchestratorOK is an admin by identity.
type callersDaemon struct {
	*daemonEnv
	spire *spiretest.SPIRE
	tcp   string // api.tcp_listen, 127.0.0.1:PORT
	files string // a directory the workload user can read, for its tokens and keys
}

func newCallersDaemon(t *testing.T) *callersDaemon {
	t.Helper()
	spiretest.Bins(t)
	sp := spiretest.Start(t, spiretest.Options{})
	e := newDaemonEnv(t)
	// The caller is the workload user: it must reach the socket.
	e.openToAll()
	c := &callersDaemon{daemonEnv: e, spire: sp, tcp: fmt.Sprintf("127.0.0.1:%d", hostFreePort(t)), files: filepath.Join(e.dir, "caller")}
	if err := os.Mkdir(c.files, 0o755); err != nil {
		t.Fatal(err)
	}
	e.appendConfig(
		"spiffe:",
		"  workload_api: "+(&url.URL{Scheme: "unix", Path: sp.WorkloadSocket}).String(),
		"api:",
		"  jwt_audiences: ["+bridledAudience+"]",
		"  tcp_listen: "+c.tcp,
		"  tcp_authorized: [spiffe://example.org]",
		"admins:",
		"  identities: ["+orchestratorOK+"]",
	)
	e.start()
	return c
}

// hostFreePort is a TCP port nothing listens on in the host's network
// namespace, where bridled runs.
func hostFreePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// file writes data where the workload user, and only it, can read it.
func (c *callersDaemon) file(name string, data []byte) string {
	c.t.Helper()
	p := filepath.Join(c.files, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		c.t.Fatal(err)
	}
	if err := os.Chown(p, nobodyID, nobodyID); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// bridleAsNobody runs `bridle task ARGS...` as the workload user, outside
// any workload: a local user who is not an admin by uid or gid.
func (c *callersDaemon) bridleAsNobody(args ...string) (string, error) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bridleBin, append([]string{"task"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobodyID, Gid: nobodyID, Groups: []uint32{}}}
	cmd.Env = []string{"PATH=/usr/bin:/bin"} // no BRIDLE_TOKEN_FILE from the test's environment
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// startWithToken starts a task on the socket as the workload user with the
// JWT-SVID token (none: "").
func (c *callersDaemon) startWithToken(cg, token string) (string, error) {
	c.t.Helper()
	args := []string{"--socket", c.socket}
	if token != "" {
		args = append(args, "--token-file", c.file(fmt.Sprintf("token-%d", time.Now().UnixNano()), []byte(token+"\n")))
	}
	return c.bridleAsNobody(append(args, "start", "--workload", cg, "--intent", "callers test")...)
}

// startOverTLS starts a task over api.tcp_listen as the workload user.
func (c *callersDaemon) startOverTLS(cg string, certPEM, keyPEM, bundlePEM []byte) (string, error) {
	c.t.Helper()
	n := time.Now().UnixNano()
	return c.bridleAsNobody("--api", "https://"+c.tcp,
		"--svid-cert", c.file(fmt.Sprintf("svid-%d.pem", n), certPEM),
		"--svid-key", c.file(fmt.Sprintf("key-%d.pem", n), keyPEM),
		"--bundle", c.file(fmt.Sprintf("bundle-%d.pem", n), bundlePEM),
		"start", "--workload", cg, "--intent", "callers test")
}

// wantNoTask checks that no task runs on the workload.
func (c *callersDaemon) wantNoTask(what, cg string) {
	c.t.Helper()
	for _, tk := range c.listTasks() {
		if tk.Workload == cg {
			c.t.Fatalf("%s: a task started: %+v", what, tk)
		}
	}
}

// refusalRecord waits for the audit record of a refused API call whose
// reason holds all of want.
func (c *callersDaemon) refusalRecord(want ...string) map[string]any {
	c.t.Helper()
	return c.waitAudit(func(r map[string]any) bool {
		if r["action"] != "api" || r["verdict"] != "deny" || r["path"] != "POST /v1/tasks" {
			return false
		}
		for _, w := range want {
			if !strings.Contains(fmt.Sprint(r["reason"]), w) {
				return false
			}
		}
		return true
	})
}

// jwtExpiry reads a JWT's exp claim (the signature is the daemon's
// business; the test only needs to know when to try it).
func jwtExpiry(t *testing.T, token string) time.Time {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %q", token)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("JWT payload: %v", err)
	}
	var claims struct {
		Exp int64 `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.Exp == 0 {
		t.Fatalf("JWT payload %s: no exp (%v)", payload, err)
	}
	return time.Unix(claims.Exp, 0)
}

// An orchestrator proves its SPIFFE ID with a JWT-SVID minted by the real
// SPIRE server: a local user who is no admin by uid starts and ends a task
// with it, and the same user without the token is refused. A token for
// another audience, an expired one and a valid one for an ID that is not
// an admin start nothing: 401 for a token that does not hold, 403 for an
// ID that is not allowed, each with an audit record.
func TestCallerJWTSVID(t *testing.T) {
	c := newCallersDaemon(t)
	// Minted first, with SPIRE's shortest lifetime (the CLI rounds the
	// ttl up to whole seconds; there is no other minimum): it expires
	// while the rest runs.
	expiring := c.spire.MintJWT(t, orchestratorOK, bridledAudience, time.Second)
	expires := jwtExpiry(t, expiring)

	cg := c.workload("jwt")
	// Not an admin by uid: the peer credentials alone are refused.
	if out, err := c.startWithToken(cg, ""); err == nil || !strings.Contains(out, "403") || !strings.Contains(out, "not an admin") {
		t.Fatalf("task start as uid %d without a token: %v: %s", nobodyID, err, out)
	}
	c.wantNoTask("no token", cg)

	token := c.spire.MintJWT(t, orchestratorOK, bridledAudience, 10*time.Minute)
	id, err := c.startWithToken(cg, token)
	if err != nil || !strings.HasPrefix(id, "t-") {
		t.Fatalf("task start with %s's JWT-SVID: %v: %s", orchestratorOK, err, id)
	}
	start := c.waitAudit(func(r map[string]any) bool {
		return r["action"] == "task_start" && r["verdict"] == "allow" && r["task"] == id
	})
	// The task_start record is the workload's (its identity is the
	// workload's, not the caller's); its reason names the requester.
	if start["workload"] != cg || start["identity"] != "spiffe://e2e.test/workload"+cg ||
		!strings.Contains(fmt.Sprint(start["reason"]), fmt.Sprintf("started by uid %d with identity %s (JWT-SVID)", nobodyID, orchestratorOK)) {
		t.Fatalf("task_start record: %v", start)
	}
	c.waitLog(fmt.Sprintf("by_uid=%d by_identity=%s by_auth=jwt-svid", nobodyID, orchestratorOK))
	// The same token ends it; the task_end record names the caller.
	if out, err := c.bridleAsNobody("--socket", c.socket, "--token-file", c.file("token-end", []byte(token)), "end", id); err != nil {
		t.Fatalf("task end with the JWT-SVID: %v: %s", err, out)
	}
	end := c.waitAudit(func(r map[string]any) bool { return r["action"] == "task_end" && r["task"] == id })
	if reason := fmt.Sprint(end["reason"]); !strings.Contains(reason, fmt.Sprintf("uid %d with identity %s (JWT-SVID)", nobodyID, orchestratorOK)) {
		t.Fatalf("task_end record does not name the caller: %v", end)
	}

	for _, tc := range []struct {
		name, token string
		code        string
		reason      []string // in the answer and the audit record
	}{
		{"wrong audience", c.spire.MintJWT(t, orchestratorOK, "spiffe://example.org/someone-else", 10*time.Minute),
			"401", []string{"JWT-SVID refused", "audience"}},
		{"not an admin", c.spire.MintJWT(t, orchestratorOther, bridledAudience, 10*time.Minute),
			"403", []string{"identity " + orchestratorOther, "not an admin"}},
	} {
		out, err := c.startWithToken(cg, tc.token)
		if err == nil || !strings.Contains(out, tc.code) {
			t.Fatalf("%s: want %s, got %v: %s", tc.name, tc.code, err, out)
		}
		for _, r := range tc.reason {
			if !strings.Contains(out, r) {
				t.Fatalf("%s: answer does not say %q: %s", tc.name, r, out)
			}
		}
		c.wantNoTask(tc.name, cg)
		rec := c.refusalRecord(tc.reason...)
		if rec["workload"] == cg {
			t.Fatalf("%s: refusal recorded against the workload: %v", tc.name, rec)
		}
	}
	// The refused ID is what the caller proved: its record says so.
	if rec := c.refusalRecord("identity "+orchestratorOther, "not an admin"); rec["identity"] != orchestratorOther {
		t.Fatalf("refusal of a proved, unauthorised ID: record %v", rec)
	}

	// The expired token, once past its expiry.
	time.Sleep(time.Until(expires.Add(1500 * time.Millisecond)))
	out, err := c.startWithToken(cg, expiring)
	if err == nil || !strings.Contains(out, "401") || !strings.Contains(out, "expired") {
		t.Fatalf("expired token (exp %s, now %s): want 401 saying expired, got %v: %s", expires.UTC(), time.Now().UTC(), err, out)
	}
	c.wantNoTask("expired token", cg)
	c.refusalRecord("JWT-SVID refused", "expired")
}

// Over mutual TLS on api.tcp_listen: an orchestrator with an X.509-SVID
// the real SPIRE server signed starts a task; a certificate of a CA of the
// caller's own making, with a SPIFFE ID in its URI SAN, fails the TLS
// handshake, and so does a caller without a certificate; an ID the
// listener admits but that is no admin is refused (403).
func TestCallerMTLS(t *testing.T) {
	c := newCallersDaemon(t)
	cg := c.workload("mtls")
	cert, key, bundle := c.spire.MintX509(t, orchestratorOK)
	id, err := c.startOverTLS(cg, cert, key, bundle)
	if err != nil || !strings.HasPrefix(id, "t-") {
		t.Fatalf("task start over mTLS with %s's X.509-SVID: %v: %s", orchestratorOK, err, id)
	}
	start := c.waitAudit(func(r map[string]any) bool {
		return r["action"] == "task_start" && r["verdict"] == "allow" && r["task"] == id
	})
	if !strings.Contains(fmt.Sprint(start["reason"]), "started by identity "+orchestratorOK+" (mTLS)") {
		t.Fatalf("task_start record: %v", start)
	}
	c.waitLog(fmt.Sprintf("by_identity=%s by_auth=x509-svid", orchestratorOK))
	if tasks := c.listTasks(); len(tasks) != 1 || tasks[0].ID != id {
		t.Fatalf("tasks: %+v", tasks)
	}
	c.mustEnd(id)

	// Its own CA, the same SPIFFE ID: bridled's bundle does not hold that
	// CA. The caller trusts bridled (the real bundle), so the handshake
	// fails on bridled's side, and the client hears its alert.
	fakeCert, fakeKey := selfMadeSVID(t, orchestratorOK)
	out, err := c.startOverTLS(cg, fakeCert, fakeKey, bundle)
	if err == nil || !strings.Contains(out, "tls:") {
		t.Fatalf("self-made certificate: want a TLS handshake failure, got %v: %s", err, out)
	}
	t.Logf("self-made certificate: %s", out)
	c.wantNoTask("self-made certificate", cg)

	// No certificate at all: a TLS client that verifies bridled's SVID
	// but offers none of its own.
	err = c.callWithoutCertificate(bundle)
	if err == nil || !strings.Contains(err.Error(), "tls:") {
		t.Fatalf("no client certificate: want a TLS handshake failure, got %v", err)
	}
	t.Logf("no client certificate: %v", err)
	c.wantNoTask("no client certificate", cg)
	c.waitLog("TLS handshake error")

	// Admitted by the listener (its trust domain), refused by the
	// admins.identities list.
	otherCert, otherKey, _ := c.spire.MintX509(t, orchestratorOther)
	out, err = c.startOverTLS(cg, otherCert, otherKey, bundle)
	if err == nil || !strings.Contains(out, "403") || !strings.Contains(out, "admins.identities") {
		t.Fatalf("mTLS caller that is no admin: want 403, got %v: %s", err, out)
	}
	c.wantNoTask("no admin over mTLS", cg)
	if rec := c.refusalRecord("identity "+orchestratorOther, "not an admin"); rec["identity"] != orchestratorOther {
		t.Fatalf("refusal over mTLS: record %v", rec)
	}
}

func (c *callersDaemon) mustEnd(id string) {
	c.t.Helper()
	if out, err := c.bridle("end", id); err != nil {
		c.t.Fatalf("task end %s: %v: %s", id, err, out)
	}
}

// callWithoutCertificate calls the status over api.tcp_listen, verifying
// bridled's X.509-SVID against bundlePEM but presenting no certificate.
func (c *callersDaemon) callWithoutCertificate(bundlePEM []byte) error {
	c.t.Helper()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	b, err := x509bundle.Parse(td, bundlePEM)
	if err != nil {
		c.t.Fatal(err)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: tlsconfig.TLSClientConfig(b, tlsconfig.AuthorizeMemberOf(td)),
	}}
	resp, err := hc.Get("https://" + c.tcp + "/v1/status")
	if err != nil {
		return err
	}
	resp.Body.Close()
	return fmt.Errorf("answered %s", resp.Status)
}

// selfMadeSVID is an X.509-SVID for id issued by a CA made up on the spot:
// everything right but the signer.
func selfMadeSVID(t *testing.T, id string) (certPEM, keyPEM []byte) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	td, _ := url.Parse("spiffe://example.org")
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{Organization: []string{"not SPIRE"}},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs: []*url.URL{td},
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	uri, _ := url.Parse(id)
	leafDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		URIs:        []*url.URL{uri},
	}, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM = append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})...)
	return certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}
