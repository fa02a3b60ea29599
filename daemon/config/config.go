// Package config reads bridled's configuration file. Every field is
// documented in docs/DAEMON.md; unknown fields are refused, so a typo never
// silently leaves a root unconfined or an admin list empty.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bridle-sh/bridle/daemon/dns"
	"github.com/bridle-sh/bridle/daemon/identity"
	yaml "go.yaml.in/yaml/v3"
)

// Defaults for fields left out of the file.
const (
	DefaultSocket   = "/run/bridle/bridle.sock"
	DefaultStateDir = "/var/lib/bridle"
	DefaultPinDir   = "/sys/fs/bpf/bridle/daemon"
)

// Config is bridled's configuration.
type Config struct {
	// Roots are cgroup v2 subtree roots, relative to the cgroup v2 mount
	// (e.g. "/bridle-agents.slice"). Every cgroup below a root is confined
	// from its first instruction; created if missing.
	Roots    []string `yaml:"roots"`
	Socket   string   `yaml:"socket"`
	StateDir string   `yaml:"state_dir"`
	PinDir   string   `yaml:"pin_dir"`
	// PolicyDir and PolicyBundle are where the policy comes from; exactly
	// one is set.
	PolicyDir    string        `yaml:"policy_dir"`
	PolicyBundle *PolicyBundle `yaml:"policy_bundle"`
	AuditFile    string        `yaml:"audit_file"` // "" or "-": stdout
	AuditRotate  AuditRotate   `yaml:"audit_rotate"`
	// MetricsListen is the TCP address of the Prometheus endpoint
	// (/metrics); "" serves none.
	MetricsListen string `yaml:"metrics_listen"`
	// AllowAuditMode lets admins start tasks in audit mode (refusals
	// recorded, not enforced). Off by default: such a task is unconfined.
	AllowAuditMode bool   `yaml:"allow_audit_mode"`
	Admins         Admins `yaml:"admins"`
	// Readers may list tasks and read the status besides admins: tasks
	// carry intents, labels and identities, which are not for every
	// local user.
	Readers Admins `yaml:"readers"`
	// APILimits bound the task API's connections, so that no local user
	// can exhaust bridled's descriptors or memory.
	APILimits APILimits `yaml:"api_limits"`
	NodeName  string    `yaml:"node_name"`
	// Identities maps a cgroup path (the workload's, or one of its
	// ancestors) to the SPIFFE ID of the workloads below it; the longest
	// match wins. Unmapped workloads get spiffe://<node_name>/workload<path>.
	// Kept from before identity.static: read as identity.static.cgroups.
	Identities map[string]string `yaml:"identities"`
	// Identity chooses where workloads' SPIFFE IDs come from
	// (docs/IDENTITY.md).
	Identity IdentityConfig `yaml:"identity"`
	// HardeningCheckInterval is how often the processes below the roots
	// are checked for the unit settings adopted workloads need (also at
	// each task start). Default 30s, at least 1s.
	HardeningCheckInterval time.Duration `yaml:"hardening_check_interval"`
	// DNS configures Bridle's resolver, to which the kernel steers every
	// confined workload's DNS (docs/DNS.md).
	DNS DNS `yaml:"dns"`
	// SPIFFE is where bridled gets its own X.509-SVID and the trust
	// bundles callers' SVIDs are checked against.
	SPIFFE SPIFFE `yaml:"spiffe"`
	// API says which SVIDs the task API accepts from its callers.
	API API `yaml:"api"`
	// Approvals configures step-up approvals: requests opened from
	// refusals the policy's approvable entries cover.
	Approvals Approvals `yaml:"approvals"`
	// Kubernetes turns on the pod watch: the agent pods of this node are
	// confined like workloads below a root.
	Kubernetes Kubernetes `yaml:"kubernetes"`
}

// DNS configures the resolver. Zero values take the resolver's defaults.
type DNS struct {
	// Upstream is where allowed queries go: ADDR:PORT, or an address for
	// port 53. Default: the first nameserver in /etc/resolv.conf.
	Upstream string `yaml:"upstream"`
	// Listen4 and Listen6 are the resolver's addresses (UDP and TCP on
	// one port): default 127.0.0.1 and ::1 on an ephemeral port. The
	// workloads must reach them from their network namespace.
	Listen4 string `yaml:"listen4"`
	Listen6 string `yaml:"listen6"`
	// Interface, if set, is an existing link of the node (e.g. lo) that
	// bridled puts listen4 and listen6 on, for workloads in network
	// namespaces of their own (pods) to reach through their route to the
	// node (docs/DNS.md). listen4 is then required and neither address
	// may be one pods cannot reach (loopback, unspecified).
	Interface string `yaml:"interface"`
	// TTLFloor and TTLCeiling bound the life of a learned address.
	TTLFloor   time.Duration `yaml:"ttl_floor"`
	TTLCeiling time.Duration `yaml:"ttl_ceiling"`
	// WildcardNames, WildcardRate and WildcardBurst are each task's
	// budget of names allowed by wildcard rules alone.
	WildcardNames int     `yaml:"wildcard_names"`
	WildcardRate  float64 `yaml:"wildcard_rate"`
	WildcardBurst int     `yaml:"wildcard_burst"`
}

// check refuses values that cannot work, with the field's name.
func (d DNS) check() error {
	if d.Upstream != "" {
		if _, err := dns.ParseUpstream(d.Upstream); err != nil {
			return fmt.Errorf("dns.upstream: %w", err)
		}
	}
	for name, v := range map[string]string{"dns.listen4": d.Listen4, "dns.listen6": d.Listen6} {
		if v == "" {
			continue
		}
		ap, err := netip.ParseAddrPort(v)
		if err != nil || (name == "dns.listen4") != ap.Addr().Is4() {
			return fmt.Errorf("%s %q: want an IPv%s ADDR:PORT (port 0: any free one)", name, v, map[bool]string{true: "4", false: "6"}[name == "dns.listen4"])
		}
		// The kernel steers DNS to one address: a wildcard names none.
		if ap.Addr().IsUnspecified() {
			return fmt.Errorf("%s %q: the kernel steers DNS to one address; name it", name, v)
		}
		if d.Interface != "" {
			if err := dns.CheckReachable(ap.Addr()); err != nil {
				return fmt.Errorf("%s %q with dns.interface: %w", name, v, err)
			}
		}
	}
	if d.Interface != "" {
		if d.Listen4 == "" {
			return fmt.Errorf("dns.interface %q: set dns.listen4 to the address to put on it (e.g. 169.254.20.10:53)", d.Interface)
		}
		if _, err := net.InterfaceByName(d.Interface); err != nil {
			return fmt.Errorf("dns.interface %q: %w", d.Interface, err)
		}
	}
	switch {
	case d.TTLFloor < 0, d.TTLCeiling < 0:
		return fmt.Errorf("dns.ttl_floor %v, ttl_ceiling %v: must not be negative", d.TTLFloor, d.TTLCeiling)
	case d.TTLCeiling > 0 && d.TTLCeiling < d.TTLFloor:
		return fmt.Errorf("dns.ttl_ceiling %v is below dns.ttl_floor %v", d.TTLCeiling, d.TTLFloor)
	case d.WildcardNames < 0, d.WildcardRate < 0, d.WildcardBurst < 0:
		return errors.New("dns.wildcard_names, wildcard_rate and wildcard_burst must not be negative")
	}
	return nil
}

// IdentityConfig chooses and configures the identity source.
type IdentityConfig struct {
	// Source is "static" (the default) or "spire".
	Source string           `yaml:"source"`
	Static StaticIdentities `yaml:"static"`
	SPIRE  *SPIREIdentity   `yaml:"spire"`
}

// StaticIdentities map workloads to SPIFFE ID templates ({unit}, {uid},
// {cgroup}, {node}); see identity.StaticConfig for which mapping wins.
type StaticIdentities struct {
	Cgroups map[string]string `yaml:"cgroups"`
	Units   map[string]string `yaml:"units"`
	UIDs    map[uint32]string `yaml:"uids"`
}

// SPIREIdentity configures the SPIRE source.
type SPIREIdentity struct {
	// AdminSocket is the SPIRE agent's admin socket, on which it serves
	// the Delegated Identity API to its authorized_delegates.
	AdminSocket string `yaml:"admin_socket"`
	// Attest is "selectors" (default: bridled attests each workload's
	// cgroup, unit and uid itself) or "pid" (SPIRE's workload attestors
	// attest a pinned process of the workload).
	Attest string `yaml:"attest"`
	// Hold is how long a workload keeps its last identity while SPIRE is
	// unreachable. Default 5m.
	Hold time.Duration `yaml:"hold"`
	// Timeout bounds the wait for a workload's first answer at a task
	// start. Default 5s.
	Timeout time.Duration `yaml:"timeout"`
}

// Defaults of the SPIRE source.
const (
	DefaultSPIREHold    = 5 * time.Minute
	DefaultSPIRETimeout = 5 * time.Second
)

func (c *Config) checkIdentity() error {
	id := &c.Identity
	for p, tmpl := range c.Identities {
		clean, err := CgroupPath(p)
		if err != nil {
			return fmt.Errorf("identities: %w", err)
		}
		if _, err := spiffeid.FromString(tmpl); err != nil {
			return fmt.Errorf("identities[%s]: %q: %w", p, tmpl, err)
		}
		if _, dup := id.Static.Cgroups[clean]; dup {
			return fmt.Errorf("identities[%s]: also in identity.static.cgroups", p)
		}
		if id.Static.Cgroups == nil {
			id.Static.Cgroups = map[string]string{}
		}
		id.Static.Cgroups[clean] = tmpl
	}
	c.Identities = nil
	if err := c.StaticIdentity().Check(); err != nil {
		return err
	}
	switch id.Source {
	case "", string(identity.Static):
		id.Source = string(identity.Static)
		if id.SPIRE != nil {
			return errors.New("identity.spire is set but identity.source is static: say source: spire")
		}
	case string(identity.SPIRE):
		s := id.SPIRE
		if s == nil || s.AdminSocket == "" {
			return errors.New("identity.source spire needs identity.spire.admin_socket (the SPIRE agent's admin_socket_path)")
		}
		if !path.IsAbs(s.AdminSocket) {
			return fmt.Errorf("identity.spire.admin_socket %q: want an absolute path", s.AdminSocket)
		}
		switch identity.Attest(s.Attest) {
		case "":
			s.Attest = string(identity.BySelectors)
		case identity.BySelectors, identity.ByPID:
		default:
			return fmt.Errorf("identity.spire.attest %q: want selectors or pid", s.Attest)
		}
		switch {
		case s.Hold < 0, s.Timeout < 0:
			return errors.New("identity.spire.hold and timeout must not be negative")
		case s.Hold == 0:
			s.Hold = DefaultSPIREHold
		}
		if s.Timeout == 0 {
			s.Timeout = DefaultSPIRETimeout
		}
	default:
		return fmt.Errorf("identity.source %q: want static or spire", id.Source)
	}
	return nil
}

// StaticIdentity is the static source's mapping.
func (c *Config) StaticIdentity() identity.StaticConfig {
	return identity.StaticConfig{
		Cgroups: c.Identity.Static.Cgroups, Units: c.Identity.Static.Units,
		UIDs: c.Identity.Static.UIDs, Node: c.NodeName,
	}
}

// DefaultHardeningCheckInterval is HardeningCheckInterval's default.
const DefaultHardeningCheckInterval = 30 * time.Second

// PolicyBundle is an OPA bundle service the policy is polled from.
type PolicyBundle struct {
	URL        string        `yaml:"url"`
	Resource   string        `yaml:"resource"`
	TokenFile  string        `yaml:"token_file"`
	CACertFile string        `yaml:"ca_cert_file"`
	PollMin    time.Duration `yaml:"poll_min"`
	PollMax    time.Duration `yaml:"poll_max"`
	Verify     *VerifyKey    `yaml:"verify"`
}

// check refuses a bundle source a local process could impersonate. Any
// port on this host, loopback included, can be bound by a workload or a
// local user before bridled connects (or while it restarts): whoever
// answers there would decide every agent's envelope and, with token_file,
// receive the bearer token. So a bundle is trusted only for a signature
// made with the configured key (verify), or for a TLS peer holding a
// certificate from a CA configured for this service alone (ca_cert_file);
// and the token never goes over plain http.
func (b *PolicyBundle) check() error {
	u, err := url.Parse(b.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("policy_bundle.url %q: want http(s)://host[:port][/path]", b.URL)
	}
	switch {
	case u.Scheme == "http" && b.TokenFile != "":
		return fmt.Errorf("policy_bundle: token_file with a plain http url (%s) would hand the bearer token to whoever listens there; use https", b.URL)
	case u.Scheme == "http" && b.Verify == nil:
		return fmt.Errorf("policy_bundle: plain http url (%s) without verify: a workload or local user listening on that address could serve its own policy; set verify (signed bundles) or use https with ca_cert_file", b.URL)
	case u.Scheme == "https" && b.Verify == nil && b.CACertFile == "":
		return fmt.Errorf("policy_bundle: https url (%s) with neither verify nor ca_cert_file: any certificate the system's CAs sign for that name would be trusted; set verify (signed bundles) or pin the service's CA with ca_cert_file", b.URL)
	}
	return nil
}

// VerifyKey is the key bundle signatures must be made with.
type VerifyKey struct {
	ID        string `yaml:"id"`
	Algorithm string `yaml:"algorithm"`
	KeyFile   string `yaml:"key_file"`
}

// AuditRotate says when the audit file is rotated. Zero values take the
// defaults; rotation applies to a file, not to stdout.
type AuditRotate struct {
	MaxSizeMB  int  `yaml:"max_size_mb"`  // rotate at this size; default 100
	MaxFiles   int  `yaml:"max_files"`    // rotated files kept; default 10
	MaxAgeDays int  `yaml:"max_age_days"` // 0: kept regardless of age
	Compress   bool `yaml:"compress"`     // gzip rotated files
	// WorkloadPercent is the largest share of one file that one
	// workload's decision records may take (default 10; 100: no limit):
	// the rest are counted, so no single workload can force the rotation
	// that deletes the oldest file.
	WorkloadPercent int `yaml:"workload_percent"`
}

// Admins names who may start and end tasks besides root.
type Admins struct {
	UIDs []uint32 `yaml:"uids"`
	GIDs []uint32 `yaml:"gids"`
	// Identities are SPIFFE IDs of callers who proved them with an SVID
	// (api.jwt_audiences, api.tcp_listen): an exact ID, or a trust domain
	// (an ID with no path) for every ID in it.
	Identities []string `yaml:"identities"`
}

// APILimits bound the connections the task API keeps open. A connection
// over a limit is closed as soon as it is accepted.
type APILimits struct {
	// Connections from callers that are not admins, all together, and
	// from any one of their uids. Default 64 and 8.
	Connections       int `yaml:"connections"`
	ConnectionsPerUID int `yaml:"connections_per_uid"`
	// AdminConnections from admins (root included) outside the roots,
	// all together: kept apart, so that no one else can crowd admins
	// out. Default 64.
	AdminConnections int `yaml:"admin_connections"`
	// MetricsConnections to metrics_listen, all together. Default 16.
	MetricsConnections int `yaml:"metrics_connections"`
}

// Default API limits.
const (
	DefaultAPIConnections       = 64
	DefaultAPIConnectionsPerUID = 8
	DefaultAdminConnections     = 64
	DefaultMetricsConnections   = 16
)

// Load reads and checks a configuration file, filling in defaults.
func Load(file string) (*Config, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(b, file)
}

// Parse checks a configuration document; name is used in messages.
func Parse(b []byte, name string) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	// An empty file decodes to io.EOF: let it through to the checks, which
	// then say what is missing.
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config %s: %w", name, err)
	}
	if err := c.complete(); err != nil {
		return nil, fmt.Errorf("config %s: %w", name, err)
	}
	return &c, nil
}

func (c *Config) complete() error {
	if c.Socket == "" {
		c.Socket = DefaultSocket
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.PinDir == "" {
		c.PinDir = DefaultPinDir
	}
	nodeSet := c.NodeName != ""
	if c.NodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("node_name: not set and no host name: %w", err)
		}
		c.NodeName = h
	}
	if err := c.Kubernetes.complete(c, nodeSet); err != nil {
		return err
	}
	if len(c.Roots) == 0 && !c.Kubernetes.Enabled {
		return errors.New("roots: at least one cgroup root is needed (or kubernetes.enabled)")
	}
	for i, r := range c.Roots {
		clean, err := CgroupPath(r)
		if err != nil {
			return fmt.Errorf("roots[%d]: %w", i, err)
		}
		if clean == "/" {
			return fmt.Errorf("roots[%d]: the cgroup v2 root itself cannot be confined: name a subtree", i)
		}
		c.Roots[i] = clean
	}
	switch b := c.PolicyBundle; {
	case c.PolicyDir == "" && b == nil:
		return errors.New("policy: set policy_dir (a directory of Rego files) or policy_bundle (an OPA bundle service)")
	case c.PolicyDir != "" && b != nil:
		return errors.New("policy: set one of policy_dir and policy_bundle, not both")
	case b != nil && (b.URL == "" || b.Resource == ""):
		return errors.New("policy_bundle: url and resource are needed")
	case b != nil && b.Verify != nil && (b.Verify.ID == "" || b.Verify.KeyFile == ""):
		return errors.New("policy_bundle.verify: id and key_file are needed")
	}
	if b := c.PolicyBundle; b != nil {
		if err := b.check(); err != nil {
			return err
		}
	}
	r := &c.AuditRotate
	if r.MaxSizeMB < 0 || r.MaxFiles < 0 || r.MaxAgeDays < 0 {
		return errors.New("audit_rotate: sizes, counts and ages must not be negative")
	}
	if r.WorkloadPercent < 0 || r.WorkloadPercent > 100 {
		return errors.New("audit_rotate.workload_percent: want 1 to 100")
	}
	if r.WorkloadPercent == 0 {
		r.WorkloadPercent = 10
	}
	if r.MaxSizeMB == 0 {
		r.MaxSizeMB = 100
	}
	if r.MaxFiles == 0 {
		r.MaxFiles = 10
	}
	switch {
	case c.HardeningCheckInterval == 0:
		c.HardeningCheckInterval = DefaultHardeningCheckInterval
	case c.HardeningCheckInterval < time.Second:
		return fmt.Errorf("hardening_check_interval %v: at least 1s", c.HardeningCheckInterval)
	}
	if err := c.APILimits.complete(); err != nil {
		return err
	}
	if err := c.DNS.check(); err != nil {
		return err
	}
	if err := c.Approvals.complete(); err != nil {
		return err
	}
	if err := c.checkCallers(); err != nil {
		return err
	}
	if err := c.checkIdentity(); err != nil {
		return err
	}
	return c.Approvals.complete()
}

func (l *APILimits) complete() error {
	for _, f := range []struct {
		name string
		v    *int
		def  int
	}{
		{"connections", &l.Connections, DefaultAPIConnections},
		{"connections_per_uid", &l.ConnectionsPerUID, DefaultAPIConnectionsPerUID},
		{"admin_connections", &l.AdminConnections, DefaultAdminConnections},
		{"metrics_connections", &l.MetricsConnections, DefaultMetricsConnections},
	} {
		switch {
		case *f.v < 0:
			return fmt.Errorf("api_limits.%s: must not be negative", f.name)
		case *f.v == 0:
			*f.v = f.def
		}
	}
	if l.ConnectionsPerUID > l.Connections {
		return fmt.Errorf("api_limits: connections_per_uid (%d) is more than connections (%d)", l.ConnectionsPerUID, l.Connections)
	}
	return nil
}

// CgroupPath checks and cleans a cgroup path relative to the v2 mount:
// absolute, no "..", as /proc/PID/cgroup names it.
func CgroupPath(p string) (string, error) {
	if !strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("cgroup path %q: must start with /", p)
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return "", fmt.Errorf("cgroup path %q: must not contain ..", p)
		}
	}
	return path.Clean(p), nil
}

// Under reports whether cgroup p is root or lies below it.
func Under(p, root string) bool {
	return p == root || strings.HasPrefix(p, root+"/")
}

// RootOf returns the configured root p lies under, if any.
func (c *Config) RootOf(p string) (string, bool) {
	for _, r := range c.Roots {
		if Under(p, r) {
			return r, true
		}
	}
	return "", false
}

// IsAdmin reports whether a caller with these ids may start and end tasks.
func (c *Config) IsAdmin(uid uint32, gids []uint32) bool {
	return uid == 0 || c.Admins.has(uid, gids)
}

// IsReader reports whether a caller with these ids may list tasks and read
// the status: admins and readers.
func (c *Config) IsReader(uid uint32, gids []uint32) bool {
	return c.IsAdmin(uid, gids) || c.Readers.has(uid, gids)
}

func (a Admins) has(uid uint32, gids []uint32) bool {
	for _, u := range a.UIDs {
		if u == uid {
			return true
		}
	}
	for _, g := range a.GIDs {
		for _, have := range gids {
			if g == have {
				return true
			}
		}
	}
	return false
}
