package pods

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/bridle-sh/bridle/daemon/node"
)

// Target is the workload a task request names by pod.
type Target struct {
	Cgroup string // below the cgroup v2 mount
	Pod    Pod
}

func refuse(format string, args ...any) error {
	return &node.RequestError{Err: fmt.Errorf(format, args...)}
}

// Resolve turns "NS/NAME" (the pod's cgroup) or "NS/NAME/CONTAINER" (one
// container's) into the cgroup a task governs. It refuses, as a
// node.RequestError, a pod that is unknown, not on this node, not an
// agent pod or not confined, and a container-scoped task in a pod whose
// containers share a PID namespace. mount is the cgroup v2 mount.
func (w *Watcher) Resolve(ctx context.Context, ref, mount string) (Target, error) {
	parts := strings.Split(ref, "/")
	if (len(parts) != 2 && len(parts) != 3) || parts[0] == "" || parts[1] == "" || len(parts) == 3 && parts[2] == "" {
		return Target{}, refuse("pod %q: want NAMESPACE/NAME or NAMESPACE/NAME/CONTAINER", ref)
	}
	ns, name := parts[0], parts[1]
	p, ok := w.opt.Index.ByName(ns, name)
	if !ok {
		return Target{}, w.notAgent(ctx, ns, name)
	}
	if !p.Bound {
		return Target{}, refuse("agent pod %s/%s is not confined yet: %s", ns, name, p.Err)
	}
	if len(parts) == 2 {
		return Target{Cgroup: p.Cgroup, Pod: p}, nil
	}
	c := parts[2]
	if p.SharesPIDs {
		return Target{}, refuse("agent pod %s/%s: its containers share a PID namespace (shareProcessNamespace or hostPID) and can ptrace each other: start the task on the pod, not on container %s", ns, name, c)
	}
	id, ok := p.Containers[c]
	if !ok {
		return Target{}, refuse("agent pod %s/%s has no running container %q", ns, name, c)
	}
	cg, err := w.opt.Naming.ContainerCgroup(p.Cgroup, id)
	if err != nil {
		return Target{}, refuse("agent pod %s/%s container %s: %v", ns, name, c, err)
	}
	if _, err := os.Stat(filepath.Join(mount, cg)); err != nil {
		return Target{}, refuse("agent pod %s/%s container %s: no cgroup %s", ns, name, c, cg)
	}
	return Target{Cgroup: cg, Pod: p}, nil
}

// notAgent says why a pod is not an agent pod of this node.
func (w *Watcher) notAgent(ctx context.Context, ns, name string) error {
	pod, err := w.lookup(ctx, ns, name)
	switch {
	case notFound(err):
		return refuse("pod %s/%s: no such pod", ns, name)
	case err != nil:
		return refuse("pod %s/%s: not an agent pod known on this node (%s), and the API server could not say more: %v", ns, name, w.opt.NodeName, err)
	case pod.Spec.NodeName != w.opt.NodeName:
		return refuse("pod %s/%s is on node %q, not this node (%s)", ns, name, pod.Spec.NodeName, w.opt.NodeName)
	case !w.opt.Selector.Matches(labels.Set(pod.Labels)):
		return refuse("pod %s/%s is not an agent pod (its labels do not match %s)", ns, name, w.opt.Selector)
	}
	return refuse("agent pod %s/%s is not known yet on this node; try again", ns, name)
}

// Status is the watch as `bridle status` shows it.
type Status struct {
	Node    string
	Synced  bool
	Watched int // agent pods
	Bound   int // of which confined
	Hook    bool
	Errors  []string // pods not confined, and why
}

// Status reports the watch.
func (w *Watcher) Status() Status {
	s := Status{Node: w.opt.NodeName, Hook: w.HookConnected()}
	select {
	case <-w.synced:
		s.Synced = true
	default:
	}
	for _, p := range w.opt.Index.List() {
		s.Watched++
		if p.Bound {
			s.Bound++
		} else if p.Err != "" {
			s.Errors = append(s.Errors, fmt.Sprintf("agent pod %s not confined: %s", p.Ref(), p.Err))
		}
	}
	return s
}
