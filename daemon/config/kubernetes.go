package config

import (
	"errors"
	"fmt"
	"os"
	"path"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/apimachinery/pkg/labels"
)

// Kubernetes configures the pod watch (docs/DAEMON.md, pods): bridled as
// a DaemonSet confines the agent pods of its node.
type Kubernetes struct {
	// Enabled turns the pod watch on. Off by default.
	Enabled bool `yaml:"enabled"`
	// NodeName is the node whose pods are watched. Default: $NODE_NAME
	// (the downward API's spec.nodeName), else node_name, else the host
	// name.
	NodeName string `yaml:"node_name"`
	// Kubeconfig is a kubeconfig file; "" uses the in-cluster config (the
	// DaemonSet's service account).
	Kubeconfig string `yaml:"kubeconfig"`
	// AgentSelector is the label selector of agent pods. Pods it does not
	// match are never touched. Default bridle.sh/agent=true.
	AgentSelector string `yaml:"agent_selector"`
	// TrustDomain is the trust domain of pod identities,
	// spiffe://<trust_domain>/ns/<namespace>/sa/<service account>.
	// Default: the trust domain of the node's default static identity
	// (node_name).
	TrustDomain string `yaml:"trust_domain"`
	// CgroupDriver is how the kubelet names pod cgroups: cgroupfs
	// (default) or systemd.
	CgroupDriver string `yaml:"cgroup_driver"`
	// Runtime is how container cgroups are named: containerd (default)
	// or cri-o.
	Runtime string `yaml:"runtime"`
	// CgroupRoot is the kubelet's --cgroup-root: where its kubepods
	// cgroup lives, below the cgroup v2 mount. Default /.
	CgroupRoot string `yaml:"cgroup_root"`
	// NRISocket is the runtime's NRI socket, through which containers
	// are confined before their first instruction; "" connects no runtime
	// hook (the status then says DEGRADED).
	NRISocket string `yaml:"nri_socket"`
}

// Defaults of the kubernetes block.
const (
	DefaultAgentSelector = "bridle.sh/agent=true"
	CgroupDriverCgroupfs = "cgroupfs"
	CgroupDriverSystemd  = "systemd"
	RuntimeContainerd    = "containerd"
	RuntimeCRIO          = "cri-o"
)

// complete fills in the defaults and refuses what cannot work. nodeSet
// says whether the top-level node_name was in the file; without it the
// kubernetes node name becomes the node's name too.
func (k *Kubernetes) complete(c *Config, nodeSet bool) error {
	if !k.Enabled {
		if *k != (Kubernetes{}) {
			return errors.New("kubernetes: settings given but kubernetes.enabled is false")
		}
		return nil
	}
	if k.NodeName == "" {
		k.NodeName = os.Getenv("NODE_NAME")
	}
	if k.NodeName == "" {
		k.NodeName = c.NodeName
	}
	if k.NodeName == "" {
		return errors.New("kubernetes.node_name: not set, and neither $NODE_NAME nor node_name is")
	}
	if !nodeSet {
		c.NodeName = k.NodeName
	}
	if k.Kubeconfig != "" && !path.IsAbs(k.Kubeconfig) {
		return fmt.Errorf("kubernetes.kubeconfig %q: want an absolute path (or \"\" for the in-cluster config)", k.Kubeconfig)
	}
	if k.AgentSelector == "" {
		k.AgentSelector = DefaultAgentSelector
	}
	sel, err := labels.Parse(k.AgentSelector)
	if err != nil {
		return fmt.Errorf("kubernetes.agent_selector %q: %w", k.AgentSelector, err)
	}
	if sel.Empty() {
		return fmt.Errorf("kubernetes.agent_selector %q: selects every pod", k.AgentSelector)
	}
	if k.TrustDomain == "" {
		k.TrustDomain = c.NodeName
	}
	if _, err := spiffeid.TrustDomainFromString(k.TrustDomain); err != nil {
		return fmt.Errorf("kubernetes.trust_domain %q: %w", k.TrustDomain, err)
	}
	switch k.CgroupDriver {
	case "":
		k.CgroupDriver = CgroupDriverCgroupfs
	case CgroupDriverCgroupfs, CgroupDriverSystemd:
	default:
		return fmt.Errorf("kubernetes.cgroup_driver %q: want cgroupfs or systemd", k.CgroupDriver)
	}
	switch k.Runtime {
	case "":
		k.Runtime = RuntimeContainerd
	case RuntimeContainerd, RuntimeCRIO:
	default:
		return fmt.Errorf("kubernetes.runtime %q: want containerd or cri-o", k.Runtime)
	}
	if k.CgroupRoot == "" {
		k.CgroupRoot = "/"
	}
	if k.CgroupRoot, err = CgroupPath(k.CgroupRoot); err != nil {
		return fmt.Errorf("kubernetes.cgroup_root: %w", err)
	}
	if k.NRISocket != "" && !path.IsAbs(k.NRISocket) {
		return fmt.Errorf("kubernetes.nri_socket %q: want an absolute path", k.NRISocket)
	}
	return nil
}
