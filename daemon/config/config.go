// Package config reads bridled's configuration file. Every field is
// documented in docs/DAEMON.md; unknown fields are refused, so a typo never
// silently leaves a root unconfined or an admin list empty.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
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
	NodeName       string `yaml:"node_name"`
	// Identities maps a cgroup path (the workload's, or one of its
	// ancestors) to the SPIFFE ID of the workloads below it; the longest
	// match wins. Unmapped workloads get spiffe://<node_name>/workload<path>.
	Identities map[string]string `yaml:"identities"`
}

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
}

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
	if c.NodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("node_name: not set and no host name: %w", err)
		}
		c.NodeName = h
	}
	if len(c.Roots) == 0 {
		return errors.New("roots: at least one cgroup root is needed")
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
	ids := make(map[string]string, len(c.Identities))
	for p, id := range c.Identities {
		clean, err := CgroupPath(p)
		if err != nil {
			return fmt.Errorf("identities: %w", err)
		}
		if _, err := spiffeid.FromString(id); err != nil {
			return fmt.Errorf("identities[%s]: %q: %w", p, id, err)
		}
		ids[clean] = id
	}
	c.Identities = ids
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

// Identity returns the SPIFFE ID of the workload in cgroup p.
func (c *Config) Identity(p string) string {
	best := ""
	for prefix := range c.Identities {
		if Under(p, prefix) && len(prefix) > len(best) {
			best = prefix
		}
	}
	if best != "" {
		return c.Identities[best]
	}
	return "spiffe://" + c.NodeName + "/workload" + p
}

// IsAdmin reports whether a caller with these ids may start and end tasks.
func (c *Config) IsAdmin(uid uint32, gids []uint32) bool {
	if uid == 0 {
		return true
	}
	for _, u := range c.Admins.UIDs {
		if u == uid {
			return true
		}
	}
	for _, g := range c.Admins.GIDs {
		for _, have := range gids {
			if g == have {
				return true
			}
		}
	}
	return false
}
