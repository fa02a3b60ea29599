// Package kubetest runs a real single-node Kubernetes cluster for Bridle's
// tests: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
// containerd (NRI enabled) with runc, the CNI bridge, kube-proxy (nftables)
// and a kubelet, all children of the test, built by tests/kubernetes
// (make kubernetes).
//
// Everything the cluster keeps lives in one short directory under /tmp
// (unix socket paths are limited to 108 bytes): certificates generated at
// start, etcd's data, containerd's root and state, the kubelet's root, the
// daemons' logs (printed when the test failed). The node is the bridge
// NodeBridge with the address NodeIP; pods get addresses on it, and the API
// server and the kubelet listen on it, so no traffic leaves the machine.
// Stop, run by t.Cleanup, kills the daemons and the containers and removes
// what they made: mounts, network namespaces, the bridge, kube-proxy's
// nftables tables, the pods' cgroups.
//
// Only one cluster runs on a machine at a time: the bridge, its addresses
// and the ports on them are fixed. Start waits on a lock for another test
// binary's cluster to stop.
package kubetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/deploy/kubernetes/mkimage/imagetar"
)

// Version is the Kubernetes release tests/kubernetes/go.mod pins; the cache
// directory is named after it.
const Version = "v1.37.2"

// The node's network.
const (
	NodeBridge  = "brkubetest0"
	PodCIDR     = "10.213.0.0/24"
	NodeIP      = "10.213.0.1"
	ServiceCIDR = "10.213.1.0/24"
	// KubernetesServiceIP is the ClusterIP of the kubernetes Service, which
	// kube-proxy sends to the API server (the in-cluster client's address).
	KubernetesServiceIP = "10.213.1.1"
	APIServerPort       = 6443
	KubeletPort         = 10250
)

// PauseImage is the pods' sandbox image, built from tests/kubernetes/pause
// and imported at start.
const PauseImage = "bridle.sh/kubetest/pause:dev"

// cniNetwork names the CNI network (its config, its IPAM state).
const cniNetwork = "bridle-kubetest"

// nftTable is the nftables table kube-proxy makes in each family.
const nftTable = "kube-proxy"

const (
	readyTimeout = 3 * time.Minute
	stopTimeout  = 10 * time.Second
)

// bins lists what tests/kubernetes/build.sh builds and a cluster runs.
var bins = []string{
	"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy",
	"kubectl", "containerd", "containerd-shim-runc-v2", "ctr", "runc", "bridge", "host-local",
	"loopback", "pause",
}

// BinDir is where tests/kubernetes/build.sh puts the cluster's binaries:
// $BRIDLE_KUBERNETES_DIR, or /root/.cache/bridle/kubernetes/<Version>.
func BinDir() string {
	if d := os.Getenv("BRIDLE_KUBERNETES_DIR"); d != "" {
		return d
	}
	return filepath.Join("/root/.cache/bridle/kubernetes", Version)
}

// Bins returns the directory holding the cluster's binaries. Without them
// the test is skipped with the reason, except under CI (CI=true), where the
// build is part of the run and a missing binary is a failure. The cluster
// needs root too, and nft (Debian's nftables) for kube-proxy.
func Bins(t testing.TB) string {
	t.Helper()
	skip := func(msg string) {
		t.Helper()
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	if os.Geteuid() != 0 {
		skip("kubetest: a cluster needs root (cgroups, mounts, network namespaces)")
	}
	dir := BinDir()
	var missing []string
	for _, name := range bins {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode()&0o111 == 0 || !fi.Mode().IsRegular() {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		skip(fmt.Sprintf("kubetest: Kubernetes %s: %s not in %s; build with `make kubernetes` (tests/kubernetes/build.sh)",
			Version, strings.Join(missing, ", "), dir))
	}
	if _, err := exec.LookPath("nft"); err != nil {
		skip("kubetest: kube-proxy's nftables mode needs nft: apt-get install nftables")
	}
	return dir
}

// Options shape the cluster Start runs.
type Options struct {
	NodeName string // default "kubetest"
}

// Cluster is a running single-node cluster.
type Cluster struct {
	Dir      string // everything the cluster keeps; removed by Stop
	BinDir   string // the binaries (kubectl, ctr, ...)
	NodeName string
	// Kubeconfig is the admin's (system:masters) kubeconfig file.
	Kubeconfig string
	// ContainerdSocket is containerd's gRPC socket (ctr --address), its
	// images and containers in the "k8s.io" namespace.
	ContainerdSocket string
	// NRISocket is where NRI plugins connect to containerd.
	NRISocket string
	// CAFile is the cluster's CA certificate.
	CAFile string

	t         testing.TB
	procs     []*process // in start order
	pki       *pki
	ports     map[string]int
	client    *kubernetes.Clientset
	restCfg   *rest.Config
	stopped   bool
	cniDir    string
	kubeletRC string
	lock      *os.File // the machine's cluster lock, held until Stop
}

// Start runs a cluster and returns once its node is Ready and the default
// namespace has its service account; t.Cleanup stops it.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	binDir := Bins(t)
	if o.NodeName == "" {
		o.NodeName = "kubetest"
	}
	lock, err := lockMachine(t)
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	dir, err := os.MkdirTemp("/tmp", "kt")
	if err != nil {
		lock.Close()
		t.Fatal(err)
	}
	c := &Cluster{
		Dir:              dir,
		BinDir:           binDir,
		NodeName:         o.NodeName,
		Kubeconfig:       filepath.Join(dir, "admin.kubeconfig"),
		ContainerdSocket: filepath.Join(dir, "containerd", "containerd.sock"),
		NRISocket:        filepath.Join(dir, "nri", "nri.sock"),
		t:                t,
		ports:            map[string]int{},
		cniDir:           filepath.Join(dir, "cni"),
		lock:             lock,
	}
	t.Cleanup(c.Stop)
	start := time.Now()
	if err := c.start(); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	t.Logf("kubetest: cluster up in %v (node %s at %s, state in %s)", time.Since(start).Round(time.Millisecond), c.NodeName, NodeIP, c.Dir)
	return c
}

func (c *Cluster) start() error {
	// A cluster killed with its test binary leaves its node's bridge,
	// kube-proxy's tables and the pods' cgroups: start from nothing.
	c.cleanHost()

	_, podNet, _ := net.ParseCIDR(PodCIDR)
	_, serviceNet, _ := net.ParseCIDR(ServiceCIDR)
	if err := setupBridge(NodeBridge, &net.IPNet{IP: net.ParseIP(NodeIP), Mask: podNet.Mask}, serviceNet); err != nil {
		return err
	}
	for _, name := range []string{"etcd-client", "etcd-peer", "controller-manager", "scheduler", "kubelet-healthz", "proxy-healthz", "proxy-metrics"} {
		p, err := freePort()
		if err != nil {
			return err
		}
		c.ports[name] = p
	}
	if err := c.writePKI(); err != nil {
		return err
	}
	if err := c.startEtcd(); err != nil {
		return err
	}
	if err := c.startAPIServer(); err != nil {
		return err
	}
	if err := c.startControllers(); err != nil {
		return err
	}
	if err := c.startContainerd(); err != nil {
		return err
	}
	if err := c.importPause(); err != nil {
		return err
	}
	if err := c.startKubelet(); err != nil {
		return err
	}
	if err := c.startProxy(); err != nil {
		return err
	}
	return c.waitReady()
}

// writePKI makes the CA and every certificate and kubeconfig.
func (c *Cluster) writePKI() error {
	p, err := newPKI(filepath.Join(c.Dir, "pki"))
	if err != nil {
		return err
	}
	c.pki, c.CAFile = p, p.CAFile
	if err := p.writeCAKey(); err != nil {
		return err
	}
	node := net.ParseIP(NodeIP)
	_, err = p.issue("apiserver", "kube-apiserver", nil,
		[]net.IP{node, net.ParseIP(KubernetesServiceIP), net.ParseIP("127.0.0.1")},
		[]string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"})
	if err != nil {
		return err
	}
	if _, err := p.issue("kubelet-serving", "system:node:"+c.NodeName, []string{"system:nodes"}, []net.IP{node}, []string{c.NodeName}); err != nil {
		return err
	}
	if _, err := p.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, nil, nil); err != nil {
		return err
	}
	if _, _, err := p.serviceAccountKey(); err != nil {
		return err
	}
	server := fmt.Sprintf("https://%s:%d", NodeIP, APIServerPort)
	for _, id := range []struct{ name, cn, org string }{
		{"admin", "kubetest-admin", "system:masters"},
		{"controller-manager", "system:kube-controller-manager", ""},
		{"scheduler", "system:kube-scheduler", ""},
		{"kubelet", "system:node:" + c.NodeName, "system:nodes"},
		{"proxy", "system:kube-proxy", ""},
	} {
		var orgs []string
		if id.org != "" {
			orgs = []string{id.org}
		}
		kp, err := p.issue(id.name, id.cn, orgs, nil, nil)
		if err != nil {
			return err
		}
		if err := p.kubeconfig(filepath.Join(c.Dir, id.name+".kubeconfig"), server, kp); err != nil {
			return err
		}
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return err
	}
	c.restCfg = cfg
	c.client, err = kubernetes.NewForConfig(cfg)
	return err
}

func (c *Cluster) pkiFile(name string) string { return filepath.Join(c.pki.dir, name) }

func (c *Cluster) run(name string, env []string, args ...string) error {
	p, err := startProcess(name, filepath.Join(c.Dir, "logs", name+".log"), env, filepath.Join(c.BinDir, name), args...)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	c.procs = append(c.procs, p)
	return nil
}

func (c *Cluster) startEtcd() error {
	if err := os.MkdirAll(filepath.Join(c.Dir, "logs"), 0o755); err != nil {
		return err
	}
	client := fmt.Sprintf("http://127.0.0.1:%d", c.ports["etcd-client"])
	peer := fmt.Sprintf("http://127.0.0.1:%d", c.ports["etcd-peer"])
	if err := c.run("etcd", nil,
		"--name=kubetest",
		"--data-dir="+filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls="+client, "--advertise-client-urls="+client,
		"--listen-peer-urls="+peer, "--initial-advertise-peer-urls="+peer,
		"--initial-cluster=kubetest="+peer,
		// A test's cluster lives minutes: no fsync, no waiting on the disk.
		"--unsafe-no-fsync",
		"--log-level=warn",
	); err != nil {
		return err
	}
	return c.waitFor("etcd to answer", func() error {
		resp, err := http.Get(client + "/health")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/health: %s", resp.Status)
		}
		return nil
	})
}

func (c *Cluster) startAPIServer() error {
	if err := c.run("kube-apiserver", nil,
		"--etcd-servers="+fmt.Sprintf("http://127.0.0.1:%d", c.ports["etcd-client"]),
		"--bind-address="+NodeIP,
		"--advertise-address="+NodeIP,
		fmt.Sprintf("--secure-port=%d", APIServerPort),
		"--cert-dir="+filepath.Join(c.Dir, "apiserver"),
		"--tls-cert-file="+c.pkiFile("apiserver.crt"),
		"--tls-private-key-file="+c.pkiFile("apiserver.key"),
		"--client-ca-file="+c.CAFile,
		"--kubelet-client-certificate="+c.pkiFile("apiserver-kubelet-client.crt"),
		"--kubelet-client-key="+c.pkiFile("apiserver-kubelet-client.key"),
		"--kubelet-preferred-address-types=InternalIP",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+c.pkiFile("sa.pub"),
		"--service-account-signing-key-file="+c.pkiFile("sa.key"),
		"--service-cluster-ip-range="+ServiceCIDR,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		// Bridle's DaemonSet runs privileged.
		"--allow-privileged=true",
		"--profiling=false",
		"--v=1",
	); err != nil {
		return err
	}
	return c.waitFor("kube-apiserver to be ready", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		body, err := c.client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return fmt.Errorf("%v: %s", err, body)
		}
		return nil
	})
}

func (c *Cluster) startControllers() error {
	kc := filepath.Join(c.Dir, "controller-manager.kubeconfig")
	if err := c.run("kube-controller-manager", nil,
		"--kubeconfig="+kc,
		"--authentication-kubeconfig="+kc,
		"--authorization-kubeconfig="+kc,
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", c.ports["controller-manager"]),
		"--leader-elect=false",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file="+c.pkiFile("sa.key"),
		"--root-ca-file="+c.CAFile,
		"--cluster-signing-cert-file="+c.CAFile,
		"--cluster-signing-key-file="+c.pkiFile("ca.key"),
		"--v=1",
	); err != nil {
		return err
	}
	sc := filepath.Join(c.Dir, "scheduler.kubeconfig")
	return c.run("kube-scheduler", nil,
		"--kubeconfig="+sc,
		"--authentication-kubeconfig="+sc,
		"--authorization-kubeconfig="+sc,
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", c.ports["scheduler"]),
		"--leader-elect=false",
		"--v=1",
	)
}

func (c *Cluster) startContainerd() error {
	cd := filepath.Join(c.Dir, "containerd")
	for _, d := range []string{cd, filepath.Dir(c.NRISocket), filepath.Join(c.cniDir, "net.d"), filepath.Join(c.cniDir, "bin")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// The CNI plugins from the build, by link: containerd takes a plugin
	// directory, not a list of files.
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if err := os.Symlink(filepath.Join(c.BinDir, p), filepath.Join(c.cniDir, "bin", p)); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(c.cniDir, "net.d", "10-kubetest.conflist"), []byte(c.cniConfig()), 0o644); err != nil {
		return err
	}
	conf := filepath.Join(cd, "config.toml")
	if err := os.WriteFile(conf, []byte(c.containerdConfig()), 0o644); err != nil {
		return err
	}
	// containerd finds its shim on PATH.
	env := []string{"PATH=" + c.BinDir + ":" + os.Getenv("PATH")}
	if err := c.run("containerd", env, "--config="+conf); err != nil {
		return err
	}
	return c.waitFor("containerd to answer", func() error {
		_, err := c.Ctr("version")
		return err
	})
}

// containerdConfig is containerd's configuration (version 3, containerd
// 2.x): every path under the cluster's directory, runc from the build with
// cgroupfs, the CNI network above, NRI on, and the pause image pinned as the
// sandbox image.
func (c *Cluster) containerdConfig() string {
	cd := filepath.Join(c.Dir, "containerd")
	return fmt.Sprintf(`version = 3
root = %[1]q
state = %[2]q

[grpc]
  address = %[3]q

[plugins.'io.containerd.internal.v1.opt']
  path = %[4]q

[plugins.'io.containerd.nri.v1.nri']
  disable = false
  socket_path = %[5]q
  plugin_path = %[6]q
  plugin_config_path = %[7]q
  # A plugin's answer may wait on the API server and the policy (bridled
  # confining a pod); the default 2s drops a plugin on a loaded machine.
  plugin_request_timeout = "15s"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %[8]q

[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = %[12]t
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [%[9]q]
    conf_dir = %[10]q
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = %[11]q
        SystemdCgroup = false

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
`, filepath.Join(cd, "root"), filepath.Join(cd, "state"), c.ContainerdSocket, filepath.Join(cd, "opt"),
		c.NRISocket, filepath.Join(c.Dir, "nri", "plugins"), filepath.Join(c.Dir, "nri", "conf.d"),
		PauseImage, filepath.Join(c.cniDir, "bin"), filepath.Join(c.cniDir, "net.d"), filepath.Join(c.BinDir, "runc"), !hasCapability(capSysResource))
}

// capSysResource is CAP_SYS_RESOURCE, without which no process lowers its
// oom_score_adj: the kubelet asks for -998 for every pod's sandbox.
const capSysResource = 24

// hasCapability says whether this process has a capability in its effective
// set. Some hosts run the tests with CAP_SYS_RESOURCE dropped from the
// bounding set; containerd's restrict_oom_score_adj then keeps each
// container's score at or above containerd's own, rather than failing.
func hasCapability(bit uint) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<bit) != 0
		}
	}
	return false
}

// cniConfig is the pods' network: the bridge (whose address, the node's, is
// the pods' gateway) and host-local addresses from PodCIDR, its state under
// the cluster's directory.
func (c *Cluster) cniConfig() string {
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": %q,
  "plugins": [
    {
      "type": "bridge",
      "bridge": %q,
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q, "gateway": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": %q
      }
    }
  ]
}
`, cniNetwork, NodeBridge, PodCIDR, NodeIP, filepath.Join(c.cniDir, "ipam"))
}

// importPause builds the sandbox image from the pause program and imports it.
func (c *Cluster) importPause() error {
	tar := filepath.Join(c.Dir, "pause.tar")
	err := imagetar.Write(tar, imagetar.Spec{
		Name:       PauseImage,
		Entrypoint: []string{"/pause"},
		Files:      []imagetar.File{{Src: filepath.Join(c.BinDir, "pause"), Dst: "/pause"}},
	})
	if err != nil {
		return fmt.Errorf("pause image: %w", err)
	}
	return c.ImportImage(tar)
}

func (c *Cluster) startKubelet() error {
	root := filepath.Join(c.Dir, "kubelet")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	c.kubeletRC = filepath.Join(c.Dir, "kubelet.yaml")
	if err := os.WriteFile(c.kubeletRC, []byte(c.kubeletConfig()), 0o644); err != nil {
		return err
	}
	return c.run("kubelet", nil,
		"--config="+c.kubeletRC,
		"--kubeconfig="+filepath.Join(c.Dir, "kubelet.kubeconfig"),
		"--root-dir="+root,
		"--cert-dir="+filepath.Join(root, "pki"),
		"--hostname-override="+c.NodeName,
		"--node-ip="+NodeIP,
		"--v=2",
	)
}

// kubeletConfig is the kubelet's configuration file. What this host needs,
// beyond paths under the cluster's directory:
//   - failCgroupV1: false. On a hybrid host (cgroup v1 controllers, an
//     empty cgroup v2 hierarchy beside them) the kubelet sees cgroup v1 and
//     refuses to start without it.
//   - cgroupDriver: cgroupfs, as containerd's runc (no systemd here to ask).
//   - failSwapOn: false, for hosts with swap.
//   - eviction thresholds low enough that a test machine's fairly full disk
//     does not taint the node.
//
// The kubelet serves with a certificate from the cluster's CA, trusts client
// certificates from it and lets every authenticated client in (the API
// server, for logs and exec).
func (c *Cluster) kubeletConfig() string {
	resolv := "/etc/resolv.conf"
	if _, err := os.Stat(resolv); err != nil {
		resolv = ""
	}
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %[1]s
port: %[2]d
healthzBindAddress: 127.0.0.1
healthzPort: %[3]d
readOnlyPort: 0
tlsCertFile: %[4]s
tlsPrivateKeyFile: %[5]s
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: %[6]s
authorization:
  mode: AlwaysAllow
containerRuntimeEndpoint: unix://%[7]s
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
podLogsDir: %[8]s
volumePluginDir: %[9]s
resolvConf: %[10]q
clusterDomain: cluster.local
rotateCertificates: false
serverTLSBootstrap: false
registerNode: true
maxPods: 30
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%%
  nodefs.inodesFree: 1%%
  imagefs.available: 1%%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
`, NodeIP, KubeletPort, c.ports["kubelet-healthz"], c.pkiFile("kubelet-serving.crt"), c.pkiFile("kubelet-serving.key"),
		c.CAFile, c.ContainerdSocket, filepath.Join(c.Dir, "pod-logs"), filepath.Join(c.Dir, "kubelet", "volume-plugins"), resolv)
}

func (c *Cluster) startProxy() error {
	conf := filepath.Join(c.Dir, "kube-proxy.yaml")
	// Conntrack sizes and timeouts zero: kube-proxy leaves the host's
	// sysctls as they are.
	err := os.WriteFile(conf, []byte(fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection:
  kubeconfig: %s
hostnameOverride: %s
clusterCIDR: %s
healthzBindAddress: 127.0.0.1:%d
metricsBindAddress: 127.0.0.1:%d
nodePortAddresses: ["%s/32"]
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
  udpTimeout: 0s
  udpStreamTimeout: 0s
`, filepath.Join(c.Dir, "proxy.kubeconfig"), c.NodeName, PodCIDR, c.ports["proxy-healthz"], c.ports["proxy-metrics"], NodeIP)), 0o644)
	if err != nil {
		return err
	}
	return c.run("kube-proxy", nil, "--config="+conf, "--v=1")
}

// waitReady waits for what a test's first pod needs: the node Ready, the
// default service account (pods are refused without it) and the CA's
// ConfigMap (their token volume needs it).
func (c *Cluster) waitReady() error {
	ctx := context.Background()
	if err := c.waitFor("node "+c.NodeName+" to be Ready", func() error {
		n, err := c.client.CoreV1().Nodes().Get(ctx, c.NodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				if cond.Status == corev1.ConditionTrue {
					return nil
				}
				return fmt.Errorf("Ready %s: %s", cond.Status, cond.Message)
			}
		}
		return errors.New("no Ready condition yet")
	}); err != nil {
		return err
	}
	if err := c.waitFor("the default service account", func() error {
		_, err := c.client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err
	}); err != nil {
		return err
	}
	if err := c.waitFor("the kube-root-ca.crt ConfigMap", func() error {
		_, err := c.client.CoreV1().ConfigMaps("default").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		return err
	}); err != nil {
		return err
	}
	// kube-proxy has programmed the kubernetes Service once its table
	// holds the ClusterIP.
	return c.waitFor("kube-proxy to program the kubernetes Service", func() error {
		out, err := exec.Command("nft", "list", "table", "ip", nftTable).CombinedOutput()
		if err != nil {
			return fmt.Errorf("nft: %v: %s", err, bytes.TrimSpace(out))
		}
		if !bytes.Contains(out, []byte(KubernetesServiceIP)) {
			return fmt.Errorf("no rule for %s yet", KubernetesServiceIP)
		}
		return nil
	})
}

// waitFor polls check until it succeeds, failing early when a daemon exits.
func (c *Cluster) waitFor(what string, check func() error) error {
	deadline := time.Now().Add(readyTimeout)
	var last error
	for time.Now().Before(deadline) {
		if last = check(); last == nil {
			return nil
		}
		for _, p := range c.procs {
			if done, err := p.exited(); done {
				return fmt.Errorf("waiting for %s: %s exited (%v); its log:\n%s", what, p.name, err, tail(p.log, 60))
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("waiting for %s: not after %v: %v", what, readyTimeout, last)
}

// Stop kills the cluster and removes what it made. It is safe to call more
// than once (t.Cleanup calls it too). When the test failed, the end of every
// daemon's log is printed; BRIDLE_KUBETEST_KEEP=1 keeps the directory (logs,
// certificates, etcd) after the mounts are gone.
func (c *Cluster) Stop() {
	if c.stopped {
		return
	}
	c.stopped = true
	t := c.t
	if t.Failed() {
		for _, p := range c.procs {
			t.Logf("kubetest: the end of %s's log (%s):\n%s", p.name, p.log, tail(p.log, 80))
		}
	}
	// The kubelet first, so it starts nothing new; the containers then,
	// before containerd, whose shims hold them.
	for i := len(c.procs) - 1; i >= 0; i-- {
		if p := c.procs[i]; p.name == "kubelet" || p.name == "kube-proxy" {
			p.stop(stopTimeout)
		}
	}
	// libcni caches each attachment's result under /var/lib/cni, named
	// after the network and the sandbox: the loopback ones after
	// containerd's "cni-loopback" network, not ours.
	var containers []string
	if out, err := c.Ctr("containers", "ls", "-q"); err == nil {
		containers = strings.Fields(out)
	}
	var errs []error
	if err := removeCgroups("kubepods"); err != nil {
		errs = append(errs, err)
	}
	killShims(c.ContainerdSocket)
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].stop(stopTimeout)
	}
	if err := c.cleanHost(); err != nil {
		errs = append(errs, err)
	}
	if err := unmountUnder(c.Dir); err != nil {
		errs = append(errs, err)
	}
	for _, id := range containers {
		if m, err := filepath.Glob("/var/lib/cni/results/*-" + id + "-*"); err == nil {
			for _, f := range m {
				os.Remove(f)
			}
		}
	}
	if os.Getenv("BRIDLE_KUBETEST_KEEP") == "1" {
		t.Logf("kubetest: kept %s", c.Dir)
	} else if err := os.RemoveAll(c.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		t.Errorf("kubetest: stop: %v", err)
	}
	c.lock.Close()
}

// lockPath is the lock a cluster holds from Start to Stop: the bridge, its
// addresses and ports are the machine's, so test binaries that each start a
// cluster (go test runs packages in parallel) take turns.
const lockPath = "/run/bridle-kubetest.lock"

// lockWait is how long Start waits for another test's cluster to stop.
const lockWait = 20 * time.Minute

func lockMachine(t testing.TB) (*os.File, error) {
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(lockWait)
	for waited := false; ; waited = true {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("lock %s (another test's cluster runs): %w", lockPath, err)
		}
		if !waited {
			t.Logf("kubetest: another test's cluster runs on this machine; waiting for it to stop (up to %v)", lockWait)
		}
		time.Sleep(time.Second)
	}
}

// cleanHost removes what a cluster makes outside its directory: the pods'
// cgroups, kube-proxy's tables, the bridge, the CNI's cached results.
func (c *Cluster) cleanHost() error {
	var errs []error
	if err := removeCgroups("kubepods"); err != nil {
		errs = append(errs, err)
	}
	// kube-proxy makes its table in each family and leaves it when killed.
	for _, family := range []string{"ip", "ip6"} {
		if err := removeNftTables(family, nftTable); err != nil {
			errs = append(errs, err)
		}
	}
	if err := removeBridge(NodeBridge); err != nil {
		errs = append(errs, err)
	}
	if err := removeKubeIptables(); err != nil {
		errs = append(errs, err)
	}
	// libcni caches each attachment's result here, named after the network.
	if m, err := filepath.Glob("/var/lib/cni/results/" + cniNetwork + "-*"); err == nil {
		for _, f := range m {
			os.Remove(f)
		}
	}
	return errors.Join(errs...)
}

// Ctr runs containerd's client against the node's containerd, in the
// namespace the kubelet's containers live in ("k8s.io"), and returns its
// output.
func (c *Cluster) Ctr(args ...string) (string, error) {
	args = append([]string{"--address", c.ContainerdSocket, "--namespace", "k8s.io"}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, "ctr"), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("ctr %s: %v: %s", strings.Join(args[4:], " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.String(), nil
}

// ImportImage imports an image tarball (docker-archive or OCI layout, as
// deploy/kubernetes/mkimage writes) into the node's containerd, where pods
// find it without pulling.
func (c *Cluster) ImportImage(tarball string) error {
	_, err := c.Ctr("images", "import", tarball)
	return err
}

// Kubectl runs kubectl as the cluster's admin and returns its standard
// output; an error carries its standard error.
func (c *Cluster) Kubectl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, "kubectl"), append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.String(), nil
}

// Client returns a clientset authenticated as the cluster's admin.
func (c *Cluster) Client() *kubernetes.Clientset { return c.client }

// RESTConfig returns the admin's client configuration.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.restCfg) }

// WaitPodRunning waits until the pod is Running (every container started),
// and fails early when it cannot get there: a container that terminated, or
// waits for a reason other than creation.
func (c *Cluster) WaitPodRunning(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	var last error
	for {
		pod, err := c.client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		switch {
		case err != nil && !apierrors.IsNotFound(err):
			last = err
		case err != nil:
			last = fmt.Errorf("pod %s/%s does not exist yet", namespace, name)
		case pod.Status.Phase == corev1.PodRunning:
			return pod, nil
		case pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded:
			return pod, fmt.Errorf("pod %s/%s is %s: %s", namespace, name, pod.Status.Phase, podProblem(pod))
		default:
			last = fmt.Errorf("pod %s/%s is %s: %s", namespace, name, pod.Status.Phase, podProblem(pod))
			for _, cs := range pod.Status.ContainerStatuses {
				if w := cs.State.Waiting; w != nil && w.Reason != "" && w.Reason != "ContainerCreating" && w.Reason != "PodInitializing" {
					if w.Reason == "ErrImagePull" || w.Reason == "ImagePullBackOff" || w.Reason == "CreateContainerConfigError" || w.Reason == "InvalidImageName" || w.Reason == "CreateContainerError" {
						return pod, last
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %v", ctx.Err(), last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// podProblem summarises why a pod is not running, from its conditions and
// containers' states.
func podProblem(pod *corev1.Pod) string {
	var parts []string
	for _, cs := range pod.Status.ContainerStatuses {
		switch {
		case cs.State.Waiting != nil:
			parts = append(parts, fmt.Sprintf("%s waiting (%s: %s)", cs.Name, cs.State.Waiting.Reason, cs.State.Waiting.Message))
		case cs.State.Terminated != nil:
			parts = append(parts, fmt.Sprintf("%s terminated (%s, exit %d: %s)", cs.Name, cs.State.Terminated.Reason, cs.State.Terminated.ExitCode, cs.State.Terminated.Message))
		}
	}
	for _, cond := range pod.Status.Conditions {
		if cond.Status != corev1.ConditionTrue && cond.Message != "" {
			parts = append(parts, fmt.Sprintf("%s: %s", cond.Type, cond.Message))
		}
	}
	if len(parts) == 0 {
		return "no reason given yet"
	}
	return strings.Join(parts, "; ")
}

// Logs returns a container's log, as `kubectl logs` shows it (through the
// API server and the kubelet). container may be empty for a pod with one.
func (c *Cluster) Logs(ctx context.Context, namespace, pod, container string) (string, error) {
	b, err := c.client.CoreV1().Pods(namespace).GetLogs(pod, &corev1.PodLogOptions{Container: container}).DoRaw(ctx)
	if err != nil {
		return "", fmt.Errorf("logs of %s/%s: %w", namespace, pod, err)
	}
	return string(b), nil
}

// LogFile is the path of a daemon's log: "kubelet", "containerd",
// "kube-apiserver", ...
func (c *Cluster) LogFile(daemon string) string {
	return filepath.Join(c.Dir, "logs", daemon+".log")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tail is the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
