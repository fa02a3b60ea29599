package pods

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/identity"
	"github.com/bridle-sh/bridle/daemon/node"
	"github.com/bridle-sh/bridle/daemon/store"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy/engine"
)

// kernelEnv is a real node (programs loaded, policy from Rego) watching a
// fake API server's pods, whose cgroups are real directories named as the
// kubelet names them, below a test-only cgroup root.
type kernelEnv struct {
	t        *testing.T
	mount    string // cgroup v2 mount
	naming   Naming
	helper   string // a root-owned copy of the test binary
	node     *node.Node
	enf      *loader.Enforcer
	client   *fake.Clientset
	w        *Watcher
	pinDir   string
	addr     string // a listener on loopback
	eng      *engine.Engine
	stateDir string
	index    *Index
	stop     func() // stops the watcher
	mu       sync.Mutex
	records  []audit.Record
}

const kernelPolicy = `package bridle

binaries := [{"path": %q}]

baseline := {"egress": [], "exec": binaries}

envelope := {
	"egress": [{"protocol": "tcp", "cidr": "127.0.0.1/32"}],
	"exec": binaries,
	"ttl": "1h",
}

deny contains "a task needs an intent" if input.task.intent == ""

deny contains "only pods labelled tier=agent get tasks" if not input.workload.labels.tier == "agent"

deny contains "only the team namespace's agent-sa" if input.identity != "spiffe://cluster.test/ns/team/sa/agent-sa"
`

func newKernelEnv(t *testing.T) *kernelEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads BPF programs and creates cgroups (run as root, like the daemon tests)")
	}
	mount, err := loader.CgroupRoot()
	if err != nil {
		t.Fatal(err)
	}
	e := &kernelEnv{t: t, mount: mount}
	e.naming = Naming{Root: fmt.Sprintf("/bridle-pods-test-%d", os.Getpid())}
	t.Cleanup(e.removeCgroups)

	// The workload's binary: a copy of this test binary that the
	// workload's user (nobody) cannot write.
	dir, err := os.MkdirTemp("", "bridle-pods-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	e.helper = filepath.Join(dir, "connect")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	copyFile(t, self, e.helper)

	policyDir := filepath.Join(dir, "policy")
	if err := os.Mkdir(policyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(policyDir, "p.rego"), []byte(fmt.Sprintf(kernelPolicy, e.helper)), 0o644); err != nil {
		t.Fatal(err)
	}
	eng := engine.NewEngine()
	if err := eng.LoadDir(context.Background(), policyDir); err != nil {
		t.Fatal(err)
	}

	e.eng = eng
	e.stateDir = filepath.Join(dir, "state")
	e.pinDir = filepath.Join(loader.DefaultPinRoot, fmt.Sprintf("test-pods-%d", os.Getpid()))
	e.load()
	t.Cleanup(func() {
		for _, tk := range e.node.List() {
			_, _ = e.node.End(tk.ID, "test over")
		}
		e.node.Wait()
		e.enf.Close()
		if err := e.enf.Unpin(); err != nil {
			t.Error(err)
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	e.addr = ln.Addr().String()

	e.client = fake.NewClientset()
	e.watcher()
	return e
}

// load loads the programs (taking over the pins of an earlier load) and
// makes a node over them, with the task store, restoring what it holds:
// what bridled does at its start.
func (e *kernelEnv) load() {
	e.t.Helper()
	st, err := store.Open(e.stateDir)
	if err != nil {
		e.t.Fatal(err)
	}
	stored, err := st.Load()
	if err != nil {
		e.t.Fatal(err)
	}
	e.index = NewIndex()
	e.node, e.enf, err = node.Load(e.pinDir, node.Options{
		Engine: e.eng, Store: st, NodeName: thisNode, CgroupRoot: e.mount,
		Identities:     NewIdentities(identity.NewStatic(identity.StaticConfig{Node: thisNode}, e.mount), e.index),
		WorkloadLabels: e.index.Labels,
		Records:        e.keep,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.node.SetBaseline(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.node.Restore(stored)
}

func (e *kernelEnv) keep(r audit.Record) {
	e.mu.Lock()
	e.records = append(e.records, r)
	e.mu.Unlock()
}

func (e *kernelEnv) watcher() {
	sel, _ := labels.Parse("bridle.sh/agent=true")
	e.w = New(Options{
		Node: e.node, Client: e.client, NodeName: thisNode, Selector: sel,
		TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.test"),
		Naming:      e.naming, Index: e.index, Retry: 10 * time.Millisecond, Records: e.keep,
		StateFile: filepath.Join(e.stateDir, "pods.json"),
	})
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

func (e *kernelEnv) run(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = e.w.Run(ctx)
	}()
	e.stop = func() {
		cancel()
		<-done
	}
	e.t.Cleanup(e.stop)
	select {
	case <-e.w.Synced():
	case <-time.After(20 * time.Second):
		e.t.Fatal("pods not listed")
	}
}

// restart is a bridled restart: the watch and the node go away (the
// pins stay, enforcing), and a new node restores the stored tasks and
// watches again.
func (e *kernelEnv) restart() {
	e.t.Helper()
	e.stop()
	e.node.Wait()
	if err := e.enf.Close(); err != nil {
		e.t.Fatal(err)
	}
	e.load()
	e.watcher()
	e.run(context.Background())
}

// pod creates a pod's cgroup and its containers' (as the kubelet and the
// runtime would) and the pod object; it returns the pod's cgroup.
func (e *kernelEnv) pod(p *corev1.Pod, containers ...string) string {
	e.t.Helper()
	cg, err := e.naming.PodCgroup(string(p.UID), p.Status.QOSClass)
	if err != nil {
		e.t.Fatal(err)
	}
	for i, id := range containers {
		if err := mkdirAll(e.mount, cg+"/"+id); err != nil {
			e.t.Fatal(err)
		}
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{Name: fmt.Sprintf("c%d", i), ContainerID: "containerd://" + id})
	}
	if _, err := e.client.CoreV1().Pods(p.Namespace).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	return cg
}

// connect runs the test binary as nobody, born in cgroup cg, connecting
// to the loopback listener; it returns what it printed.
func (e *kernelEnv) connect(cg string) string {
	e.t.Helper()
	fd, err := syscall.Open(filepath.Join(e.mount, cg), syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	defer syscall.Close(fd)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, e.helper)
	c.Env = []string{connectEnv + "=" + e.addr}
	c.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd,
		Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	out, err := c.CombinedOutput()
	if err != nil {
		return fmt.Sprintf("%v: %s", err, out)
	}
	return strings.TrimSpace(string(out))
}

func (e *kernelEnv) record(want func(audit.Record) bool) (audit.Record, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	i := slices.IndexFunc(e.records, want)
	if i < 0 {
		return audit.Record{}, false
	}
	return e.records[i], true
}

// removeCgroups removes the test's cgroups, deepest first.
func (e *kernelEnv) removeCgroups() {
	root := filepath.Join(e.mount, e.naming.Root)
	var dirs []string
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = syscall.Rmdir(dirs[i])
	}
}

func kernelPod(name, uid string, opts ...podOpt) *corev1.Pod {
	p := newPod("team", name, uid, opts...)
	p.Labels["tier"] = "agent"
	return p
}

func TestKernelAgentPods(t *testing.T) {
	e := newKernelEnv(t)
	pid := os.Getpid()
	uid := func(s string) string { return fmt.Sprintf("%s-%d", s, pid) }
	tasked := e.pod(kernelPod("tasked", uid("a"), agent, annotate(AnnotationIntent, "fetch from the local service"), annotate(AnnotationTTL, "10m")), "aa01")
	bare := e.pod(kernelPod("bare", uid("b"), agent), "bb01")
	plain := e.pod(kernelPod("plain", uid("c"), annotate(AnnotationIntent, "not an agent")), "cc01")
	unlabelled := e.pod(newPod("team", "unlabelled", uid("d"), agent, annotate(AnnotationIntent, "no tier label")), "dd01")
	e.run(context.Background())
	eventually(t, "three agent pods bound", func() bool { return e.w.Status().Bound == 3 })

	// The annotation task: decided for the pod's identity and labels,
	// in force for its containers.
	tasks := e.node.List()
	if len(tasks) != 1 || tasks[0].Workload != tasked || tasks[0].Identity != "spiffe://cluster.test/ns/team/sa/agent-sa" ||
		tasks[0].Pod != "team/tasked/"+uid("a") || tasks[0].Expires.IsZero() {
		t.Fatalf("tasks = %+v, want the annotation task of pod tasked", tasks)
	}
	if got := e.connect(tasked + "/aa01"); got != "allowed" {
		t.Errorf("container of the tasked pod: %s, want allowed", got)
	}
	// Under the baseline: refused in the kernel.
	if got := e.connect(bare + "/bb01"); !strings.Contains(got, "operation not permitted") {
		t.Errorf("container of an agent pod without a task: %s, want refused", got)
	}
	// The policy saw the labels: no tier=agent, no task, baseline.
	if r, ok := e.record(func(r audit.Record) bool { return r.Workload == unlabelled && r.Action == "task_start" }); !ok || r.Verdict != "deny" || !strings.Contains(r.Reason, "tier=agent") {
		t.Errorf("start record of the unlabelled pod: %+v %v", r, ok)
	}
	if got := e.connect(unlabelled + "/dd01"); !strings.Contains(got, "operation not permitted") {
		t.Errorf("container of a pod whose task the policy refused: %s, want refused", got)
	}

	// A pod the selector does not match is not touched: no binding, no
	// program attached, nothing refused.
	plainID, err := loader.CgroupID(filepath.Join(e.mount, plain))
	if err != nil {
		t.Fatal(err)
	}
	bindings, err := e.enf.Bindings()
	if err != nil {
		t.Fatal(err)
	}
	if _, bound := bindings[plainID]; bound {
		t.Error("the non-agent pod's cgroup is bound")
	}
	missing, err := e.enf.AttachedAt(filepath.Join(e.mount, plain))
	if err != nil || len(missing) == 0 {
		t.Errorf("programs attached to the non-agent pod's cgroup (missing %v, %v)", missing, err)
	}
	if got := e.connect(plain + "/cc01"); got != "allowed" {
		t.Errorf("container of a non-agent pod: %s, want allowed (untouched)", got)
	}

	// A container-scoped task through the API's path.
	tg, err := e.w.Resolve(context.Background(), "team/bare/c0", e.mount)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.node.Start(context.Background(), node.Request{Workload: tg.Cgroup, Intent: "one container", Pod: tg.Pod.Link()}); err != nil {
		t.Fatal(err)
	}
	if got := e.connect(bare + "/bb01"); got != "allowed" {
		t.Errorf("container with its own task: %s, want allowed", got)
	}

	// Deletion ends the pod's task and lets go of its cgroup.
	taskedID, err := loader.CgroupID(filepath.Join(e.mount, tasked))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.client.CoreV1().Pods("team").Delete(context.Background(), "tasked", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the pod's task ended", func() bool {
		_, ok := e.record(func(r audit.Record) bool { return r.Action == "task_end" && r.Workload == tasked })
		return ok
	})
	if r, _ := e.record(func(r audit.Record) bool { return r.Action == "task_end" && r.Workload == tasked }); !strings.HasPrefix(r.Reason, ReasonDeleted) {
		t.Errorf("end record %+v", r)
	}
	eventually(t, "the deleted pod's binding and pinned links gone", func() bool {
		bindings, _ = e.enf.Bindings()
		_, bound := bindings[taskedID]
		pins, _ := filepath.Glob(filepath.Join(e.pinDir, fmt.Sprintf("cg%d_*", taskedID)))
		return !bound && len(pins) == 0
	})
}

func TestKernelRestartKeepsPodTasks(t *testing.T) {
	e := newKernelEnv(t)
	pid := os.Getpid()
	kept := e.pod(kernelPod("kept", fmt.Sprintf("k-%d", pid), agent, annotate(AnnotationIntent, "long job")), "ee01")
	gone := e.pod(kernelPod("gone", fmt.Sprintf("g-%d", pid), agent, annotate(AnnotationIntent, "short job")), "ff01")
	e.run(context.Background())
	eventually(t, "two tasks", func() bool { return len(e.node.List()) == 2 })
	before := map[string]string{}
	for _, tk := range e.node.List() {
		before[tk.Workload] = tk.ID
	}

	// While bridled is down, pod gone is deleted; the kernel goes on
	// enforcing the tasks.
	e.stop()
	if err := e.client.CoreV1().Pods("team").Delete(context.Background(), "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := e.connect(kept + "/ee01"); got != "allowed" {
		t.Errorf("while bridled is down: %s, want allowed (the task is in the kernel)", got)
	}
	goneID, err := loader.CgroupID(filepath.Join(e.mount, gone))
	if err != nil {
		t.Fatal(err)
	}
	e.restart()

	eventually(t, "the gone pod's task ended", func() bool {
		_, ok := e.record(func(r audit.Record) bool { return r.Action == "task_end" && r.Workload == gone })
		return ok
	})
	tasks := e.node.List()
	if len(tasks) != 1 || tasks[0].ID != before[kept] || tasks[0].Pod != "team/kept/"+fmt.Sprintf("k-%d", pid) {
		t.Fatalf("tasks after the restart = %+v, want the kept pod's task %s with its pod", tasks, before[kept])
	}
	eventually(t, "the kept pod bound", func() bool { return e.w.Status().Bound == 1 })
	if got := e.connect(kept + "/ee01"); got != "allowed" {
		t.Errorf("after the restart: %s, want allowed (the task kept its binding)", got)
	}
	if len(e.node.List()) != 1 {
		t.Fatalf("a second task started after the restart: %+v", e.node.List())
	}
	// The gone pod's root was let go of: no binding, no pinned link.
	bindings, err := e.enf.Bindings()
	if err != nil {
		t.Fatal(err)
	}
	if _, bound := bindings[goneID]; bound {
		t.Error("the gone pod's cgroup is still bound")
	}
	if pins, _ := filepath.Glob(filepath.Join(e.pinDir, fmt.Sprintf("cg%d_*", goneID))); len(pins) > 0 {
		t.Errorf("the gone pod's links are still pinned: %v", pins)
	}
}
