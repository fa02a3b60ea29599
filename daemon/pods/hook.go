package pods

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/labels"
)

// SandboxInfo is a pod sandbox as the runtime hook reports it.
type SandboxInfo struct {
	Namespace, Name, UID string
	Labels, Annotations  map[string]string
	// CgroupParent is the pod's cgroup as the runtime gives it (a path
	// for cgroupfs, a slice name for systemd); may be "".
	CgroupParent string
}

// ContainerInfo is a container as the runtime hook reports it.
type ContainerInfo struct {
	ID, Name string
	// CgroupsPath is the runtime's linux.cgroupsPath for the container.
	CgroupsPath string
}

// SandboxStarting is called by the runtime hook when a pod sandbox is
// created, before any of its containers exists. For an agent pod it
// confines the pod cgroup and starts the annotation task, synchronously.
// A pod the selector does not match is left alone (nil).
func (w *Watcher) SandboxStarting(ctx context.Context, p SandboxInfo) error {
	if !w.mayBeAgent(p) {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	_, err := w.sandbox(ctx, p, false)
	return err
}

// mayBeAgent answers, without waiting on mu, whether a sandbox may be an
// agent pod's: the runtime waits on the hook at every pod's start, and a
// pod the selector does not match, that is not confined, must not wait
// behind an agent pod's lookup or task start. The index holds every pod
// in w.pods (both are written under mu).
func (w *Watcher) mayBeAgent(p SandboxInfo) bool {
	if w.opt.Selector.Matches(labels.Set(p.Labels)) || w.confinedBefore(p.UID) {
		return true
	}
	_, ok := w.opt.Index.ByUID(p.UID)
	return ok
}

// sandbox brings an agent pod's sandbox under confinement; nil state for a
// pod that is not an agent pod. Called with mu held.
func (w *Watcher) sandbox(ctx context.Context, p SandboxInfo, started bool) (*state, error) {
	st := w.pods[p.UID]
	if st == nil && !w.confinedBefore(p.UID) && !w.opt.Selector.Matches(labels.Set(p.Labels)) {
		return nil, nil
	}
	if st != nil && st.Bound {
		return st, nil
	}
	cgroup := ""
	if p.CgroupParent != "" {
		var err error
		if cgroup, err = RuntimeCgroup(p.CgroupParent); err != nil {
			return nil, fmt.Errorf("agent pod %s/%s: %w", p.Namespace, p.Name, err)
		}
		if !NamesPod(cgroup, p.UID) {
			return nil, fmt.Errorf("agent pod %s/%s: the runtime's cgroup parent %s is not the cgroup of pod %s", p.Namespace, p.Name, cgroup, p.UID)
		}
	}
	// The sandbox carries labels but not the service account, nor a
	// node the API server vouches for: the pod object does.
	pod, err := w.lookup(ctx, p.Namespace, p.Name)
	if err != nil {
		return nil, fmt.Errorf("agent pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	switch {
	case string(pod.UID) != p.UID:
		return nil, fmt.Errorf("agent pod %s/%s: the API server knows uid %s, the runtime %s", p.Namespace, p.Name, pod.UID, p.UID)
	case pod.Spec.NodeName != w.opt.NodeName:
		return nil, fmt.Errorf("agent pod %s/%s: scheduled to node %q, not this node (%s)", p.Namespace, p.Name, pod.Spec.NodeName, w.opt.NodeName)
	}
	if err := w.observe(ctx, pod, cgroup, started); err != nil {
		return nil, err
	}
	st = w.pods[p.UID]
	if st == nil {
		// The runtime's labels matched; the API server's do not.
		return nil, nil
	}
	return st, nil
}

// ContainerStarting is called before a container's process is released
// (NRI CreateContainer/StartContainer). For a container of an agent pod
// it makes sure the pod cgroup is confined and that the container's
// cgroup lies below it; an error makes the runtime refuse the container.
func (w *Watcher) ContainerStarting(ctx context.Context, p SandboxInfo, c ContainerInfo) error {
	if !w.mayBeAgent(p) {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	// The sandbox runs: a container is created only in a started one.
	st, err := w.sandbox(ctx, p, true)
	if err != nil || st == nil {
		return err
	}
	if !st.Bound {
		return fmt.Errorf("agent pod %s: not confined (%s): its container would run unconfined", st.Ref(), st.Err)
	}
	if c.CgroupsPath != "" {
		cg, err := RuntimeCgroup(c.CgroupsPath)
		if err != nil {
			return fmt.Errorf("container %s of agent pod %s: %w", c.Name, st.Ref(), err)
		}
		if !under(cg, st.Cgroup) || cg == st.Cgroup {
			return fmt.Errorf("container %s of agent pod %s: cgroup %s is not below the pod's confined cgroup %s: it would run unconfined", c.Name, st.Ref(), cg, st.Cgroup)
		}
	}
	if c.Name != "" && validID(c.ID) {
		st.Containers[c.Name] = c.ID
		w.opt.Index.put(st.Pod)
	}
	return nil
}

// SandboxGone is called when the runtime removes a pod sandbox. A pod the
// API server no longer has is forgotten (its tasks end); otherwise the
// watch's deletion does that.
func (w *Watcher) SandboxGone(ctx context.Context, p SandboxInfo) {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := w.pods[p.UID]
	if st == nil {
		return
	}
	pod, err := w.lookup(ctx, p.Namespace, p.Name)
	if err == nil && string(pod.UID) == p.UID {
		return
	}
	if err != nil && !notFound(err) {
		return // unknown: the watch will tell
	}
	w.forget(st, ReasonDeleted)
}
