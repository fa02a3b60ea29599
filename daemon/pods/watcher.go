// Package pods confines Kubernetes agent pods: bridled as a DaemonSet
// watches the pods of its node, and each pod its agent selector matches
// has its pod-level cgroup adopted as a confined root (baseline, or the
// pod's task), its identity derived from its namespace and service
// account, and its bridle.sh/intent annotation turned into a pod-level
// task. Pods the selector does not match are never touched. A runtime
// hook (NRI, package pods/nri) calls in before a sandbox's containers
// exist; the watch alone confines a pod as soon as it sees it.
package pods

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/identity"
	"github.com/bridle-sh/bridle/daemon/node"
	"github.com/bridle-sh/bridle/policy/engine"
)

// Annotations of an agent pod.
const (
	// AnnotationIntent asks for a pod-level task with this intent when
	// the pod starts. The policy decides, as for any request.
	AnnotationIntent = "bridle.sh/intent"
	// AnnotationTTL is the task's requested lifetime, a Go duration.
	AnnotationTTL = "bridle.sh/ttl"
)

// AuthAnnotation is the requester's auth (input.requester.auth) of a
// task asked for by a pod's annotation: no caller, the pod's spec.
const AuthAnnotation = "pod-annotation"

// Reasons a pod's tasks end.
const (
	ReasonDeleted  = "pod deleted"
	ReasonFinished = "pod finished"
)

// Node is what the watcher needs of the node (*node.Node).
type Node interface {
	AdoptRoot(rel string) (uint64, error)
	DropRoot(rel string) error
	Start(ctx context.Context, req node.Request) (node.Task, error)
	End(id, reason string) (node.Task, error)
	List() []node.Task
	ForgetRoot(cgroupID uint64) error
}

// Options wire a Watcher.
type Options struct {
	Node   Node
	Client kubernetes.Interface
	// NodeName is this node: only pods scheduled here are watched.
	NodeName string
	// Selector selects agent pods by label.
	Selector    labels.Selector
	TrustDomain spiffeid.TrustDomain
	Naming      Naming
	// Index receives the agent pods; shared with Identities and the
	// node's workload labels.
	Index *Index
	// Records receives the records of refused annotations.
	Records func(audit.Record)
	Log     *slog.Logger
	// LookupTimeout bounds a GET of a pod the watch has not seen yet
	// (the runtime hook may be first). Default 5s.
	LookupTimeout time.Duration
	// Retry is how often pods whose cgroup does not exist yet are looked
	// at again. Default 100ms.
	Retry time.Duration
	// StateFile keeps the pod roots adopted, so that a restarted bridled
	// lets go of those whose pod was deleted while it was away; "" keeps
	// none.
	StateFile string
	// CgroupMount is the cgroup v2 mount point, where a pod's processes
	// are looked at before its root is bound ("": not looked at).
	CgroupMount string
}

// Watcher keeps the agent pods of the node confined.
type Watcher struct {
	opt Options
	log *slog.Logger

	mu   sync.Mutex
	pods map[string]*state // by uid
	hook bool
	// confined are the uids of pods a previous bridled confined (its
	// state file, its tasks' pod links): agent pods whatever their labels
	// say now, as if this bridled had confined them itself (see isAgent).
	// Under cmu, not mu: the hook reads it without waiting on mu.
	cmu      sync.Mutex
	confined map[string]bool
	// annotated are the uids of pods whose annotation the previous
	// bridled acted on in this boot (under mu).
	annotated map[string]bool

	lister listers.PodLister
	synced chan struct{}
}

// state is what the watcher keeps of an agent pod besides its index
// entry.
type state struct {
	Pod
	// annotationDone: the annotation was acted on (a task asked for,
	// refused, or none asked), once per pod.
	annotationDone bool
	finished       bool
	// fromRuntime: the cgroup came from the runtime hook, which knows it
	// better than the naming convention.
	fromRuntime bool
	cgroupID    uint64 // once Bound
	// sandboxUp: the pod's sandbox has been started (the runtime hook
	// was asked about one of its containers, or the kubelet reported the
	// sandbox ready). Its cgroup is confined only then: the sandbox's own
	// process (the pause image's, which no exec rule can name) must have
	// begun before the pod's root is bound.
	sandboxUp bool
	// sharedPIDsSeen: the pod's sharing of PIDs was acted on (its
	// container tasks ended), once.
	sharedPIDsSeen bool
}

// New returns a watcher; Run starts it.
func New(opt Options) *Watcher {
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.Index == nil {
		opt.Index = NewIndex()
	}
	if opt.LookupTimeout == 0 {
		opt.LookupTimeout = 5 * time.Second
	}
	if opt.Retry == 0 {
		opt.Retry = 100 * time.Millisecond
	}
	return &Watcher{opt: opt, log: opt.Log, pods: map[string]*state{}, synced: make(chan struct{})}
}

// Index is the watcher's index of agent pods.
func (w *Watcher) Index() *Index { return w.opt.Index }

// Synced is closed once the node's pods were listed and acted on.
func (w *Watcher) Synced() <-chan struct{} { return w.synced }

// Run watches the node's pods until ctx ends. Once the first list is
// in, tasks of pods that no longer exist (deleted while no bridled ran)
// are ended.
func (w *Watcher) Run(ctx context.Context) error {
	previous := w.loadRoots()
	w.mu.Lock()
	w.annotated = map[string]bool{}
	boot := bootID()
	for uid, r := range previous {
		// After a reboot the pod's containers all start anew: its
		// annotation is asked for again, as at its first start.
		w.annotated[uid] = r.Annotated && boot != "" && r.Boot == boot
	}
	w.mu.Unlock()
	w.cmu.Lock()
	w.confined = map[string]bool{}
	for uid := range previous {
		w.confined[uid] = true
	}
	for _, t := range w.opt.Node.List() {
		if uid := podUID(t.Pod); uid != "" {
			w.confined[uid] = true
		}
	}
	w.cmu.Unlock()
	factory := informers.NewSharedInformerFactoryWithOptions(w.opt.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", w.opt.NodeName).String()
		}))
	inf := factory.Core().V1().Pods()
	w.lister = inf.Lister()
	reg, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.observed(ctx, obj) },
		UpdateFunc: func(_, obj any) { w.observed(ctx, obj) },
		DeleteFunc: func(obj any) { w.deleted(obj) },
	})
	if err != nil {
		return fmt.Errorf("pods: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	// The handler's sync, not the informer's: the store is synced before
	// the handler has been told of every pod listed, and a sweep in
	// between would take live agent pods for gone ones.
	if !cache.WaitForCacheSync(ctx.Done(), reg.HasSynced) {
		return ctx.Err()
	}
	w.sweep(previous)
	close(w.synced)
	w.log.Info("pods listed", "node", w.opt.NodeName, "agent_pods", len(w.opt.Index.List()))
	t := time.NewTicker(w.opt.Retry)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			w.retry(ctx)
		}
	}
}

func (w *Watcher) observed(ctx context.Context, obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	_ = w.observe(ctx, pod, "", false)
}

func (w *Watcher) deleted(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if st := w.pods[string(pod.UID)]; st != nil {
		w.forget(st, ReasonDeleted)
	}
}

// isAgent says whether a pod is one bridled confines: on this node and
// selected. A pod once confined stays so until it is deleted, whatever
// its labels become: an agent that may edit its own pod must not free
// itself by dropping a label, nor by dropping it and waiting for a
// restart of bridled.
func (w *Watcher) isAgent(pod *corev1.Pod) bool {
	if pod.Spec.NodeName != w.opt.NodeName {
		return false
	}
	return w.wasAgent(string(pod.UID)) || w.opt.Selector.Matches(labels.Set(pod.Labels))
}

// wasAgent says whether a pod was confined, by this bridled or the one
// before. Called with mu held.
func (w *Watcher) wasAgent(uid string) bool { return w.pods[uid] != nil || w.confinedBefore(uid) }

// confinedBefore says whether the previous bridled confined pod uid.
func (w *Watcher) confinedBefore(uid string) bool {
	w.cmu.Lock()
	defer w.cmu.Unlock()
	return w.confined[uid]
}

func (w *Watcher) forgetConfined(uid string) {
	w.cmu.Lock()
	delete(w.confined, uid)
	w.cmu.Unlock()
}

// observe takes in a pod's current state: an agent pod is recorded,
// confined, and its annotation acted on; a finished one's tasks end.
// cgroup, if set, is the pod's cgroup as the runtime gave it. Called with
// mu held. The error is why the pod is not confined (nil for a pod that
// is not an agent pod).
func (w *Watcher) observe(ctx context.Context, pod *corev1.Pod, cgroup string, started bool) error {
	if !w.isAgent(pod) {
		return nil
	}
	uid := string(pod.UID)
	st := w.pods[uid]
	if st == nil {
		st = &state{annotationDone: w.annotated[uid]}
		w.pods[uid] = st
		w.log.Info("agent pod", "pod", pod.Namespace+"/"+pod.Name, "uid", uid)
	}
	st.Namespace, st.Name, st.UID = pod.Namespace, pod.Name, uid
	st.ServiceAccount = pod.Spec.ServiceAccountName
	if st.ServiceAccount == "" {
		st.ServiceAccount = "default"
	}
	st.Identity = w.identityOf(pod.Namespace, st.ServiceAccount)
	st.Labels = pod.Labels
	st.SharesPIDs = sharesPIDs(pod)
	if st.Containers == nil {
		st.Containers = map[string]string{}
	}
	for _, cs := range append(append(append([]corev1.ContainerStatus{}, pod.Status.InitContainerStatuses...), pod.Status.ContainerStatuses...), pod.Status.EphemeralContainerStatuses...) {
		if id, err := ContainerID(cs.ContainerID); err == nil {
			st.Containers[cs.Name] = id
		}
	}
	if cgroup != "" && !st.Bound {
		st.Cgroup, st.fromRuntime = cgroup, true
	}
	st.sandboxUp = st.sandboxUp || started || sandboxStarted(pod)
	if finished := pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed; finished && !st.Bound {
		// Its containers are gone, and its cgroup may be too: nothing
		// to confine, only tasks to end.
		if !st.finished {
			st.finished = true
			w.endTasks(st, ReasonFinished)
		}
		st.Err = ""
		w.opt.Index.put(st.Pod)
		return nil
	}
	if st.Cgroup == "" {
		cg, err := w.opt.Naming.PodCgroup(uid, pod.Status.QOSClass)
		if err != nil {
			st.Err = err.Error()
			w.opt.Index.put(st.Pod)
			return err
		}
		st.Cgroup = cg
	}
	err := w.confine(st)
	w.opt.Index.put(st.Pod)
	if errors.Is(err, errSandboxNotUp) {
		return nil // confined when its first container is about to start
	}
	if err != nil {
		return err
	}
	if st.SharesPIDs && !st.sharedPIDsSeen {
		// Container tasks (started before an ephemeral container joined
		// one's PID namespace, or restored) are no boundary any more.
		st.sharedPIDsSeen = true
		w.endContainerTasks(st, "the pod's containers share a PID namespace (an ephemeral container targets one, or the spec says so): the pod is the boundary")
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		if !st.finished {
			st.finished = true
			w.endTasks(st, ReasonFinished)
		}
		return nil
	}
	w.annotationTask(ctx, st, pod.Annotations)
	return nil
}

// sharesPIDs says whether a pod's containers can see (and ptrace) each
// other's processes: a PID namespace shared by the pod or with the host,
// or an ephemeral container that joined a container's (kubectl debug
// --target), which can then act with that container's task.
func sharesPIDs(pod *corev1.Pod) bool {
	if pod.Spec.HostPID || pod.Spec.ShareProcessNamespace != nil && *pod.Spec.ShareProcessNamespace {
		return true
	}
	for _, c := range pod.Spec.EphemeralContainers {
		if c.TargetContainerName != "" {
			return true
		}
	}
	return false
}

// endContainerTasks ends a pod's tasks on its containers' cgroups (not
// those on the pod's). Called with mu held.
func (w *Watcher) endContainerTasks(st *state, reason string) {
	for _, t := range w.tasksOf(st) {
		if t.Workload == st.Cgroup {
			continue
		}
		w.log.Warn("ending a container task", "pod", st.Ref(), "task", t.ID, "reason", reason)
		if _, err := w.opt.Node.End(t.ID, reason); err != nil && !errors.Is(err, node.ErrNoTask) {
			w.log.Error("end container task of pod", "pod", st.Ref(), "task", t.ID, "err", err)
		}
	}
}

func (w *Watcher) identityOf(namespace, sa string) string {
	id, err := spiffeid.FromSegments(w.opt.TrustDomain, "ns", namespace, "sa", sa)
	if err != nil {
		return ""
	}
	return id.String()
}

// errNoCgroup: the pod's cgroup does not exist yet (the kubelet makes it
// before the sandbox; the watch may see the pod earlier).
var errNoCgroup = errors.New("pod cgroup does not exist yet")

// errSandboxNotUp: the pod's sandbox has not been started yet.
var errSandboxNotUp = errors.New("pod sandbox not started yet")

// sandboxStarted says whether the kubelet reports the pod's sandbox
// created (PodReadyToStartContainers) or any of its containers created.
func sandboxStarted(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReadyToStartContainers && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	for _, l := range [][]corev1.ContainerStatus{pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses, pod.Status.EphemeralContainerStatuses} {
		for _, cs := range l {
			if cs.ContainerID != "" {
				return true
			}
		}
	}
	return false
}

// waitExecuted waits, up to a second, until no process in the cgroup's
// subtree is still the runtime's init (runc's "runc:[2:INIT]", before it
// executes the container's program): a sandbox whose start the runtime
// has just reported may not have executed its program yet, and once the
// root is bound that exec is judged by the rules. After the wait the root
// is bound regardless (a container stuck before its exec is refused it).
func (w *Watcher) waitExecuted(cgroup string) {
	if w.opt.CgroupMount == "" {
		return
	}
	dir := filepath.Join(w.opt.CgroupMount, cgroup)
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) && !allExecuted(dir) {
		time.Sleep(10 * time.Millisecond)
	}
}

// allExecuted: no process below dir has a comm of the runtime's init.
func allExecuted(dir string) bool {
	done := true
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() || !done {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		if err != nil {
			return nil
		}
		for _, pid := range strings.Fields(string(b)) {
			comm, err := os.ReadFile("/proc/" + pid + "/comm")
			if err == nil && strings.HasPrefix(string(comm), "runc:") {
				done = false
			}
		}
		return nil
	})
	return done
}

// confine adopts the pod's cgroup as a root, once. Called with mu held.
func (w *Watcher) confine(st *state) error {
	if st.Bound {
		return nil
	}
	if !st.sandboxUp {
		return errSandboxNotUp
	}
	w.waitExecuted(st.Cgroup)
	id, err := w.opt.Node.AdoptRoot(st.Cgroup)
	if errors.Is(err, fs.ErrNotExist) {
		st.Err = errNoCgroup.Error()
		return fmt.Errorf("pod %s: cgroup %s: %w", st.Ref(), st.Cgroup, errNoCgroup)
	}
	if err != nil {
		st.Err = err.Error()
		w.log.Error("agent pod not confined", "pod", st.Ref(), "cgroup", st.Cgroup, "err", err)
		return fmt.Errorf("pod %s: confine cgroup %s: %w", st.Ref(), st.Cgroup, err)
	}
	st.Bound, st.Err, st.cgroupID = true, "", id
	w.saveRoots()
	w.log.Info("agent pod confined", "pod", st.Ref(), "cgroup", st.Cgroup, "cgroup_id", id, "identity", st.Identity)
	return nil
}

// retry confines the agent pods whose cgroup did not exist when last
// looked at, and acts on their annotations.
func (w *Watcher) retry(ctx context.Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, st := range w.pods {
		if st.Bound || st.Cgroup == "" || st.finished {
			continue
		}
		if w.confine(st) == nil {
			w.opt.Index.put(st.Pod)
			if pod, err := w.lister.Pods(st.Namespace).Get(st.Name); err == nil && string(pod.UID) == st.UID {
				_ = w.observe(ctx, pod, "", false)
			}
		}
	}
}

// annotationTask starts the pod-level task the pod's annotation asks
// for, once, when the pod is confined. A bad annotation is refused with a
// record; the pod stays under the baseline. Called with mu held.
func (w *Watcher) annotationTask(ctx context.Context, st *state, ann map[string]string) {
	if st.annotationDone || !st.Bound {
		return
	}
	st.annotationDone = true
	w.saveRoots()
	intent, ok := ann[AnnotationIntent]
	if !ok {
		return
	}
	for _, t := range w.opt.Node.List() {
		if t.Workload == st.Cgroup {
			return // restored from a previous bridled, or started by the API
		}
	}
	ttl, err := ParseAnnotations(intent, ann[AnnotationTTL])
	if err != nil {
		w.refuseAnnotation(st, intent, err)
		return
	}
	t, err := w.opt.Node.Start(ctx, node.Request{
		Workload: st.Cgroup, Intent: intent, TTL: ttl, Pod: st.Link(),
		Requester: engine.Requester{UID: engine.NoUID, GID: engine.NoUID, Auth: AuthAnnotation},
	})
	if err != nil {
		// The node recorded the refusal; the pod stays on the baseline.
		w.log.Warn("annotation task of agent pod not started; the pod stays under the baseline", "pod", st.Ref(), "err", err)
		return
	}
	w.log.Info("annotation task started", "pod", st.Ref(), "task", t.ID, "expires", t.Expires)
}

// ParseAnnotations checks a pod's task annotations: the intent is
// required text, the ttl ("" for what the policy allows) a positive Go
// duration.
func ParseAnnotations(intent, ttl string) (time.Duration, error) {
	if strings.TrimSpace(intent) == "" {
		return 0, fmt.Errorf("annotation %s is empty: say what the task is for", AnnotationIntent)
	}
	if len(intent) > 1024 {
		return 0, fmt.Errorf("annotation %s is %d bytes long (at most 1024)", AnnotationIntent, len(intent))
	}
	if ttl == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(ttl)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("annotation %s %q: want a positive Go duration like 30m", AnnotationTTL, ttl)
	}
	return d, nil
}

func (w *Watcher) refuseAnnotation(st *state, intent string, err error) {
	reason := "refused annotation of pod " + st.Ref() + ": " + err.Error() + "; the pod stays under the baseline"
	w.log.Warn("annotation task refused", "pod", st.Ref(), "err", err)
	if w.opt.Records != nil {
		w.opt.Records(audit.Record{
			Time: audit.Timestamp(time.Now()), Node: w.opt.NodeName, Workload: st.Cgroup,
			Identity: st.Identity, IdentitySource: identity.Static, Intent: intent,
			Action: bpf.ActionTaskStart, Verdict: bpf.VerdictDeny, Reason: reason,
			Enforcement: bpf.EnforcementDaemon,
		})
	}
}

// tasksOf returns the tasks of a pod: those that name it, and those on
// its cgroups.
func (w *Watcher) tasksOf(st *state) []node.Task {
	var out []node.Task
	for _, t := range w.opt.Node.List() {
		if podUID(t.Pod) == st.UID || st.Cgroup != "" && under(t.Workload, st.Cgroup) {
			out = append(out, t)
		}
	}
	return out
}

func (w *Watcher) endTasks(st *state, reason string) {
	for _, t := range w.tasksOf(st) {
		if _, err := w.opt.Node.End(t.ID, reason); err != nil && !errors.Is(err, node.ErrNoTask) {
			w.log.Error("end task of pod", "pod", st.Ref(), "task", t.ID, "err", err)
		}
	}
}

// forget ends a pod's tasks and lets go of its cgroup. Called with mu
// held.
func (w *Watcher) forget(st *state, reason string) {
	w.endTasks(st, reason)
	if st.Bound {
		if err := w.opt.Node.DropRoot(st.Cgroup); err != nil {
			w.log.Warn("drop the root of a deleted pod", "pod", st.Ref(), "err", err)
		}
	}
	delete(w.pods, st.UID)
	w.forgetConfined(st.UID)
	w.opt.Index.remove(st.UID)
	w.saveRoots()
	w.log.Info("agent pod gone", "pod", st.Ref(), "reason", reason)
}

// sweep ends the tasks whose pod is gone (deleted while no bridled ran)
// and lets go of the roots of such pods.
func (w *Watcher) sweep(previous map[string]root) {
	w.mu.Lock()
	defer w.mu.Unlock()
	defer w.forgetStaleRoots(previous)
	for _, t := range w.opt.Node.List() {
		uid := podUID(t.Pod)
		if uid == "" || w.pods[uid] != nil {
			continue
		}
		w.log.Info("ending the task of a pod that is gone", "task", t.ID, "pod", t.Pod)
		if _, err := w.opt.Node.End(t.ID, ReasonDeleted); err != nil && !errors.Is(err, node.ErrNoTask) {
			w.log.Error("end task of a pod that is gone", "task", t.ID, "err", err)
		}
	}
}

// podUID is the uid in a task's pod link, "NS/NAME/UID".
func podUID(link string) string {
	parts := strings.Split(link, "/")
	if len(parts) != 3 {
		return ""
	}
	return parts[2]
}

func under(p, root string) bool {
	return p == root || strings.HasPrefix(p, strings.TrimSuffix(root, "/")+"/")
}

// lookup finds a pod: in the watch's cache, or from the API server
// (bounded) when the watch has not seen it yet.
func (w *Watcher) lookup(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	if w.lister != nil {
		if pod, err := w.lister.Pods(namespace).Get(name); err == nil {
			return pod, nil
		}
	}
	ctx, cancel := context.WithTimeout(ctx, w.opt.LookupTimeout)
	defer cancel()
	return w.opt.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
}

// SetHookConnected says whether the runtime hook is connected; without
// it the status says DEGRADED.
func (w *Watcher) SetHookConnected(ok bool) {
	w.mu.Lock()
	w.hook = ok
	w.mu.Unlock()
}

// HookConnected reports what SetHookConnected last said.
func (w *Watcher) HookConnected() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.hook
}

// notFound reports whether err is the API server's "not found".
func notFound(err error) bool { return apierrors.IsNotFound(err) }
