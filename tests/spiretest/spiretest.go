// Package spiretest runs a real SPIRE server and agent for Bridle's identity
// tests: the binaries built by tests/spire (make spire), a sqlite datastore,
// an agent attested by join token, the unix workload attestor, and the
// agent's admin socket (Delegated Identity API) open to the delegates given.
//
// Everything lives in one short directory under /tmp (unix socket paths are
// limited to 108 bytes, and t.TempDir's are long) and is stopped when the
// test ends; the server's and agent's logs are printed if the test failed.
package spiretest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Version is the SPIRE release tests/spire/go.mod pins; the cache directory
// is named after it.
const Version = "v1.13.3"

// SyncInterval is how often the agent asks the server for its entries and
// the server reloads its entry cache from the datastore: a new entry reaches
// a workload within about twice this. SPIRE's defaults (5s) are for
// production; any positive duration is accepted.
const SyncInterval = 500 * time.Millisecond

// bridledPath is the path of bridled's own workload entry, registered by Start
// for uid 0 (the tests run as root), and the agent's default delegate.
const bridledPath = "/bridled"

const (
	readyTimeout = 30 * time.Second
	cliTimeout   = 30 * time.Second
	stopTimeout  = 10 * time.Second
)

// BinDir is where tests/spire/build.sh puts spire-server and spire-agent:
// $BRIDLE_SPIRE_DIR, or /root/.cache/bridle/spire/<Version>.
func BinDir() string {
	if d := os.Getenv("BRIDLE_SPIRE_DIR"); d != "" {
		return d
	}
	return filepath.Join("/root/.cache/bridle/spire", Version)
}

// Bins returns the directory holding spire-server and spire-agent. Without
// them the test is skipped with the reason, except under CI (CI=true), where
// the build is part of the run and a missing binary is a failure.
func Bins(t testing.TB) string {
	t.Helper()
	dir := BinDir()
	var missing []string
	for _, name := range []string{"spire-server", "spire-agent"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode()&0o111 == 0 || !fi.Mode().IsRegular() {
			missing = append(missing, name)
		}
	}
	if len(missing) == 0 {
		return dir
	}
	msg := fmt.Sprintf("SPIRE %s: %s not in %s; build with `make spire` (tests/spire/build.sh)",
		Version, strings.Join(missing, " and "), dir)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// Options shape the SPIRE deployment Start runs.
type Options struct {
	TrustDomain string   // default "example.org"
	Delegates   []string // agent authorized_delegates (SPIFFE IDs); nil: spiffe://<td>/bridled
}

// SPIRE is a running server and agent.
type SPIRE struct {
	Dir, TrustDomain string
	ServerSocket     string // spire-server API socket
	WorkloadSocket   string // agent Workload API socket (path, not URL)
	AdminSocket      string // agent admin socket (Delegated Identity API)
	AgentID          string // the agent's SPIFFE ID: parent of workload entries

	bins          string
	agentConfig   string
	server, agent *process
	serverLog     string
	agentLog      string
	serverPort    int
	bundlePath    string
	agentDataDir  string
	serverDataDir string
	delegates     []string
	joinToken     string
}

// Start runs a SPIRE server and an agent attested to it by join token, and
// registers bridled's entry (spiffe://<td>/bridled for unix:uid:0). It
// returns once both answer their health checks; t.Cleanup stops them.
func Start(t testing.TB, o Options) *SPIRE {
	t.Helper()
	bins := Bins(t)
	start := time.Now()
	if o.TrustDomain == "" {
		o.TrustDomain = "example.org"
	}
	if o.Delegates == nil {
		o.Delegates = []string{"spiffe://" + o.TrustDomain + bridledPath}
	}

	// A prefix of its own: tests sharing the machine have been seen to
	// remove /tmp/sp* while this one ran.
	dir, err := os.MkdirTemp("/tmp", "bridle-spire-")
	if err != nil {
		t.Fatalf("spire dir: %v", err)
	}
	// Workloads of any uid reach the Workload API socket below.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("spire dir: %v", err)
	}
	s := &SPIRE{
		Dir:            dir,
		TrustDomain:    o.TrustDomain,
		ServerSocket:   filepath.Join(dir, "server", "api.sock"),
		WorkloadSocket: filepath.Join(dir, "public", "api.sock"),
		// SPIRE refuses an admin socket beside the Workload API's.
		AdminSocket:   filepath.Join(dir, "admin", "admin.sock"),
		bins:          bins,
		serverLog:     filepath.Join(dir, "server.log"),
		agentLog:      filepath.Join(dir, "agent.log"),
		bundlePath:    filepath.Join(dir, "bundle.pem"),
		serverDataDir: filepath.Join(dir, "server"),
		agentDataDir:  filepath.Join(dir, "agent"),
		agentConfig:   filepath.Join(dir, "agent.conf"),
		delegates:     o.Delegates,
	}
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{{s.serverDataDir, 0o700}, {s.agentDataDir, 0o700}, {filepath.Dir(s.AdminSocket), 0o700}, {filepath.Dir(s.WorkloadSocket), 0o755}} {
		if err := os.Mkdir(d.path, d.mode); err != nil {
			t.Fatalf("spire dir: %v", err)
		}
	}
	// Registered first, run last: the logs are read once both are stopped.
	t.Cleanup(func() { s.cleanupDir(t) })

	if s.serverPort, err = freePort(); err != nil {
		t.Fatalf("spire-server port: %v", err)
	}
	serverConfig := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(serverConfig, []byte(s.serverHCL()), 0o600); err != nil {
		t.Fatalf("spire-server config: %v", err)
	}
	s.server, err = startProcess(filepath.Join(bins, "spire-server"), s.serverLog, "run", "-config", serverConfig)
	if err != nil {
		t.Fatalf("spire-server: %v", err)
	}
	t.Cleanup(func() { s.server.stop(t, "spire-server") })
	s.waitHealthy(t, "spire-server", s.server, filepath.Join(bins, "spire-server"), "healthcheck", "-socketPath", s.ServerSocket)
	serverUp := time.Since(start)

	// The agent trusts the server through its bundle rather than
	// insecure_bootstrap.
	bundle := s.serverCLI(t, "bundle", "show")
	if err := os.WriteFile(s.bundlePath, bundle, 0o644); err != nil {
		t.Fatalf("trust bundle: %v", err)
	}
	var token struct {
		Value string `json:"value"`
	}
	out := s.serverCLI(t, "token", "generate", "-ttl", "600", "-output", "json")
	if err := json.Unmarshal(out, &token); err != nil || token.Value == "" {
		t.Fatalf("spire-server token generate: no token in %q (%v)", out, err)
	}
	s.joinToken = token.Value
	s.AgentID = "spiffe://" + s.TrustDomain + "/spire/agent/join_token/" + token.Value
	if err := os.WriteFile(s.agentConfig, []byte(s.agentHCL()), 0o600); err != nil {
		t.Fatalf("spire-agent config: %v", err)
	}
	t.Cleanup(func() {
		if s.agent != nil {
			s.agent.stop(t, "spire-agent")
		}
	})
	s.StartAgent(t)

	s.CreateEntry(t, "spiffe://"+s.TrustDomain+bridledPath, "unix:uid:0")
	t.Logf("spiretest: SPIRE %s up in %v (server %v), dir %s, agent %s",
		Version, time.Since(start).Round(time.Millisecond), serverUp.Round(time.Millisecond), dir, s.AgentID)
	return s
}

// StopAgent stops the agent; the server keeps running.
func (s *SPIRE) StopAgent(t testing.TB) {
	t.Helper()
	if s.agent == nil {
		t.Fatal("spire-agent is not running")
	}
	s.agent.stop(t, "spire-agent")
	s.agent = nil
}

// StartAgent starts the agent on the same sockets. It comes back as the same
// node: its SVID and key are kept in its data dir (disk key manager), so the
// used join token is not needed again and the entries parented to AgentID
// still apply.
func (s *SPIRE) StartAgent(t testing.TB) {
	t.Helper()
	if s.agent != nil {
		t.Fatal("spire-agent is already running")
	}
	bin := filepath.Join(s.bins, "spire-agent")
	p, err := startProcess(bin, s.agentLog, "run", "-config", s.agentConfig)
	if err != nil {
		t.Fatalf("spire-agent: %v", err)
	}
	s.agent = p
	s.waitHealthy(t, "spire-agent", p, bin, "healthcheck", "-socketPath", s.WorkloadSocket)
}

// CreateEntry registers a workload entry under the agent and returns its id.
// Selectors are "type:value", e.g. "unix:uid:1000".
func (s *SPIRE) CreateEntry(t testing.TB, spiffeID string, selectors ...string) string {
	t.Helper()
	args := []string{"entry", "create", "-parentID", s.AgentID, "-spiffeID", spiffeID, "-output", "json"}
	for _, sel := range selectors {
		args = append(args, "-selector", sel)
	}
	out := s.serverCLI(t, args...)
	var resp struct {
		Results []struct {
			Status struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			} `json:"status"`
			Entry struct {
				ID string `json:"id"`
			} `json:"entry"`
		} `json:"results"`
	}
	if err := json.Unmarshal(out, &resp); err != nil {
		t.Fatalf("spire-server entry create %s: %v in %q", spiffeID, err, out)
	}
	if len(resp.Results) != 1 {
		t.Fatalf("spire-server entry create %s: %d results in %q", spiffeID, len(resp.Results), out)
	}
	r := resp.Results[0]
	if r.Status.Code != 0 || r.Entry.ID == "" {
		t.Fatalf("spire-server entry create %s: code %d: %s", spiffeID, r.Status.Code, r.Status.Message)
	}
	return r.Entry.ID
}

// DeleteEntry removes a workload entry; the agent drops its SVID at its next
// sync.
func (s *SPIRE) DeleteEntry(t testing.TB, id string) {
	t.Helper()
	s.serverCLI(t, "entry", "delete", "-entryID", id)
}

// MintJWT has the server sign a JWT-SVID for any ID of its trust domain, as
// a caller with that identity would present it. ttl 0: the server's default.
func (s *SPIRE) MintJWT(t testing.TB, spiffeID, audience string, ttl time.Duration) string {
	t.Helper()
	args := []string{"jwt", "mint", "-spiffeID", spiffeID, "-audience", audience}
	if ttl > 0 {
		args = append(args, "-ttl", ttl.String())
	}
	token := strings.TrimSpace(string(s.serverCLI(t, args...)))
	if strings.Count(token, ".") != 2 {
		t.Fatalf("spire-server jwt mint %s: not a JWT: %q", spiffeID, token)
	}
	return token
}

// MintX509 has the server sign an X509-SVID for any ID of its trust domain:
// the certificate chain, its private key and the trust bundle, all PEM.
func (s *SPIRE) MintX509(t testing.TB, spiffeID string) (certPEM, keyPEM, bundlePEM []byte) {
	t.Helper()
	out, err := os.MkdirTemp(s.Dir, "x509-")
	if err != nil {
		t.Fatalf("spire-server x509 mint: %v", err)
	}
	defer os.RemoveAll(out)
	s.serverCLI(t, "x509", "mint", "-spiffeID", spiffeID, "-write", out)
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatalf("spire-server x509 mint %s: %v", spiffeID, err)
		}
		return b
	}
	return read("svid.pem"), read("key.pem"), read("bundle.pem")
}

// serverCLI runs a spire-server subcommand against the server's socket and
// returns its standard output; a failure fails the test with its output.
func (s *SPIRE) serverCLI(t testing.TB, args ...string) []byte {
	t.Helper()
	// -socketPath belongs to the subcommand: it goes after its words.
	n := 1
	if len(args) > 1 && !strings.HasPrefix(args[1], "-") {
		n = 2
	}
	full := slices.Concat(args[:n], []string{"-socketPath", s.ServerSocket}, args[n:])
	out, err := runCLI(filepath.Join(s.bins, "spire-server"), full...)
	if err != nil {
		t.Fatalf("spire-server %s: %v", strings.Join(args[:n], " "), err)
	}
	return out
}

func runCLI(bin string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%w: %s%s", err, strings.TrimSpace(string(out)), strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// waitHealthy polls a health check until it passes, failing the test if the
// process exits first or it does not pass within readyTimeout.
func (s *SPIRE) waitHealthy(t testing.TB, name string, p *process, bin string, args ...string) {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	var last error
	for {
		select {
		case <-p.done:
			t.Fatalf("%s exited before it was healthy: %v", name, p.err)
		default:
		}
		_, last = runCLI(bin, args...)
		if last == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not healthy after %v: %v", name, readyTimeout, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cleanupDir prints the logs of a failed test and keeps its directory;
// otherwise it removes the directory.
func (s *SPIRE) cleanupDir(t testing.TB) {
	if !t.Failed() {
		os.RemoveAll(s.Dir)
		return
	}
	for _, path := range []string{s.serverLog, s.agentLog} {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Logf("spiretest: %v", err)
			continue
		}
		t.Logf("spiretest: %s:\n%s", path, b)
	}
	t.Logf("spiretest: kept %s for a look", s.Dir)
}

func (s *SPIRE) serverHCL() string {
	return fmt.Sprintf(`server {
	bind_address = "127.0.0.1"
	bind_port = "%d"
	socket_path = %q
	trust_domain = %q
	data_dir = %q
	log_level = "INFO"
	experimental {
		cache_reload_interval = %q
	}
}

plugins {
	DataStore "sql" {
		plugin_data {
			database_type = "sqlite3"
			connection_string = %q
		}
	}
	NodeAttestor "join_token" {
		plugin_data {}
	}
	KeyManager "memory" {
		plugin_data {}
	}
}
`, s.serverPort, s.ServerSocket, s.TrustDomain, s.serverDataDir, SyncInterval.String(),
		filepath.Join(s.serverDataDir, "datastore.sqlite3"))
}

func (s *SPIRE) agentHCL() string {
	delegates := make([]string, len(s.delegates))
	for i, d := range s.delegates {
		delegates[i] = fmt.Sprintf("%q", d)
	}
	return fmt.Sprintf(`agent {
	data_dir = %q
	log_level = "INFO"
	server_address = "127.0.0.1"
	server_port = "%d"
	socket_path = %q
	admin_socket_path = %q
	trust_bundle_path = %q
	trust_domain = %q
	join_token = %q
	authorized_delegates = [%s]
	experimental {
		sync_interval = %q
	}
}

plugins {
	NodeAttestor "join_token" {
		plugin_data {}
	}
	KeyManager "disk" {
		plugin_data {
			directory = %q
		}
	}
	WorkloadAttestor "unix" {
		plugin_data {}
	}
}
`, s.agentDataDir, s.serverPort, s.WorkloadSocket, s.AdminSocket, s.bundlePath, s.TrustDomain,
		s.joinToken, strings.Join(delegates, ", "), SyncInterval.String(), s.agentDataDir)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// process is a SPIRE server or agent run as a child, its output appended to
// a log file.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // set before done closes
}

func startProcess(bin, logPath string, args ...string) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// A test binary that dies (a timeout's panic) takes SPIRE with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// stop asks the process to exit (SIGTERM, so SPIRE closes its datastore and
// sockets) and kills it if it has not after stopTimeout.
func (p *process) stop(t testing.TB, name string) {
	select {
	case <-p.done:
		return
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Logf("spiretest: stop %s: %v", name, err)
	}
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		t.Logf("spiretest: %s still running %v after SIGTERM; killing it", name, stopTimeout)
		p.cmd.Process.Kill()
		<-p.done
	}
}
