package engine

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/bundle"
)

// bundleServer is a loopback bundle service serving one bundle at a time,
// with ETags, as OPA bundle servers do: over https with its own CA (caFile)
// from newBundleServer, over plain http from newPlainBundleServer.
type bundleServer struct {
	*httptest.Server
	caFile   string // PEM of the https server's certificate, its own CA
	mu       sync.Mutex
	body     []byte
	etag     string
	status   int // when non-zero, every request gets this status
	requests atomic.Int32
	auth     string // the Authorization header of the last request
}

func newBundleServer(t *testing.T) *bundleServer {
	s := newUnstartedBundleServer(t)
	s.StartTLS()
	s.caFile = filepath.Join(t.TempDir(), "ca.pem")
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Certificate().Raw})
	if err := os.WriteFile(s.caFile, ca, 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

func newPlainBundleServer(t *testing.T) *bundleServer {
	s := newUnstartedBundleServer(t)
	s.Start()
	return s
}

func newUnstartedBundleServer(t *testing.T) *bundleServer {
	s := &bundleServer{}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.auth = r.Header.Get("Authorization")
		if r.URL.Path != "/bundles/agents.tar.gz" {
			http.NotFound(w, r)
			return
		}
		if s.status != 0 {
			w.WriteHeader(s.status)
			return
		}
		if s.etag != "" && r.Header.Get("If-None-Match") == s.etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("ETag", s.etag)
		w.Header().Set("Content-Type", "application/gzip")
		w.Write(s.body)
	}))
	t.Cleanup(s.Close)
	return s
}

// source is the BundleSource of this server's bundle.
func (s *bundleServer) source() BundleSource {
	return BundleSource{URL: s.URL, Resource: "bundles/agents.tar.gz", CACertFile: s.caFile}
}

func (s *bundleServer) serve(body []byte, etag string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.body, s.etag, s.status = body, etag, 0
}

func (s *bundleServer) fail(status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status = status
}

// makeBundle builds a bundle tarball with the given revision and modules
// (path -> Rego), signed with key when key is non-empty.
func makeBundle(t *testing.T, revision string, modules map[string]string, key string) []byte {
	t.Helper()
	b := bundle.Bundle{
		Manifest: bundle.Manifest{Revision: revision},
		Data:     map[string]any{},
	}
	for path, src := range modules {
		b.Modules = append(b.Modules, bundle.ModuleFile{URL: path, Path: path, Raw: []byte(src)})
	}
	if key != "" {
		if err := b.GenerateSignature(bundle.NewSigningConfig(key, "HS256", ""), "ci", false); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := bundle.NewWriter(&buf).Write(b); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func portPolicy(port int) map[string]string {
	return map[string]string{"/bridle/policy.rego": fmt.Sprintf(`package bridle

envelope := {"egress": [{"protocol": "tcp", "cidr": "192.0.2.0/24", "ports": [%d]}]}
`, port)}
}

func evalPort(t *testing.T, e *Engine) string {
	t.Helper()
	d, err := e.Evaluate(context.Background(), taskInput("x", 0))
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprint(d.Envelope.Egress)
}

func TestBundleUpdates(t *testing.T) {
	srv := newBundleServer(t)
	e := NewEngine()
	w, err := e.WatchBundle(srv.source())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	// Nothing served yet: the first fetch fails and no policy is in force.
	srv.fail(http.StatusNotFound)
	if err := w.Fetch(ctx); err == nil || !strings.Contains(err.Error(), "Not Found") {
		t.Errorf("Fetch from an empty service = %v, want a Not Found error", err)
	}
	if _, err := e.Evaluate(ctx, taskInput("x", 0)); err != ErrNoPolicy {
		t.Errorf("Evaluate before any bundle = %v, want ErrNoPolicy", err)
	}

	srv.serve(makeBundle(t, "rev-1", portPolicy(443), ""), `"e1"`)
	if err := w.Fetch(ctx); err != nil {
		t.Fatal(err)
	}
	if e.Revision() != "rev-1" || evalPort(t, e) != "[tcp:192.0.2.0/24:443]" {
		t.Fatalf("after rev-1: revision %q, egress %s", e.Revision(), evalPort(t, e))
	}
	if st := e.Status(); st.Source != "bundle:"+srv.URL+"/bundles/agents.tar.gz" || st.LastError != nil {
		t.Errorf("status = %+v", st)
	}

	// Unchanged: the service answers 304 and nothing happens.
	before := srv.requests.Load()
	if err := w.Fetch(ctx); err != nil {
		t.Fatal(err)
	}
	if srv.requests.Load() != before+1 || e.Revision() != "rev-1" {
		t.Errorf("a 304 changed something")
	}

	// An update changes the envelope of tasks evaluated from now on.
	srv.serve(makeBundle(t, "rev-2", portPolicy(8443), ""), `"e2"`)
	if err := w.Fetch(ctx); err != nil {
		t.Fatal(err)
	}
	if e.Revision() != "rev-2" || evalPort(t, e) != "[tcp:192.0.2.0/24:8443]" {
		t.Fatalf("after rev-2: revision %q, egress %s", e.Revision(), evalPort(t, e))
	}
	d, _ := e.Evaluate(ctx, taskInput("x", 0))
	if d.Revision != "rev-2" {
		t.Errorf("decision revision %q", d.Revision)
	}

	// Broken bundles are refused with file:line and rev-2 stays.
	broken := []struct {
		name string
		body []byte
		want string
	}{
		{"parse error", makeBundle(t, "rev-3", map[string]string{"/bridle/policy.rego": "package bridle\n\nenvelope := {\n"}, ""), "/bridle/policy.rego:4: rego_parse_error"},
		{"type error", makeBundle(t, "rev-4", map[string]string{"/bridle/policy.rego": "package bridle\n\nenvelope := {} if input.task.intnet\n"}, ""), "/bridle/policy.rego:3: rego_type_error"},
		{"schema error", makeBundle(t, "rev-5", map[string]string{"/bridle/policy.rego": "package bridle\n\nenvelope := {\"egress\": [{\"protocol\": \"tcp\", \"host\": \"x.*.example\"}]}\n"}, ""), "/bridle/policy.rego:3: data.bridle.envelope: egress[0]"},
		{"not a tarball", []byte("<html>maintenance</html>"), "gzip"},
	}
	for i, tc := range broken {
		srv.serve(tc.body, fmt.Sprintf(`"bad%d"`, i))
		err := w.Fetch(ctx)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "policy in force unchanged") {
			t.Errorf("%s: Fetch = %v, want an error containing %q", tc.name, err, tc.want)
		}
		if e.Revision() != "rev-2" || evalPort(t, e) != "[tcp:192.0.2.0/24:8443]" {
			t.Errorf("%s: policy in force changed to %q", tc.name, e.Revision())
		}
		if st := e.Status(); st.LastError == nil || st.Revision != "rev-2" {
			t.Errorf("%s: status = %+v", tc.name, st)
		}
	}

	// A failed service keeps rev-2 too.
	srv.fail(http.StatusInternalServerError)
	if err := w.Fetch(ctx); err == nil || e.Revision() != "rev-2" {
		t.Errorf("server error: Fetch = %v, revision %q", err, e.Revision())
	}

	// And the next good bundle goes into force.
	srv.serve(makeBundle(t, "rev-6", portPolicy(22), ""), `"e6"`)
	if err := w.Fetch(ctx); err != nil {
		t.Fatal(err)
	}
	if e.Revision() != "rev-6" || e.Status().LastError != nil {
		t.Errorf("after rev-6: %+v", e.Status())
	}
}

func TestBundleWithoutRevisionUsesContentHash(t *testing.T) {
	srv := newBundleServer(t)
	srv.serve(makeBundle(t, "", portPolicy(443), ""), `"e1"`)
	e := NewEngine()
	src := srv.source()
	src.Resource = "/bundles/agents.tar.gz"
	w, err := e.WatchBundle(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Fetch(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(e.Revision(), "sha256:") {
		t.Errorf("revision %q, want a content hash", e.Revision())
	}
}

func TestSignedBundles(t *testing.T) {
	srv := newPlainBundleServer(t)
	e := NewEngine()
	key := &BundleKey{ID: "ci", Algorithm: "HS256", Key: "a shared secret for the test"}
	w, err := e.WatchBundle(BundleSource{URL: srv.URL, Resource: "bundles/agents.tar.gz", Verify: key})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	srv.serve(makeBundle(t, "signed-1", portPolicy(443), key.Key), `"s1"`)
	if err := w.Fetch(ctx); err != nil {
		t.Fatal(err)
	}
	if e.Revision() != "signed-1" {
		t.Fatalf("revision %q", e.Revision())
	}

	for name, body := range map[string][]byte{
		"unsigned":  makeBundle(t, "unsigned", portPolicy(1), ""),
		"other key": makeBundle(t, "forged", portPolicy(1), "another secret"),
		"tampered":  tamper(t, makeBundle(t, "tampered", portPolicy(443), key.Key)),
	} {
		srv.serve(body, `"`+name+`"`)
		err := w.Fetch(ctx)
		if err == nil {
			t.Errorf("%s bundle accepted", name)
		}
		t.Logf("%s: %v", name, err)
		if e.Revision() != "signed-1" {
			t.Errorf("%s bundle went into force", name)
		}
	}
}

// tamper rewrites the policy inside a signed bundle tarball, keeping every
// other file, the signature among them, as it is.
func tamper(t *testing.T, signed []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(signed))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	var sawSignature bool
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		sawSignature = sawSignature || strings.HasSuffix(h.Name, ".signatures.json")
		if strings.HasSuffix(h.Name, ".rego") {
			body = bytes.ReplaceAll(body, []byte("[443]"), []byte(`["1-65535"]`))
		}
		h.Size = int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(body)
	}
	if !sawSignature {
		t.Fatal("signed bundle has no .signatures.json")
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

func TestBundleToken(t *testing.T) {
	srv := newBundleServer(t)
	srv.serve(makeBundle(t, "r", portPolicy(443), ""), `"e"`)
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	src := srv.source()
	src.TokenFile = token
	w, err := NewEngine().WatchBundle(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Fetch(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.auth != "Bearer s3cret" {
		t.Errorf("Authorization %q", srv.auth)
	}
}

func TestBundleRunPolls(t *testing.T) {
	srv := newBundleServer(t)
	srv.serve(makeBundle(t, "p1", portPolicy(443), ""), `"p1"`)
	e := NewEngine()
	src := srv.source()
	src.MinDelay, src.MaxDelay = 5*time.Millisecond, 10*time.Millisecond
	w, err := e.WatchBundle(src)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	waitFor := func(rev string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); e.Revision() != rev; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("revision %q, want %q", e.Revision(), rev)
			}
		}
	}
	waitFor("p1")
	srv.serve(makeBundle(t, "p2", portPolicy(8443), ""), `"p2"`)
	waitFor("p2")
	cancel()
	if err := <-done; err != context.Canceled {
		t.Errorf("Run = %v", err)
	}
}

func TestBundleSourceChecks(t *testing.T) {
	key := &BundleKey{ID: "k", Key: "-----BEGIN PUBLIC KEY-----"}
	for _, src := range []BundleSource{
		{URL: "http://bundles.example.org", Resource: "b.tar.gz"}, // plain http, unsigned
		{URL: "http://127.0.0.1:8181", Resource: "b"},             // loopback is no exception: a workload can listen there
		{URL: "http://[::1]:8181", Resource: "b"},
		{URL: "http://localhost:8181", Resource: "b"},
		{URL: "https://bundles.example.org/v1", Resource: "b"},                      // unsigned, any CA of the system's
		{URL: "http://127.0.0.1:8181", Resource: "b", Verify: key, TokenFile: "/t"}, // the token over plain http
		{URL: "http://127.0.0.1:8181", Resource: "b", CACertFile: "/ca.pem"},        // a CA means nothing over http
		{URL: "ftp://127.0.0.1", Resource: "b.tar.gz", Verify: key},
		{URL: "127.0.0.1:8181", Resource: "b.tar.gz", Verify: key},
		{URL: "http://127.0.0.1:8181", Verify: key},
		{URL: "http://127.0.0.1:8181", Resource: "b", Verify: key, MinDelay: time.Minute, MaxDelay: time.Second},
		{URL: "https://bundles.example.org", Resource: "b", Verify: &BundleKey{ID: "k"}},
	} {
		if _, err := NewEngine().WatchBundle(src); err == nil {
			t.Errorf("WatchBundle(%+v) accepted", src)
		}
	}
	for _, src := range []BundleSource{
		{URL: "http://127.0.0.1:8181", Resource: "b", Verify: key},
		{URL: "http://bundles.example.org", Resource: "b", Verify: key},
		{URL: "https://bundles.example.org/v1", Resource: "b", CACertFile: "/ca.pem"},
		{URL: "https://bundles.example.org/v1", Resource: "b", CACertFile: "/ca.pem", TokenFile: "/t"},
		{URL: "https://bundles.example.org/v1", Resource: "b", Verify: key, TokenFile: "/t"},
	} {
		if _, err := NewEngine().WatchBundle(src); err != nil {
			t.Errorf("WatchBundle(%+v): %v", src, err)
		}
	}
}

func TestLoadBundleFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bundle.tar.gz")
	if err := os.WriteFile(path, makeBundle(t, "file-1", portPolicy(443), ""), 0o644); err != nil {
		t.Fatal(err)
	}
	e := NewEngine()
	if err := e.LoadBundleFile(context.Background(), path); err != nil {
		t.Fatal(err)
	}
	if e.Revision() != "file-1" || evalPort(t, e) != "[tcp:192.0.2.0/24:443]" {
		t.Errorf("revision %q", e.Revision())
	}
}

func TestBundleRegoV0Refused(t *testing.T) {
	b := bundle.Bundle{
		Manifest: bundle.Manifest{Revision: "old", RegoVersion: new(0)},
		Data:     map[string]any{},
		Modules:  []bundle.ModuleFile{{URL: "/p.rego", Path: "/p.rego", Raw: []byte("package bridle\n\nenvelope = {\"egress\": []} { true }\n")}},
	}
	var buf bytes.Buffer
	if err := bundle.NewWriter(&buf).Write(b); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "b.tar.gz")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	err := NewEngine().LoadBundleFile(context.Background(), path)
	if err == nil || !strings.Contains(err.Error(), "Rego v1 only") {
		t.Errorf("v0 bundle: %v, want refused", err)
	}
}

// squatter is what a workload or a local user runs on the bundle service's
// port: it serves its own, unsigned policy and keeps what it is sent.
type squatter struct {
	srv  *httptest.Server
	auth atomic.Value // the last Authorization header it received
	hits atomic.Int32
}

func newSquatter(t *testing.T, addr string, useTLS bool, bundle []byte) *squatter {
	t.Helper()
	sq := &squatter{}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	sq.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sq.hits.Add(1)
		sq.auth.Store(r.Header.Get("Authorization"))
		w.Write(bundle)
	}))
	sq.srv.Listener.Close()
	sq.srv.Listener = ln
	sq.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point
	if useTLS {
		// A certificate of its own: it has no key of the service's CA.
		sq.srv.TLS = &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}
		sq.srv.StartTLS()
	} else {
		sq.srv.Start()
	}
	t.Cleanup(sq.srv.Close)
	return sq
}

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "squatter"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// A workload listening on the bundle service's loopback port served its own
// policy, and received the bearer token: with plain http and no signature
// bridled accepted both. Now such a source is refused outright, the token
// never goes over plain http, a squatter cannot pass the pinned CA's TLS
// check (and receives no token), and with signed bundles an unsigned one
// is refused while the policy in force stays.
func TestEscapeBundleSquat(t *testing.T) {
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	squatted := makeBundle(t, "squatted", portPolicy(1), "")

	// Plain http, unsigned: refused before anything is fetched.
	sq := newSquatter(t, "127.0.0.1:0", false, squatted)
	for _, src := range []BundleSource{
		{URL: sq.srv.URL, Resource: "bundles/agents.tar.gz"},
		{URL: sq.srv.URL, Resource: "bundles/agents.tar.gz", TokenFile: token},
		{URL: sq.srv.URL, Resource: "bundles/agents.tar.gz", TokenFile: token, Verify: &BundleKey{ID: "ci", Algorithm: "HS256", Key: "k"}},
	} {
		if _, err := NewEngine().WatchBundle(src); err == nil {
			t.Errorf("WatchBundle(%+v) accepted a source any local process can serve", src)
		} else {
			t.Log(err)
		}
	}
	if sq.hits.Load() != 0 {
		t.Fatal("the squatter was asked for a bundle")
	}

	// https with the service's CA pinned: the real service, then a
	// squatter on its port with a certificate of its own.
	ctx := context.Background()
	srv := newBundleServer(t)
	srv.serve(makeBundle(t, "real-1", portPolicy(443), ""), `"r1"`)
	e := NewEngine()
	src := srv.source()
	src.TokenFile = token
	w, err := e.WatchBundle(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Fetch(ctx); err != nil || e.Revision() != "real-1" {
		t.Fatalf("the real service's bundle: %v, revision %q", err, e.Revision())
	}
	addr := srv.Listener.Addr().String()
	srv.Close()
	tlsSq := newSquatter(t, addr, true, squatted)
	if err := w.Fetch(ctx); err == nil {
		t.Fatal("a squatter without the pinned CA's certificate was accepted")
	} else {
		t.Log(err)
	}
	if e.Revision() != "real-1" {
		t.Fatalf("revision %q after the squatter answered, want real-1", e.Revision())
	}
	if got, _ := tlsSq.auth.Load().(string); got != "" {
		t.Fatalf("the squatter received the token: %q", got)
	}

	// Signed bundles over plain http: the squatter's unsigned bundle is
	// refused and the signed policy stays in force.
	key := &BundleKey{ID: "ci", Algorithm: "HS256", Key: "a shared secret for the test"}
	plain := newPlainBundleServer(t)
	plain.serve(makeBundle(t, "signed-1", portPolicy(443), key.Key), `"s1"`)
	e = NewEngine()
	w, err = e.WatchBundle(BundleSource{URL: plain.URL, Resource: "bundles/agents.tar.gz", Verify: key})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Fetch(ctx); err != nil || e.Revision() != "signed-1" {
		t.Fatalf("signed bundle: %v, revision %q", err, e.Revision())
	}
	addr = plain.Listener.Addr().String()
	plain.Close()
	newSquatter(t, addr, false, squatted)
	if err := w.Fetch(ctx); err == nil {
		t.Fatal("the squatter's unsigned bundle was accepted")
	}
	if e.Revision() != "signed-1" || !strings.Contains(evalPort(t, e), "443") {
		t.Fatalf("after the squatter's bundle: revision %q, envelope %s", e.Revision(), evalPort(t, e))
	}
}
