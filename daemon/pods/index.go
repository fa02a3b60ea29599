package pods

import (
	"maps"
	"path"
	"sync"
)

// Pod is an agent pod as bridled knows it.
type Pod struct {
	Namespace, Name, UID string
	ServiceAccount       string
	// Identity is the pod's SPIFFE ID,
	// spiffe://<trust domain>/ns/<namespace>/sa/<service account>.
	Identity string
	// Labels are the pod's labels: the workload labels the policy sees
	// (input.workload.labels) for the pod and its containers.
	Labels map[string]string
	// Cgroup is the pod's cgroup below the cgroup v2 mount; "" until it
	// is known.
	Cgroup string
	// SharesPIDs: the pod's containers share a PID namespace (with each
	// other or the host) and can ptrace each other: the pod is the
	// smallest boundary.
	SharesPIDs bool
	// Containers maps container names to runtime ids.
	Containers map[string]string
	// Bound says whether the pod's cgroup is confined.
	Bound bool
	// Err is why it could not be confined, if it could not.
	Err string
}

// Link is how a task names its pod: "NS/NAME/UID".
func (p Pod) Link() string { return p.Namespace + "/" + p.Name + "/" + p.UID }

// Ref is "NS/NAME".
func (p Pod) Ref() string { return p.Namespace + "/" + p.Name }

// Index holds the agent pods of the node, for the identity source, the
// policy's workload labels and the task API. The watcher writes it.
type Index struct {
	mu       sync.RWMutex
	byUID    map[string]Pod
	byCgroup map[string]string // pod cgroup -> uid
}

// NewIndex returns an empty index.
func NewIndex() *Index {
	return &Index{byUID: map[string]Pod{}, byCgroup: map[string]string{}}
}

func (x *Index) put(p Pod) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if old, ok := x.byUID[p.UID]; ok && old.Cgroup != "" {
		delete(x.byCgroup, old.Cgroup)
	}
	p.Labels = maps.Clone(p.Labels)
	p.Containers = maps.Clone(p.Containers)
	x.byUID[p.UID] = p
	if p.Cgroup != "" {
		x.byCgroup[p.Cgroup] = p.UID
	}
}

func (x *Index) remove(uid string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if old, ok := x.byUID[uid]; ok && old.Cgroup != "" {
		delete(x.byCgroup, old.Cgroup)
	}
	delete(x.byUID, uid)
}

// ByCgroup returns the agent pod whose cgroup is cgroup or one of its
// ancestors: a container's cgroup belongs to its pod.
func (x *Index) ByCgroup(cgroup string) (Pod, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if len(x.byCgroup) == 0 || cgroup == "" {
		return Pod{}, false
	}
	for c := path.Clean(cgroup); ; c = path.Dir(c) {
		if uid, ok := x.byCgroup[c]; ok {
			return x.byUID[uid], true
		}
		if c == "/" || c == "." {
			return Pod{}, false
		}
	}
}

// ByName returns the agent pod namespace/name.
func (x *Index) ByName(namespace, name string) (Pod, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for _, p := range x.byUID {
		if p.Namespace == namespace && p.Name == name {
			return p, true
		}
	}
	return Pod{}, false
}

// ByUID returns an agent pod by uid.
func (x *Index) ByUID(uid string) (Pod, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	p, ok := x.byUID[uid]
	return p, ok
}

// List returns the agent pods.
func (x *Index) List() []Pod {
	x.mu.RLock()
	defer x.mu.RUnlock()
	out := make([]Pod, 0, len(x.byUID))
	for _, p := range x.byUID {
		out = append(out, p)
	}
	return out
}

// Labels returns the labels of the agent pod a cgroup belongs to; nil for
// a cgroup of no agent pod. It is node.Options.WorkloadLabels.
func (x *Index) Labels(cgroup string) map[string]string {
	p, ok := x.ByCgroup(cgroup)
	if !ok {
		return nil
	}
	return p.Labels
}
