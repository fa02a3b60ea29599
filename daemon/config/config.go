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
	Roots     []string `yaml:"roots"`
	Socket    string   `yaml:"socket"`
	StateDir  string   `yaml:"state_dir"`
	PinDir    string   `yaml:"pin_dir"`
	PolicyDir string   `yaml:"policy_dir"`
	AuditFile string   `yaml:"audit_file"` // "" or "-": stdout
	Admins    Admins   `yaml:"admins"`
	NodeName  string   `yaml:"node_name"`
	// Identities maps a cgroup path (the workload's, or one of its
	// ancestors) to the SPIFFE ID of the workloads below it; the longest
	// match wins. Unmapped workloads get spiffe://<node_name>/workload<path>.
	Identities map[string]string `yaml:"identities"`
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
	if c.PolicyDir == "" {
		return errors.New("policy_dir: a policy directory is needed")
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
