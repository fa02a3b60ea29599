//go:build kubernetes

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"

	"github.com/bridle-sh/bridle/daemon/api"
	"github.com/bridle-sh/bridle/deploy/kubernetes/mkimage/imagetar"
	"github.com/bridle-sh/bridle/tests/kubetest"
)

// The Kubernetes tests run bridled as the DaemonSet of the committed
// manifests (deploy/kubernetes/bridle.yaml) on a real single-node cluster
// (tests/kubetest), with only its policy replaced by the test's, and agent
// pods whose containers run the probe from a hostPath volume.

const (
	bridleImage = "bridle.sh/bridle:dev"
	agentImage  = "bridle.sh/e2e/agent:dev"
	bridleNS    = "bridle-system"
	agentNS     = "agents"
	agentSA     = "coder"
	// The host paths the DaemonSet mounts (chart defaults).
	hostSocket = "/run/bridle/bridle.sock"
	hostState  = "/var/lib/bridle"
	hostNRI    = "/var/run/nri"
	bpffsDir   = "/sys/fs/bpf"
	pinDir     = "/sys/fs/bpf/bridle/daemon" // the chart's pin_dir
)

// kube is one cluster with bridled deployed, shared by the subtests.
type kube struct {
	t         *testing.T
	c         *kubetest.Cluster
	client    kubernetes.Interface
	probe     string // the probe on the host, below an execPaths dir
	refused   string // a copy of it no rule names
	allowed   int    // a port on the node the coder's task may reach
	denied    int    // a port on the node nothing allows
	holding   int    // a port the task may reach whose listener holds every connection open
	manifests []byte
}

func TestKubernetes(t *testing.T) {
	k := deployBridle(t)
	t.Run("DaemonSetCapabilities", k.testCapabilities)
	t.Run("AgentPodFromFirstInstruction", k.testFirstInstruction)
	t.Run("NonAgentPodUntouched", k.testNonAgent)
	t.Run("AnnotationTaskEndsWithPod", k.testAnnotationTask)
	t.Run("TaskByPod", k.testTaskByPod)
	t.Run("RestartUninterrupted", k.testRestart)
	t.Run("WindowWithAndWithoutHook", k.testWindow)
}

// e2ePolicy: the coder service account in the agents namespace may reach
// the allowed and holding ports on the node for a task; every agent may run
// the probe (its containers' entrypoint), and nothing else, also without a
// task.
func e2ePolicy(probe string, allowed, holding int) string {
	return fmt.Sprintf(`package bridle

probe := [{"path": %[1]q}]

baseline := {"egress": [], "exec": probe}

coder := "spiffe://kubetest/ns/agents/sa/coder"

envelope := {
	"egress": [{"protocol": "tcp", "cidr": %[2]q, "ports": [%[3]d, %[4]d]}],
	"exec": probe,
	"ttl": "1h",
} if input.identity == coder

deny contains sprintf("no envelope for %%s", [input.identity]) if input.identity != coder

deny contains "a task needs an intent" if input.task.intent == ""
`, probe, kubetest.NodeIP+"/32", allowed, holding)
}

func deployBridle(t *testing.T) *kube {
	for _, p := range []string{hostSocket, filepath.Join(hostNRI, "nri.sock"), pinDir} {
		if _, err := os.Stat(p); err == nil {
			t.Fatalf("%s exists: a Bridle or a container runtime is installed on this host; the Kubernetes tests need a host without them", p)
		}
	}
	c := kubetest.Start(t, kubetest.Options{})
	k := &kube{t: t, c: c, client: c.Client()}

	// The node's bpffs, where bridled pins what must outlive its pod.
	var st unix.Statfs_t
	if err := unix.Statfs(bpffsDir, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		if err := unix.Mount("bpf", bpffsDir, "bpf", 0, ""); err != nil {
			t.Fatalf("mount bpffs at %s: %v", bpffsDir, err)
		}
		t.Cleanup(func() { unix.Unmount(bpffsDir, 0) })
	}
	t.Cleanup(func() { os.RemoveAll(pinDir) })
	// HostToContainer mounts need shared (or slave) host mounts, as
	// systemd makes every mount of a node; a bare test host may have
	// private ones.
	for _, m := range []string{bpffsDir, "/sys/fs/cgroup"} {
		if err := unix.Mount("", m, "", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
			t.Fatalf("make %s a shared mount: %v", m, err)
		}
	}
	// The runtime's NRI socket where the DaemonSet looks for it.
	if err := os.MkdirAll(hostNRI, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(filepath.Dir(c.NRISocket), hostNRI, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind the NRI socket's directory to %s: %v", hostNRI, err)
	}
	t.Cleanup(func() { unix.Unmount(hostNRI, unix.MNT_DETACH) })
	t.Cleanup(func() {
		os.RemoveAll(filepath.Dir(hostSocket))
		os.RemoveAll(hostState)
	})

	// The probe, static, below /opt (an execPaths directory), and a copy
	// of it that no rule names.
	probe := kubetest.GoBuild(t, "github.com/bridle-sh/bridle/tests/probe")
	dir, err := os.MkdirTemp("/opt", "bridle-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	k.probe, k.refused = filepath.Join(dir, "probe"), filepath.Join(dir, "refused")
	for _, p := range []string{k.probe, k.refused} {
		if err := copyFile(probe, p); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, 0o755)
	}

	// Listeners on the node, for the agents to connect to.
	k.allowed = nodeListener(t)
	k.denied = nodeListener(t)
	k.holding = holdConnections(t, listenOnNode(t))

	// bridled's image, as make image builds it; the agents' image holds
	// nothing they run (exec rules name host files).
	bridled := kubetest.GoBuild(t, "github.com/bridle-sh/bridle/cmd/bridled")
	bridleCLI := kubetest.GoBuild(t, "github.com/bridle-sh/bridle/cmd/bridle")
	c.Image(t, bridleImage, []string{"/bridled"},
		imagetar.File{Src: bridled, Dst: "/bridled"}, imagetar.File{Src: bridleCLI, Dst: "/bridle"})
	c.Image(t, agentImage, []string{"/no-entrypoint"}, imagetar.File{Src: "/etc/hostname", Dst: "/etc/agent"})

	// The committed manifests, with the test's policy in place of the
	// example router.
	raw, err := os.ReadFile("../../deploy/kubernetes/bridle.yaml")
	if err != nil {
		t.Fatal(err)
	}
	k.manifests = replacePolicy(t, raw, e2ePolicy(k.probe, k.allowed, k.holding))
	file := filepath.Join(t.TempDir(), "bridle.yaml")
	if err := os.WriteFile(file, k.manifests, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Kubectl("apply", "-f", file); err != nil {
		t.Fatalf("kubectl apply -f deploy/kubernetes/bridle.yaml: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		// bridled lets go of the node when its pod goes.
		c.Kubectl("delete", "--wait=true", "--timeout=60s", "-f", file)
	})
	k.waitBridled(nil)
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		pods, err := k.client.CoreV1().Pods(bridleNS).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return
		}
		for _, p := range pods.Items {
			logs, _ := c.Logs(context.Background(), bridleNS, p.Name, "bridled")
			var kept []string
			for _, l := range strings.Split(logs, "\n") {
				if !strings.Contains(l, `"verdict":"allow"`) {
					kept = append(kept, l)
				}
			}
			t.Logf("bridled pod %s's log (allow records left out):\n%s", p.Name, strings.Join(kept, "\n"))
		}
	})

	// The agents' namespace and service account.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := k.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: agentNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := k.client.CoreV1().ServiceAccounts(agentNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: agentSA}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return k
}

// replacePolicy returns the manifests with the bridle.rego key of the
// bridled-policies ConfigMap set to policy, and the other example files
// (which use the example router's rules) emptied to a package each: the
// DaemonSet's volume names every key.
func replacePolicy(t *testing.T, manifests []byte, policy string) []byte {
	t.Helper()
	var out bytes.Buffer
	dec := yaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(manifests)))
	replaced := false
	for {
		doc, err := dec.Read()
		if err != nil {
			break
		}
		var cm corev1.ConfigMap
		if yaml.Unmarshal(doc, &cm) == nil && cm.Kind == "ConfigMap" && cm.Name == "bridled-policies" {
			if _, ok := cm.Data["bridle.rego"]; !ok {
				t.Fatal("bridled-policies has no bridle.rego")
			}
			for name := range cm.Data {
				cm.Data[name] = "package bridle.unused_" + strings.TrimSuffix(name, ".rego") + "\n"
			}
			cm.Data["bridle.rego"] = policy
			b, err := json.Marshal(cm)
			if err != nil {
				t.Fatal(err)
			}
			doc, replaced = b, true
		}
		out.WriteString("---\n")
		out.Write(doc)
		out.WriteString("\n")
	}
	if !replaced {
		t.Fatal("deploy/kubernetes/bridle.yaml has no bridled-policies ConfigMap")
	}
	return out.Bytes()
}

// nodeListener accepts and closes connections on the node's address.
func nodeListener(t *testing.T) int {
	l := listenOnNode(t)
	go acceptAndClose(l)
	return l.Addr().(*net.TCPAddr).Port
}

// listenOnNode listens on the node's address, which the pods reach.
func listenOnNode(t *testing.T) net.Listener {
	l, err := net.Listen("tcp4", kubetest.NodeIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// waitBridled waits until a bridled pod other than not is running and
// its socket answers on the host; it returns the pod.
func (k *kube) waitBridled(not *corev1.Pod) *corev1.Pod {
	k.t.Helper()
	deadline := time.Now().Add(4 * time.Minute)
	for {
		pods, err := k.client.CoreV1().Pods(bridleNS).List(context.Background(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=bridled"})
		if err == nil {
			for i := range pods.Items {
				p := &pods.Items[i]
				if not != nil && p.UID == not.UID {
					continue
				}
				if p.Status.Phase == corev1.PodRunning && podReady(p) {
					if out, err := k.bridle("status"); err == nil {
						k.t.Logf("bridled pod %s running; bridle status:\n%s", p.Name, out)
						return p
					}
				}
			}
		}
		if time.Now().After(deadline) {
			logs := ""
			if pods != nil && len(pods.Items) > 0 {
				logs, _ = k.c.Logs(context.Background(), bridleNS, pods.Items[0].Name, "bridled")
			}
			k.t.Fatalf("no bridled pod ready within 4m (%v); its log:\n%s", err, logs)
		}
		time.Sleep(time.Second)
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// bridle runs the CLI on the host against the DaemonSet's socket.
func (k *kube) bridle(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if args[0] == "task" {
		args = append([]string{"task", "--socket", hostSocket}, args[1:]...)
	} else {
		args = append(args, "--socket", hostSocket)
	}
	out, err := exec.CommandContext(ctx, bridleBin, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (k *kube) tasks() []api.Task {
	k.t.Helper()
	out, err := k.bridle("task", "list", "--json")
	if err != nil {
		k.t.Fatalf("bridle task list: %v: %s", err, out)
	}
	var l api.TaskList
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		k.t.Fatalf("task list --json: %v: %s", err, out)
	}
	return l.Tasks
}

// records are the decision records bridled wrote to its stdout (the
// chart's audit_file "-"), from every bridled pod still known.
func (k *kube) records() []map[string]any {
	k.t.Helper()
	var recs []map[string]any
	pods, err := k.client.CoreV1().Pods(bridleNS).List(context.Background(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=bridled"})
	if err != nil {
		k.t.Fatal(err)
	}
	for _, p := range pods.Items {
		logs, _ := k.c.Logs(context.Background(), bridleNS, p.Name, "bridled")
		for _, line := range strings.Split(logs, "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["verdict"] != nil {
				recs = append(recs, rec)
			}
		}
	}
	return recs
}

func (k *kube) waitRecord(what string, match func(map[string]any) bool) map[string]any {
	k.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		recs := k.records()
		for _, r := range recs {
			if match(r) {
				return r
			}
		}
		if time.Now().After(deadline) {
			b, _ := json.MarshalIndent(recs, "", " ")
			k.t.Fatalf("no record of %s within 30s; records:\n%s", what, b)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

var (
	nobody = int64(65534)
	yes    = true
)

// agentPod is a pod of the agents namespace whose containers run the
// probe from a hostPath volume, each with the given arguments.
func (k *kube) agentPod(name string, agent bool, annotations map[string]string, containers map[string][]string) *corev1.Pod {
	labels := map[string]string{"app": name}
	if agent {
		labels["bridle.sh/agent"] = "true"
	}
	dir := filepath.Dir(k.probe)
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: agentNS, Labels: labels, Annotations: annotations},
		Spec: corev1.PodSpec{
			ServiceAccountName: agentSA,
			RestartPolicy:      corev1.RestartPolicyNever,
			NodeName:           k.c.NodeName,
			Volumes: []corev1.Volume{{Name: "tools", VolumeSource: corev1.VolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: dir}}}},
			TerminationGracePeriodSeconds: new(int64),
			// Agents run as a user of their own, not root: the programs
			// their tasks may run are root's, which they cannot rewrite.
			SecurityContext: &corev1.PodSecurityContext{RunAsUser: &nobody, RunAsGroup: &nobody, RunAsNonRoot: &yes},
		},
	}
	names := make([]string, 0, len(containers))
	for n := range containers {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{
			Name: n, Image: agentImage, ImagePullPolicy: corev1.PullNever,
			Command:      append([]string{k.probe}, containers[n]...),
			VolumeMounts: []corev1.VolumeMount{{Name: "tools", MountPath: dir, ReadOnly: true}},
		})
	}
	return p
}

func (k *kube) create(p *corev1.Pod) {
	k.t.Helper()
	if _, err := k.client.CoreV1().Pods(p.Namespace).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		k.t.Fatalf("create pod %s: %v", p.Name, err)
	}
	k.t.Cleanup(func() { k.deletePod(p.Name) })
}

func (k *kube) deletePod(name string) {
	zero := int64(0)
	err := k.client.CoreV1().Pods(agentNS).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil && !apierrors.IsNotFound(err) {
		k.t.Errorf("delete pod %s: %v", name, err)
	}
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if _, err := k.client.CoreV1().Pods(agentNS).Get(context.Background(), name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitDone waits for every container of the pod to have terminated and
// returns each one's log.
func (k *kube) waitDone(name string) map[string]string {
	k.t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		p, err := k.client.CoreV1().Pods(agentNS).Get(context.Background(), name, metav1.GetOptions{})
		if err == nil && len(p.Status.ContainerStatuses) == len(p.Spec.Containers) {
			done := true
			for _, cs := range p.Status.ContainerStatuses {
				done = done && cs.State.Terminated != nil
			}
			if done {
				logs := map[string]string{}
				for _, cs := range p.Status.ContainerStatuses {
					l, _ := k.c.Logs(context.Background(), agentNS, name, cs.Name)
					logs[cs.Name] = strings.Join(probeLines(l), "\n")
				}
				return logs
			}
		}
		if time.Now().After(deadline) {
			k.t.Fatalf("pod %s: containers not all done within 3m: %+v", name, p.Status)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// logLine waits until the container's log has at least n lines and
// returns them.
func (k *kube) logLines(pod, container string, n int) []string {
	k.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		l, err := k.c.Logs(context.Background(), agentNS, pod, container)
		lines := probeLines(l)
		if err == nil && len(lines) >= n {
			return lines
		}
		if time.Now().After(deadline) {
			k.t.Fatalf("pod %s container %s: fewer than %d log lines within 2m (%v): %q", pod, container, n, err, l)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// probeLines are the lines of a container's log that the probe printed to
// stdout (its contract); the log holds its stderr too ("probe: ...").
func probeLines(log string) []string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(log), "\n") {
		if l != "" && !strings.HasPrefix(l, "probe: ") {
			out = append(out, l)
		}
	}
	return out
}

// testCapabilities: the bridled pod runs with exactly the capabilities the
// manifests declare (bridled's own effective set, read on the host).
func (k *kube) testCapabilities(t *testing.T) {
	var declared []string
	dec := yaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(k.manifests)))
	for {
		doc, err := dec.Read()
		if err != nil {
			break
		}
		var ds appsv1.DaemonSet
		if yaml.Unmarshal(doc, &ds) == nil && ds.Kind == "DaemonSet" {
			sc := ds.Spec.Template.Spec.Containers[0].SecurityContext
			if sc == nil || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
				t.Fatal("the DaemonSet does not drop ALL capabilities")
			}
			if sc.Privileged != nil && *sc.Privileged {
				t.Fatal("the DaemonSet is privileged")
			}
			for _, c := range sc.Capabilities.Add {
				declared = append(declared, "CAP_"+string(c))
			}
		}
	}
	if len(declared) == 0 {
		t.Fatal("no capabilities declared in the DaemonSet")
	}
	pid := bridledPID(t)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	var eff uint64
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:\t"); ok {
			eff, _ = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	var have []string
	for bit := 0; bit < 64; bit++ {
		if eff&(1<<bit) != 0 {
			have = append(have, capName(bit))
		}
	}
	slices.Sort(have)
	slices.Sort(declared)
	if !slices.Equal(have, declared) {
		t.Fatalf("bridled (pid %d) runs with %v, the DaemonSet declares %v", pid, have, declared)
	}
	t.Logf("bridled runs with exactly %v", have)
}

// bridledPID finds bridled's process on the host.
func bridledPID(t *testing.T) int {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if strings.TrimSpace(string(comm)) == "bridled" && exe == "/bridled" {
			return pid
		}
	}
	t.Fatal("no bridled process on the host")
	return 0
}

var capNames = map[int]string{
	unix.CAP_CHOWN: "CAP_CHOWN", unix.CAP_DAC_OVERRIDE: "CAP_DAC_OVERRIDE", unix.CAP_DAC_READ_SEARCH: "CAP_DAC_READ_SEARCH",
	unix.CAP_FOWNER: "CAP_FOWNER", unix.CAP_FSETID: "CAP_FSETID", unix.CAP_KILL: "CAP_KILL", unix.CAP_SETGID: "CAP_SETGID",
	unix.CAP_SETUID: "CAP_SETUID", unix.CAP_SETPCAP: "CAP_SETPCAP", unix.CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE",
	unix.CAP_NET_ADMIN: "CAP_NET_ADMIN", unix.CAP_NET_RAW: "CAP_NET_RAW", unix.CAP_SYS_CHROOT: "CAP_SYS_CHROOT",
	unix.CAP_SYS_PTRACE: "CAP_SYS_PTRACE", unix.CAP_SYS_ADMIN: "CAP_SYS_ADMIN", unix.CAP_SYS_RESOURCE: "CAP_SYS_RESOURCE",
	unix.CAP_MKNOD: "CAP_MKNOD", unix.CAP_AUDIT_WRITE: "CAP_AUDIT_WRITE", unix.CAP_SETFCAP: "CAP_SETFCAP",
	unix.CAP_BPF: "CAP_BPF", unix.CAP_PERFMON: "CAP_PERFMON", unix.CAP_SYS_MODULE: "CAP_SYS_MODULE",
}

func capName(bit int) string {
	if n, ok := capNames[bit]; ok {
		return n
	}
	return fmt.Sprintf("cap%d", bit)
}

// testFirstInstruction: an agent pod's containers are refused, as their
// very first action, a connect and an exec their task does not allow, and
// allowed the connect it does.
func (k *kube) testFirstInstruction(t *testing.T) {
	node := kubetest.NodeIP + ":"
	p := k.agentPod("first", true, map[string]string{"bridle.sh/intent": "fix the build"}, map[string][]string{
		"allowed": {"tcp", node + strconv.Itoa(k.allowed)},
		"denied":  {"tcp", node + strconv.Itoa(k.denied)},
		"exec":    {"exec", k.refused, "tcp", node + strconv.Itoa(k.allowed)},
	})
	k.create(p)
	logs := k.waitDone(p.Name)
	if logs["allowed"] != "ok" {
		t.Errorf("the task's own connect, as the container's first action: %q, want ok", logs["allowed"])
	}
	if !strings.HasPrefix(logs["denied"], "EPERM") {
		t.Errorf("a connect the task does not allow, as the container's first action: %q, want EPERM", logs["denied"])
	}
	// LSM mode refuses the exec (EPERM); kill mode kills the new image
	// before its first instruction, so it never prints "ok".
	if strings.Contains(logs["exec"], "ok") {
		t.Errorf("an exec the task does not allow ran: %q", logs["exec"])
	}
	k.waitRecord("the refused connect, with the pod's identity", func(r map[string]any) bool {
		return r["verdict"] == "deny" && r["identity"] == "spiffe://kubetest/ns/agents/sa/coder" &&
			r["action"] == "connect" && r["port"] == float64(k.denied)
	})
}

// testNonAgent: a pod without the agent label on the same node is never
// touched: the same connects and exec all go through.
func (k *kube) testNonAgent(t *testing.T) {
	node := kubetest.NodeIP + ":"
	p := k.agentPod("bystander", false, map[string]string{"bridle.sh/intent": "nothing"}, map[string][]string{
		"denied": {"tcp", node + strconv.Itoa(k.denied)},
		"exec":   {"exec", k.refused, "tcp", node + strconv.Itoa(k.denied)},
	})
	k.create(p)
	logs := k.waitDone(p.Name)
	for c, l := range logs {
		if l != "ok" {
			t.Errorf("container %s of a pod that is not an agent pod: %q, want ok", c, l)
		}
	}
	for _, task := range k.tasks() {
		if strings.Contains(task.Pod, "/bystander/") {
			t.Errorf("a task for a pod that is not an agent pod: %+v", task)
		}
	}
}

// testAnnotationTask: the pod's annotations start its task; the task is
// listed with the pod and its identity, and ends when the pod is deleted.
func (k *kube) testAnnotationTask(t *testing.T) {
	node := kubetest.NodeIP + ":" + strconv.Itoa(k.allowed)
	p := k.agentPod("batch", true, map[string]string{"bridle.sh/intent": "nightly batch", "bridle.sh/ttl": "30m"}, map[string][]string{
		"main": {"tcp-every", "0.2", node},
	})
	k.create(p)
	lines := k.logLines(p.Name, "main", 3)
	if !strings.HasSuffix(lines[0], " ok") {
		t.Errorf("the batch pod's first connect under its annotation task: %q, want ok", lines[0])
	}
	var task api.Task
	for _, tk := range k.tasks() {
		if strings.HasPrefix(tk.Pod, agentNS+"/batch/") {
			task = tk
		}
	}
	if task.ID == "" {
		t.Fatalf("no task for the batch pod in bridle task list: %+v", k.tasks())
	}
	if task.Intent != "nightly batch" || task.Identity != "spiffe://kubetest/ns/agents/sa/coder" {
		t.Errorf("the batch pod's task: intent %q identity %q", task.Intent, task.Identity)
	}
	if ttl := time.Until(task.Expires); ttl <= 0 || ttl > 30*time.Minute {
		t.Errorf("the batch pod's task expires in %v, want within the annotation's 30m", ttl)
	}
	k.deletePod(p.Name)
	deadline := time.Now().Add(30 * time.Second)
	for {
		found := false
		for _, tk := range k.tasks() {
			found = found || tk.ID == task.ID
		}
		if !found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s still in force 30s after its pod was deleted", task.ID)
		}
		time.Sleep(300 * time.Millisecond)
	}
	k.waitRecord("the task's end with the pod", func(r map[string]any) bool {
		return r["task"] == task.ID && r["action"] == "task_end"
	})
}

// testTaskByPod: an agent pod without annotations runs under the baseline
// until `bridle task start --pod` gives it a task; `bridle task end` takes
// it back, and aborts the connection the pod opened under it.
func (k *kube) testTaskByPod(t *testing.T) {
	node := kubetest.NodeIP + ":" + strconv.Itoa(k.allowed)
	holding := kubetest.NodeIP + ":" + strconv.Itoa(k.holding)
	p := k.agentPod("interactive", true, nil, map[string][]string{
		"main": {"tcp-every", "0.2", node},
		"hold": {"retry", "0.2", "hold-tcp", holding, "600"},
	})
	k.create(p)
	lines := k.logLines(p.Name, "main", 2)
	if !strings.Contains(lines[0], "EPERM") {
		t.Fatalf("an agent pod without a task: %q, want EPERM", lines[0])
	}
	out, err := k.bridle("task", "start", "--pod", agentNS+"/interactive", "--intent", "pair on a fix")
	if err != nil {
		t.Fatalf("bridle task start --pod: %v: %s", err, out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		lines := k.logLines(p.Name, "main", 1)
		if strings.HasSuffix(lines[len(lines)-1], " ok") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pod's connects still refused 30s after its task started: %q", lines[len(lines)-5:])
		}
		time.Sleep(300 * time.Millisecond)
	}
	if out, err := k.bridle("task", "start", "--pod", agentNS+"/nonexistent", "--intent", "x"); err == nil {
		t.Errorf("a task for a pod that does not exist was started: %s", out)
	}

	if l := k.logLines(p.Name, "hold", 1); l[0] != "ok connected" {
		t.Fatalf("the pod's connection under its task: %q, want ok connected", l[0])
	}
	var task api.Task
	for _, tk := range k.tasks() {
		if strings.HasPrefix(tk.Pod, agentNS+"/interactive/") {
			task = tk
		}
	}
	if out, err := k.bridle("task", "end", task.ID); err != nil {
		t.Fatalf("bridle task end %q: %v: %s", task.ID, err, out)
	}
	// The DaemonSet's bridled has no CAP_DAC_READ_SEARCH: it finds the
	// pod's cgroup without opening it by id.
	if l := k.logLines(p.Name, "hold", 2); l[1] != "closed ECONNABORTED" {
		t.Errorf("the connection opened under the task, after its end: %q, want closed ECONNABORTED", l[1])
	}
	seen := len(k.logLines(p.Name, "main", 1))
	if l := k.logLines(p.Name, "main", seen+2); !strings.HasSuffix(l[len(l)-1], "EPERM connect") {
		t.Errorf("a new connect after the task's end: %q, want EPERM", l[len(l)-1])
	}
}

// testRestart: bridled's pod is deleted and the DaemonSet starts another;
// an agent under a task and one without keep their verdicts throughout.
func (k *kube) testRestart(t *testing.T) {
	node := kubetest.NodeIP + ":"
	with := k.agentPod("steady", true, map[string]string{"bridle.sh/intent": "long job"}, map[string][]string{
		"main": {"tcp-every", "0.05", node + strconv.Itoa(k.allowed)}})
	without := k.agentPod("idle", true, nil, map[string][]string{
		"main": {"tcp-every", "0.05", node + strconv.Itoa(k.allowed)}})
	k.create(with)
	k.create(without)
	k.logLines(with.Name, "main", 5)
	k.logLines(without.Name, "main", 5)

	old := k.waitBridled(nil)
	zero := int64(0)
	if err := k.client.CoreV1().Pods(bridleNS).Delete(context.Background(), old.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	k.waitBridled(old)
	time.Sleep(2 * time.Second)

	check := func(pod, want string) {
		lines := k.logLines(pod, "main", 1)
		bad := 0
		for _, l := range lines {
			if !strings.HasSuffix(l, want) {
				bad++
				if bad < 5 {
					t.Errorf("pod %s: %q during bridled's restart, want %q", pod, l, want)
				}
			}
		}
		t.Logf("pod %s: %d attempts across the restart, %d not %q", pod, len(lines), bad, want)
	}
	check(with.Name, " ok")
	check(without.Name, " EPERM connect")
}

// allowedBeforeBound counts the connects an agent pod without a task made
// before its first refusal: those that ran before its pod was bound.
func (k *kube) allowedBeforeBound(name string) (allowed, total int) {
	k.t.Helper()
	p := k.agentPod(name, true, nil, map[string][]string{
		"main": {"tcp-every", "0.001", kubetest.NodeIP + ":" + strconv.Itoa(k.denied)}})
	k.create(p)
	lines := k.logLines(name, "main", 50)
	for _, l := range lines {
		if strings.HasSuffix(l, " EPERM connect") {
			break
		}
		allowed++
	}
	k.deletePod(name)
	return allowed, len(lines)
}

// testWindow: with the runtime hook, an agent pod's container is bound
// before its first instruction; without it (kubernetes.nri_socket ""),
// bridled says DEGRADED and binds the pod as soon as it sees it, which
// may be after the container ran: the connects it made before are
// counted (each attempt ~1 ms apart, plus the connect itself).
func (k *kube) testWindow(t *testing.T) {
	with, n := k.allowedBeforeBound("window-hook")
	t.Logf("with the runtime hook: %d of the first %d connects allowed before the pod was bound", with, n)
	if with != 0 {
		t.Errorf("with the runtime hook, %d connects went through before the pod was bound", with)
	}

	ctx := context.Background()
	cms := k.client.CoreV1().ConfigMaps(bridleNS)
	cm, err := cms.Get(ctx, "bridled-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	conf := cm.Data["bridled.yaml"]
	if !strings.Contains(conf, "nri_socket: /var/run/nri/nri.sock") {
		t.Fatalf("bridled.yaml has no nri_socket line:\n%s", conf)
	}
	cm.Data["bridled.yaml"] = strings.Replace(conf, "nri_socket: /var/run/nri/nri.sock", `nri_socket: ""`, 1)
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	old := k.waitBridled(nil)
	zero := int64(0)
	if err := k.client.CoreV1().Pods(bridleNS).Delete(ctx, old.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	k.waitBridled(old)
	status, _ := k.bridle("status")
	if !strings.Contains(status, "agent containers may run briefly before binding") {
		t.Errorf("bridle status without the runtime hook does not say so:\n%s", status)
	}
	without, n := k.allowedBeforeBound("window-nohook")
	t.Logf("without the runtime hook: %d of the first %d connects allowed before the pod was bound", without, n)
}
