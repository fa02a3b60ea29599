package pods

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/identity"
	"github.com/bridle-sh/bridle/daemon/node"
)

// These tests run without root: the node is a recorder of what the
// watcher asks of it, and "existing cgroups" a set. That the kernel
// enforces what a node writes is proven by kernel_test.go.

type fakeNode struct {
	mu      sync.Mutex
	calls   []string
	cgroups map[string]bool // cgroups that exist
	tasks   []node.Task
	refuse  error // Start's answer, if set
	n       int
	delay   time.Duration // AdoptRoot takes this long
}

func newFakeNode(cgroups ...string) *fakeNode {
	f := &fakeNode{cgroups: map[string]bool{}}
	for _, c := range cgroups {
		f.cgroups[c] = true
	}
	return f
}

func (f *fakeNode) note(format string, args ...any) {
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

func (f *fakeNode) AdoptRoot(rel string) (uint64, error) {
	time.Sleep(f.delay)
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.cgroups[rel] {
		return 0, fmt.Errorf("cgroup %s: %w", rel, fs.ErrNotExist)
	}
	f.note("adopt %s", rel)
	return 1, nil
}

func (f *fakeNode) DropRoot(rel string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.note("drop %s", rel)
	return nil
}

func (f *fakeNode) Start(_ context.Context, req node.Request) (node.Task, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.note("start %s %q ttl=%v pod=%s by=%s", req.Workload, req.Intent, req.TTL, req.Pod, req.Requester.Auth)
	if f.refuse != nil {
		return node.Task{}, f.refuse
	}
	f.n++
	t := node.Task{ID: fmt.Sprintf("t-%d", f.n), Workload: req.Workload, Intent: req.Intent, Pod: req.Pod}
	f.tasks = append(f.tasks, t)
	return t, nil
}

func (f *fakeNode) End(id, reason string) (node.Task, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := slices.IndexFunc(f.tasks, func(t node.Task) bool { return t.ID == id })
	if i < 0 {
		return node.Task{}, node.ErrNoTask
	}
	t := f.tasks[i]
	f.tasks = slices.Delete(f.tasks, i, i+1)
	f.note("end %s %s", id, reason)
	return t, nil
}

func (f *fakeNode) ForgetRoot(id uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.note("forget %d", id)
	return nil
}

func (f *fakeNode) List() []node.Task {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.tasks)
}

func (f *fakeNode) log() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeNode) addCgroup(c string) {
	f.mu.Lock()
	f.cgroups[c] = true
	f.mu.Unlock()
}

const thisNode = "node-a"

type podOpt func(*corev1.Pod)

func agent(p *corev1.Pod)          { p.Labels["bridle.sh/agent"] = "true" }
func sandboxPending(p *corev1.Pod) { p.Status.Conditions, p.Status.Phase = nil, corev1.PodPending }
func onNode(n string) podOpt       { return func(p *corev1.Pod) { p.Spec.NodeName = n } }
func annotate(k, v string) podOpt  { return func(p *corev1.Pod) { p.Annotations[k] = v } }
func container(name, id string) podOpt {
	return func(p *corev1.Pod) {
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{Name: name, ContainerID: "containerd://" + id})
	}
}

func newPod(ns, name, uid string, opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid),
			Labels: map[string]string{"app": name}, Annotations: map[string]string{}},
		Spec: corev1.PodSpec{NodeName: thisNode, ServiceAccountName: "agent-sa"},
		Status: corev1.PodStatus{QOSClass: corev1.PodQOSBurstable, Phase: corev1.PodRunning,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReadyToStartContainers, Status: corev1.ConditionTrue}}},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

type env struct {
	t       *testing.T
	node    *fakeNode
	client  *fake.Clientset
	w       *Watcher
	records []audit.Record
	mu      sync.Mutex
	cancel  context.CancelFunc
	done    chan struct{}
}

func newEnv(t *testing.T, fn *fakeNode, objs ...*corev1.Pod) *env {
	t.Helper()
	return newEnvWith(t, fn, func(*Options) {}, objs...)
}

func newEnvWith(t *testing.T, fn *fakeNode, tweak func(*Options), objs ...*corev1.Pod) *env {
	t.Helper()
	e := &env{t: t, node: fn, done: make(chan struct{})}
	e.client = fake.NewClientset()
	for _, o := range objs {
		if _, err := e.client.CoreV1().Pods(o.Namespace).Create(context.Background(), o, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	sel, err := labels.Parse("bridle.sh/agent=true")
	if err != nil {
		t.Fatal(err)
	}
	opt := Options{
		Node: fn, Client: e.client, NodeName: thisNode, Selector: sel,
		TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.test"),
		Records: func(r audit.Record) {
			e.mu.Lock()
			e.records = append(e.records, r)
			e.mu.Unlock()
		},
		Retry: 10 * time.Millisecond,
	}
	tweak(&opt)
	e.w = New(opt)
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go func() {
		defer close(e.done)
		_ = e.w.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-e.done
	})
	select {
	case <-e.w.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("pods not synced")
	}
	return e
}

// eventually waits (bounded) for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (e *env) hasCall(want string) bool {
	return slices.ContainsFunc(e.node.log(), func(c string) bool { return strings.HasPrefix(c, want) })
}

func podCg(uid string) string { return "/kubepods/burstable/pod" + uid }

func TestAgentPodConfinedWithAnnotationTask(t *testing.T) {
	pod := newPod("team", "agent-1", "u1", agent, annotate(AnnotationIntent, "triage issues"), annotate(AnnotationTTL, "30m"), container("main", "abc123"))
	e := newEnv(t, newFakeNode(podCg("u1")), pod)
	eventually(t, "the annotation task", func() bool { return e.hasCall("start ") })
	want := []string{"adopt " + podCg("u1"), `start ` + podCg("u1") + ` "triage issues" ttl=30m0s pod=team/agent-1/u1 by=pod-annotation`}
	if got := e.node.log(); !slices.Equal(got[:2], want) {
		t.Fatalf("calls = %q, want %q", got, want)
	}
	p, ok := e.w.Index().ByCgroup(podCg("u1") + "/abc123")
	if !ok || p.Identity != "spiffe://cluster.test/ns/team/sa/agent-sa" || p.Labels["app"] != "agent-1" || p.Containers["main"] != "abc123" {
		t.Fatalf("index of a container cgroup: %+v %v", p, ok)
	}
	// An update does not start a second task.
	pod.Labels["x"] = "y"
	if _, err := e.client.CoreV1().Pods("team").Update(context.Background(), pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the label update", func() bool { p, _ := e.w.Index().ByUID("u1"); return p.Labels["x"] == "y" })
	if n := len(slices.DeleteFunc(e.node.log(), func(c string) bool { return !strings.HasPrefix(c, "start") })); n != 1 {
		t.Fatalf("%d task starts, want 1: %q", n, e.node.log())
	}
	// Deletion ends the task and drops the root.
	if err := e.client.CoreV1().Pods("team").Delete(context.Background(), "agent-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the root dropped", func() bool { return e.hasCall("drop ") })
	got := e.node.log()
	if !slices.Equal(got[len(got)-2:], []string{"end t-1 pod deleted", "drop " + podCg("u1")}) {
		t.Fatalf("calls = %q", got)
	}
	if _, ok := e.w.Index().ByUID("u1"); ok {
		t.Fatal("a deleted pod is still indexed")
	}
}

func TestNonAgentPodsNeverTouched(t *testing.T) {
	plain := newPod("team", "web", "u2", annotate(AnnotationIntent, "anything"))
	elsewhere := newPod("team", "agent-2", "u3", agent, onNode("node-b"))
	e := newEnv(t, newFakeNode(podCg("u2"), podCg("u3")), plain, elsewhere)
	if err := e.client.CoreV1().Pods("team").Delete(context.Background(), "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if got := e.node.log(); len(got) != 0 {
		t.Fatalf("pods that are not this node's agent pods were touched: %q", got)
	}
	if s := e.w.Status(); s.Watched != 0 || !s.Synced {
		t.Fatalf("status %+v", s)
	}
	// Asked for by the API, each is refused with its reason.
	for ref, want := range map[string]string{
		"team/web":     "no such pod",
		"team/agent-2": `on node "node-b", not this node`,
		"team/nope":    "no such pod",
		"team":         "want NAMESPACE/NAME",
	} {
		_, err := e.w.Resolve(context.Background(), ref, t.TempDir())
		var re *node.RequestError
		if err == nil || !strings.Contains(err.Error(), want) || !errorsAs(err, &re) {
			t.Errorf("Resolve(%s) = %v, want a request error with %q", ref, err, want)
		}
	}
}

func TestResolveRefusesNonAgentOnThisNode(t *testing.T) {
	e := newEnv(t, newFakeNode(), newPod("team", "web", "u4"))
	_, err := e.w.Resolve(context.Background(), "team/web", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "is not an agent pod") {
		t.Fatalf("Resolve = %v", err)
	}
}

func TestBadAnnotationRefusedWithRecord(t *testing.T) {
	pod := newPod("team", "agent-3", "u5", agent, annotate(AnnotationIntent, "x"), annotate(AnnotationTTL, "forever"))
	e := newEnv(t, newFakeNode(podCg("u5")), pod)
	eventually(t, "the record", func() bool { e.mu.Lock(); defer e.mu.Unlock(); return len(e.records) > 0 })
	r := e.records[0]
	if r.Verdict != "deny" || !strings.Contains(r.Reason, `bridle.sh/ttl "forever"`) || r.Workload != podCg("u5") || r.Identity != "spiffe://cluster.test/ns/team/sa/agent-sa" {
		t.Fatalf("record %+v", r)
	}
	if e.hasCall("start") || !e.hasCall("adopt") {
		t.Fatalf("calls %q: want the pod confined, no task", e.node.log())
	}
}

func TestPolicyRefusalLeavesBaseline(t *testing.T) {
	fn := newFakeNode(podCg("u6"))
	fn.refuse = &node.RequestError{Err: fmt.Errorf("denied")}
	e := newEnv(t, fn, newPod("team", "agent-4", "u6", agent, annotate(AnnotationIntent, "x")))
	eventually(t, "the start", func() bool { return e.hasCall("start") })
	if p, _ := e.w.Index().ByUID("u6"); !p.Bound {
		t.Fatal("pod not confined after a refused task")
	}
}

func TestCgroupAppearsLater(t *testing.T) {
	fn := newFakeNode()
	e := newEnv(t, fn, newPod("team", "agent-5", "u7", agent, annotate(AnnotationIntent, "later")))
	if s := e.w.Status(); s.Watched != 1 || s.Bound != 0 || len(s.Errors) != 1 {
		t.Fatalf("status before the cgroup: %+v", s)
	}
	fn.addCgroup(podCg("u7"))
	eventually(t, "the task", func() bool { return e.hasCall("start") })
	if s := e.w.Status(); s.Bound != 1 {
		t.Fatalf("status after: %+v", s)
	}
}

func TestPodFinishedEndsTasks(t *testing.T) {
	pod := newPod("team", "job", "u8", agent, annotate(AnnotationIntent, "batch"))
	e := newEnv(t, newFakeNode(podCg("u8")), pod)
	eventually(t, "the task", func() bool { return e.hasCall("start") })
	pod.Status.Phase = corev1.PodSucceeded
	if _, err := e.client.CoreV1().Pods("team").UpdateStatus(context.Background(), pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the end", func() bool { return e.hasCall("end t-1 pod finished") })
}

func TestRestartSweepsTasksOfGonePods(t *testing.T) {
	fn := newFakeNode(podCg("u9"))
	fn.tasks = []node.Task{
		{ID: "t-old", Workload: podCg("gone"), Pod: "team/gone/gone"},
		{ID: "t-kept", Workload: podCg("u9"), Pod: "team/agent-6/u9"},
		{ID: "t-other", Workload: "/agents.slice/w1"},
	}
	e := newEnv(t, fn, newPod("team", "agent-6", "u9", agent, annotate(AnnotationIntent, "again")))
	eventually(t, "the sweep", func() bool { return e.hasCall("end t-old") })
	ids := []string{}
	for _, t := range fn.List() {
		ids = append(ids, t.ID)
	}
	if !slices.Equal(ids, []string{"t-kept", "t-other"}) || e.hasCall("start") {
		t.Fatalf("tasks %v, calls %q: want the restored pod task kept and none started", ids, e.node.log())
	}
}

func TestResolveContainers(t *testing.T) {
	mount := t.TempDir()
	shared := true
	e := newEnv(t, newFakeNode(podCg("ua"), podCg("ub")),
		newPod("team", "a", "ua", agent, container("main", "aa11")),
		newPod("team", "b", "ub", agent, container("main", "bb22"), func(p *corev1.Pod) { p.Spec.ShareProcessNamespace = &shared }))
	eventually(t, "both confined", func() bool { return e.w.Status().Bound == 2 })
	if err := mkdirAll(mount, podCg("ua")+"/aa11"); err != nil {
		t.Fatal(err)
	}
	tg, err := e.w.Resolve(context.Background(), "team/a/main", mount)
	if err != nil || tg.Cgroup != podCg("ua")+"/aa11" || tg.Pod.Link() != "team/a/ua" {
		t.Fatalf("Resolve container = %+v, %v", tg, err)
	}
	if tg, err := e.w.Resolve(context.Background(), "team/a", mount); err != nil || tg.Cgroup != podCg("ua") {
		t.Fatalf("Resolve pod = %+v, %v", tg, err)
	}
	if _, err := e.w.Resolve(context.Background(), "team/a/sidecar", mount); err == nil || !strings.Contains(err.Error(), "no running container") {
		t.Fatalf("unknown container: %v", err)
	}
	if _, err := e.w.Resolve(context.Background(), "team/b/main", mount); err == nil || !strings.Contains(err.Error(), "share a PID namespace") {
		t.Fatalf("container of a pod sharing PIDs: %v", err)
	}
	if _, err := e.w.Resolve(context.Background(), "team/b", mount); err != nil {
		t.Fatalf("pod sharing PIDs, pod-level: %v", err)
	}
}

// At the sandbox's start its own process may not have executed yet: the
// pod is confined when its first container is about to be created.
func TestSandboxConfinedAtFirstContainer(t *testing.T) {
	fn := newFakeNode(podCg("ue"))
	e := newEnv(t, fn)
	pod := newPod("team", "e", "ue", agent, sandboxPending, annotate(AnnotationIntent, "hooked"))
	if _, err := e.client.CoreV1().Pods("team").Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	info := SandboxInfo{Namespace: "team", Name: "e", UID: "ue", Labels: pod.Labels}
	if err := e.w.SandboxStarting(context.Background(), info); err != nil {
		t.Fatal(err)
	}
	if got := fn.log(); len(got) != 0 {
		t.Fatalf("calls at the sandbox's start: %q, want none", got)
	}
	if err := e.w.ContainerStarting(context.Background(), info, ContainerInfo{ID: "ee01", Name: "main", CgroupsPath: podCg("ue") + "/ee01"}); err != nil {
		t.Fatal(err)
	}
	if got := fn.log(); len(got) != 2 || got[0] != "adopt "+podCg("ue") || !strings.HasPrefix(got[1], "start "+podCg("ue")) {
		t.Fatalf("calls at the first container: %q", got)
	}
}

func TestSandboxHook(t *testing.T) {
	fn := newFakeNode(podCg("uc"), "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podud.slice")
	e := newEnv(t, fn)
	// The hook is first: the pod is not in the watch's cache yet, and is
	// asked of the API server (here: created only now, unseen).
	e.cancel()
	<-e.done
	pod := newPod("team", "c", "uc", agent, annotate(AnnotationIntent, "hooked"))
	if _, err := e.client.CoreV1().Pods("team").Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	info := SandboxInfo{Namespace: "team", Name: "c", UID: "uc", Labels: pod.Labels}
	if err := e.w.SandboxStarting(context.Background(), info); err != nil {
		t.Fatal(err)
	}
	if got := fn.log(); len(got) != 2 || got[0] != "adopt "+podCg("uc") || !strings.HasPrefix(got[1], "start "+podCg("uc")) {
		t.Fatalf("calls %q", got)
	}
	// A container whose cgroup is outside its pod's is refused; one
	// below it is taken.
	if err := e.w.ContainerStarting(context.Background(), info, ContainerInfo{ID: "cc33", Name: "main", CgroupsPath: "/elsewhere/cc33"}); err == nil {
		t.Fatal("a container outside its pod's cgroup accepted")
	}
	if err := e.w.ContainerStarting(context.Background(), info, ContainerInfo{ID: "cc33", Name: "main", CgroupsPath: podCg("uc") + "/cc33"}); err != nil {
		t.Fatal(err)
	}
	if p, _ := e.w.Index().ByUID("uc"); p.Containers["main"] != "cc33" {
		t.Fatalf("container not known: %+v", p)
	}
	// A non-agent sandbox is left alone; one scheduled elsewhere refused.
	if err := e.w.SandboxStarting(context.Background(), SandboxInfo{Namespace: "team", Name: "web", UID: "x", Labels: map[string]string{}}); err != nil {
		t.Fatal(err)
	}
	other := newPod("team", "d", "ud", agent, onNode("node-b"))
	if _, err := e.client.CoreV1().Pods("team").Create(context.Background(), other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err := e.w.SandboxStarting(context.Background(), SandboxInfo{Namespace: "team", Name: "d", UID: "ud", Labels: other.Labels, CgroupParent: "kubepods-burstable-podud.slice"})
	if err == nil || !strings.Contains(err.Error(), "not this node") {
		t.Fatalf("a pod of another node: %v", err)
	}
	// The runtime's cgroup parent (systemd) wins over the naming.
	other.Spec.NodeName = thisNode
	if _, err := e.client.CoreV1().Pods("team").Update(context.Background(), other, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.w.SandboxStarting(context.Background(), SandboxInfo{Namespace: "team", Name: "d", UID: "ud", Labels: other.Labels, CgroupParent: "kubepods-burstable-podud.slice"}); err != nil {
		t.Fatal(err)
	}
	if p, _ := e.w.Index().ByUID("ud"); !p.Bound || p.Cgroup != "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podud.slice" {
		t.Fatalf("pod from the runtime's parent: %+v", p)
	}
	// Gone from the API server, the sandbox's removal forgets the pod.
	if err := e.client.CoreV1().Pods("team").Delete(context.Background(), "c", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.w.SandboxGone(context.Background(), info)
	if got := fn.log(); !slices.Contains(got, "end t-1 pod deleted") || !slices.Contains(got, "drop "+podCg("uc")) {
		t.Fatalf("calls %q", got)
	}
	e.w.SetHookConnected(true)
	if !e.w.Status().Hook {
		t.Fatal("hook not reported")
	}
}

func TestParseAnnotations(t *testing.T) {
	for _, c := range []struct {
		intent, ttl string
		want        time.Duration
		err         string
	}{
		{"fix bug", "", 0, ""},
		{"fix bug", "90s", 90 * time.Second, ""},
		{"", "", 0, "is empty"},
		{"  ", "1m", 0, "is empty"},
		{"x", "-1m", 0, "positive"},
		{"x", "0s", 0, "positive"},
		{"x", "1 hour", 0, "Go duration"},
		{strings.Repeat("a", 1025), "", 0, "at most 1024"},
	} {
		got, err := ParseAnnotations(c.intent, c.ttl)
		if c.err == "" && (err != nil || got != c.want) || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
			t.Errorf("ParseAnnotations(%.20q, %q) = %v, %v; want %v, %q", c.intent, c.ttl, got, err, c.want, c.err)
		}
	}
}

func TestIdentities(t *testing.T) {
	x := NewIndex()
	x.put(Pod{Namespace: "team", Name: "a", UID: "u", Cgroup: "/kubepods/podu", Identity: "spiffe://td/ns/team/sa/s", Labels: map[string]string{"k": "v"}, Bound: true})
	static := NewIdentities(identity.NewStatic(identity.StaticConfig{Node: "n1"}, "/sys/fs/cgroup"), x)
	for cg, want := range map[string]string{
		"/kubepods/podu":    "spiffe://td/ns/team/sa/s",
		"/kubepods/podu/c1": "spiffe://td/ns/team/sa/s",
		"/kubepods/podux":   "spiffe://n1/workload/kubepods/podux",
		"/agents.slice/w1":  "spiffe://n1/workload/agents.slice/w1",
	} {
		if got := static.Known(cg); got.ID != want || got.Source != identity.Static {
			t.Errorf("Known(%s) = %+v, want %s", cg, got, want)
		}
		got, err := static.Identify(context.Background(), identity.Workload{Cgroup: cg})
		if err != nil || got.ID != want {
			t.Errorf("Identify(%s) = %+v, %v", cg, got, err)
		}
	}
	if l := x.Labels("/kubepods/podu/c1"); l["k"] != "v" {
		t.Errorf("labels %v", l)
	}
	if l := x.Labels("/other"); l != nil {
		t.Errorf("labels of no pod: %v", l)
	}
}

// A pod that finished before it was seen (a restart) is not confined: its
// cgroup may be gone; its tasks end.
func TestFinishedPodNotConfined(t *testing.T) {
	fn := newFakeNode()
	fn.tasks = []node.Task{{ID: "t-done", Workload: podCg("ue"), Pod: "team/done/ue"}}
	pod := newPod("team", "done", "ue", agent, annotate(AnnotationIntent, "x"))
	pod.Status.Phase = corev1.PodFailed
	e := newEnv(t, fn, pod)
	eventually(t, "the end", func() bool { return e.hasCall("end t-done pod finished") })
	if s := e.w.Status(); s.Bound != 0 || len(s.Errors) != 0 || e.hasCall("adopt") || e.hasCall("start") {
		t.Fatalf("status %+v, calls %q", s, e.node.log())
	}
}

// The roots a previous bridled adopted for pods now gone are let go of;
// those of pods still there are kept, and the file then names only them.
func TestStaleRootsForgotten(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pods.json")
	boot := thisBoot(t)
	prev := `{"gone": {"cgroup": "/kubepods/burstable/podgone", "cgroup_id": 41, "boot": "` + boot + `"}, "u9": {"cgroup": "/kubepods/burstable/podu9", "cgroup_id": 1, "boot": "` + boot + `"}}`
	if err := os.WriteFile(file, []byte(prev), 0o600); err != nil {
		t.Fatal(err)
	}
	fn := newFakeNode(podCg("u9"))
	e := newEnvWith(t, fn, func(o *Options) { o.StateFile = file }, newPod("team", "agent-6", "u9", agent))
	if !e.hasCall("forget 41") || e.hasCall("forget 1") {
		t.Fatalf("calls %q: want the gone pod's root forgotten, the kept one's not", e.node.log())
	}
	b, err := os.ReadFile(file)
	if err != nil || strings.Contains(string(b), "gone") || !strings.Contains(string(b), "podu9") {
		t.Fatalf("state file %s, %v", b, err)
	}
}

// A restarted bridled ends the tasks of gone pods only once every pod of
// the first list has been seen: the informer's store is synced before its
// handler has been told about each pod, and a sweep in between ended the
// tasks (and let go of the roots) of live agent pods.
func TestRestartSweepWaitsForEveryPod(t *testing.T) {
	var cgs []string
	var objs []*corev1.Pod
	fn := newFakeNode()
	fn.delay = 100 * time.Millisecond
	for i := range 8 {
		uid := fmt.Sprintf("live%d", i)
		cgs = append(cgs, podCg(uid))
		fn.addCgroup(podCg(uid))
		fn.tasks = append(fn.tasks, node.Task{ID: "t-" + uid, Workload: podCg(uid), Pod: "team/a" + uid + "/" + uid})
		objs = append(objs, newPod("team", "a"+uid, uid, agent))
	}
	e := newEnv(t, fn, objs...)
	eventually(t, "every pod confined", func() bool { return e.w.Status().Bound == 8 })
	for _, c := range e.node.log() {
		if strings.HasPrefix(c, "end ") {
			t.Fatalf("calls %q: the restart ended the task of a live agent pod", e.node.log())
		}
	}
}

// An agent pod that dropped its agent label while confined stays
// confined (isAgent), and must stay so across a restart of bridled: the
// pods it confined are known from its state file and from its tasks' pod
// links, whatever their labels say now.
func TestRestartKeepsPodThatDroppedItsLabel(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pods.json")
	prev := `{"u9": {"cgroup": "/kubepods/burstable/podu9", "cgroup_id": 1}}`
	if err := os.WriteFile(file, []byte(prev), 0o600); err != nil {
		t.Fatal(err)
	}
	fn := newFakeNode(podCg("u9"), podCg("ut"))
	fn.tasks = []node.Task{{ID: "t-kept", Workload: podCg("ut"), Pod: "team/tasked/ut"}}
	unlabelled := newPod("team", "agent-6", "u9") // was an agent pod; label removed by the agent
	tasked := newPod("team", "tasked", "ut")      // likewise, with a task restored
	e := newEnvWith(t, fn, func(o *Options) { o.StateFile = file }, unlabelled, tasked)
	if e.hasCall("forget 1") || e.hasCall("end t-kept") {
		t.Fatalf("calls %q: a restart let go of a confined pod that dropped its agent label", e.node.log())
	}
	for _, uid := range []string{"u9", "ut"} {
		if p, ok := e.w.Index().ByUID(uid); !ok || !p.Bound {
			t.Fatalf("pod %s not confined after the restart: %+v %v (calls %q)", uid, p, ok, e.node.log())
		}
	}
}

func thisBoot(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Skipf("no boot id to compare state files by: %v", err)
	}
	return strings.TrimSpace(string(b))
}

// The state file outlives a reboot (state_dir is on disk), the kernel's
// pins and cgroup ids do not: after a reboot the kernel numbers cgroups
// anew, and an id the file keeps may now be a live cgroup's. Roots kept
// in another boot, or in a file that does not say which, are not let go
// of by id (their pins are gone with the boot anyway).
func TestStaleRootsOfAnotherBootNotForgotten(t *testing.T) {
	thisBoot(t)
	file := filepath.Join(t.TempDir(), "pods.json")
	prev := `{"gone": {"cgroup": "/kubepods/burstable/podgone", "cgroup_id": 41, "boot": "00000000-0000-0000-0000-000000000000"}, "old": {"cgroup": "/kubepods/burstable/podold", "cgroup_id": 42}}`
	if err := os.WriteFile(file, []byte(prev), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnvWith(t, newFakeNode(), func(o *Options) { o.StateFile = file })
	if e.hasCall("forget") {
		t.Fatalf("calls %q: roots kept in another boot were let go of by id", e.node.log())
	}
}

// An ephemeral container with a target (kubectl debug --target) joins the
// target's PID namespace: it can ptrace the target's processes and run
// with their task. Such a pod's containers are no boundary: container
// tasks are refused, and those in force end when the container is added.
func TestEphemeralTargetSharesPIDs(t *testing.T) {
	mount := t.TempDir()
	pod := newPod("team", "a", "uf", agent, container("main", "ff11"))
	fn := newFakeNode(podCg("uf"))
	e := newEnv(t, fn, pod)
	eventually(t, "confined", func() bool { return e.w.Status().Bound == 1 })
	if err := mkdirAll(mount, podCg("uf")+"/ff11"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.w.Resolve(context.Background(), "team/a/main", mount); err != nil {
		t.Fatal(err)
	}
	fn.mu.Lock()
	fn.tasks = append(fn.tasks,
		node.Task{ID: "t-c", Workload: podCg("uf") + "/ff11", Pod: "team/a/uf"},
		node.Task{ID: "t-p", Workload: podCg("uf"), Pod: "team/a/uf"})
	fn.mu.Unlock()
	pod.Spec.EphemeralContainers = []corev1.EphemeralContainer{{
		EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debug", Image: "busybox"},
		TargetContainerName:      "main",
	}}
	if _, err := e.client.CoreV1().Pods("team").Update(context.Background(), pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the container task ended", func() bool { return e.hasCall("end t-c") })
	if e.hasCall("end t-p") {
		t.Fatalf("calls %q: the pod-level task ended too", e.node.log())
	}
	if _, err := e.w.Resolve(context.Background(), "team/a/main", mount); err == nil || !strings.Contains(err.Error(), "share a PID namespace") {
		t.Fatalf("container task in a pod with a targeting ephemeral container: %v", err)
	}
}

// The runtime's cgroup parent is taken over the naming convention, but
// only if it is this pod's: a parent that names no pod (the root, the
// kubepods slice) or another pod's would confine what is not this pod.
func TestRuntimeCgroupMustNameThePod(t *testing.T) {
	fn := newFakeNode("/", "/kubepods", podCg("uo"), podCg("ug"))
	e := newEnv(t, fn)
	e.cancel()
	<-e.done
	pod := newPod("team", "g", "ug", agent)
	if _, err := e.client.CoreV1().Pods("team").Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, parent := range []string{"/", "/kubepods", podCg("uo"), "kubepods.slice", "kubepods-burstable-poduo.slice"} {
		err := e.w.SandboxStarting(context.Background(), SandboxInfo{Namespace: "team", Name: "g", UID: "ug", Labels: pod.Labels, CgroupParent: parent})
		if err == nil {
			t.Errorf("cgroup parent %s of pod ug accepted", parent)
		}
	}
	if got := fn.log(); len(got) != 0 {
		t.Fatalf("calls %q: a cgroup that is not the pod's was adopted", got)
	}
	if err := e.w.SandboxStarting(context.Background(), SandboxInfo{Namespace: "team", Name: "g", UID: "ug", Labels: pod.Labels, CgroupParent: podCg("ug")}); err != nil {
		t.Fatal(err)
	}
}

// The runtime waits for the hook at every pod's start, and refuses what
// the hook does not answer in time: a pod the selector does not match
// must be answered at once, never held up behind an agent pod's lookup
// or a task start (the watcher's lock).
func TestNonAgentSandboxNotHeldUp(t *testing.T) {
	e := newEnv(t, newFakeNode())
	e.w.mu.Lock()
	defer e.w.mu.Unlock()
	done := make(chan error, 2)
	go func() {
		done <- e.w.SandboxStarting(context.Background(), SandboxInfo{Namespace: "team", Name: "web", UID: "uw", Labels: map[string]string{"app": "web"}})
	}()
	go func() {
		done <- e.w.ContainerStarting(context.Background(), SandboxInfo{Namespace: "team", Name: "web", UID: "uw", Labels: map[string]string{"app": "web"}},
			ContainerInfo{ID: "ab12", Name: "main"})
	}()
	for range 2 {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(time.Second):
			t.Fatal("a non-agent pod's start waited on the watcher's lock")
		}
	}
}

// A pod's annotation asks for one task in the pod's life: once that task
// has ended (its ttl ran out, an admin ended it), a restart of bridled
// must not grant it anew (nor one with an intent the pod edited since).
func TestRestartDoesNotRenewAnnotationTask(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pods.json")
	prev := `{"u9": {"cgroup": "/kubepods/burstable/podu9", "cgroup_id": 1, "boot": "` + thisBoot(t) + `", "annotated": true}}`
	if err := os.WriteFile(file, []byte(prev), 0o600); err != nil {
		t.Fatal(err)
	}
	fn := newFakeNode(podCg("u9"))
	e := newEnvWith(t, fn, func(o *Options) { o.StateFile = file },
		newPod("team", "agent-6", "u9", agent, annotate(AnnotationIntent, "more, please")))
	eventually(t, "confined", func() bool { return e.w.Status().Bound == 1 })
	time.Sleep(50 * time.Millisecond)
	if e.hasCall("start") {
		t.Fatalf("calls %q: a restart started the annotation task again", e.node.log())
	}
	b, err := os.ReadFile(file)
	if err != nil || !strings.Contains(string(b), `"annotated":true`) {
		t.Fatalf("state file %s, %v", b, err)
	}
}
