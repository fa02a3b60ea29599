package config

import (
	"strings"
	"testing"
)

func TestKubernetesDefaults(t *testing.T) {
	t.Setenv("NODE_NAME", "worker-1")
	c, err := Parse([]byte("policy_dir: /p\nkubernetes:\n  enabled: true\n"), "t")
	if err != nil {
		t.Fatal(err)
	}
	k := c.Kubernetes
	if k.NodeName != "worker-1" || c.NodeName != "worker-1" || k.AgentSelector != DefaultAgentSelector ||
		k.TrustDomain != "worker-1" || k.CgroupDriver != "cgroupfs" || k.Runtime != "containerd" || k.CgroupRoot != "/" || k.NRISocket != "" {
		t.Fatalf("defaults: %+v, node_name %q", k, c.NodeName)
	}
	// An explicit node_name stays the node's; the kubernetes one wins
	// for the watch.
	c, err = Parse([]byte("policy_dir: /p\nnode_name: n1\nkubernetes:\n  enabled: true\n  node_name: w2\n  trust_domain: cluster.example\n  cgroup_driver: systemd\n  runtime: cri-o\n  nri_socket: /var/run/nri/nri.sock\n"), "t")
	if err != nil {
		t.Fatal(err)
	}
	if c.NodeName != "n1" || c.Kubernetes.NodeName != "w2" || c.Kubernetes.TrustDomain != "cluster.example" {
		t.Fatalf("%+v", c.Kubernetes)
	}
}

func TestKubernetesRefused(t *testing.T) {
	for body, want := range map[string]string{
		"kubernetes:\n  nri_socket: /x\n":                            "kubernetes.enabled is false",
		"kubernetes:\n  enabled: true\n  agent_selector: 'a in ('\n": "kubernetes.agent_selector",
		"kubernetes:\n  enabled: true\n  cgroup_driver: cgroupv3\n":  "kubernetes.cgroup_driver",
		"kubernetes:\n  enabled: true\n  runtime: docker\n":          "kubernetes.runtime",
		"kubernetes:\n  enabled: true\n  trust_domain: 'Not A TD'\n": "kubernetes.trust_domain",
		"kubernetes:\n  enabled: true\n  kubeconfig: kube.yaml\n":    "kubernetes.kubeconfig",
		"kubernetes:\n  enabled: true\n  nri_socket: nri.sock\n":     "kubernetes.nri_socket",
		"kubernetes:\n  enabled: true\n  cgroup_root: rel\n":         "kubernetes.cgroup_root",
		"kubernetes:\n  enabled: true\n  selector: x=y\n":            "selector",
		"kubernetes:\n  enabled: false\n":                            "roots",
	} {
		_, err := Parse([]byte("policy_dir: /p\nnode_name: n1\n"+body), "t")
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error naming %s", body, err, want)
		}
	}
}
