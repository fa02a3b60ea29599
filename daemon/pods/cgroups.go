package pods

import (
	"fmt"
	"path"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Naming says how the kubelet and the container runtime name the cgroups
// of pods and containers on this node.
type Naming struct {
	// Systemd: the kubelet's cgroup driver is systemd (slices and
	// scopes); otherwise cgroupfs (plain directories).
	Systemd bool
	// CRIO: the runtime is CRI-O; otherwise containerd.
	CRIO bool
	// Root is the kubelet's --cgroup-root, below the cgroup v2 mount;
	// "" or "/" for the mount itself.
	Root string
}

// PodCgroup is the path below the cgroup v2 mount of a pod's cgroup: the
// kubelet's pod-level cgroup, parent of its containers'.
//
//	cgroupfs: /kubepods/pod<uid>, /kubepods/burstable/pod<uid>, /kubepods/besteffort/pod<uid>
//	systemd:  /kubepods.slice/kubepods-pod<uid>.slice,
//	          /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _ for ->.slice
func (n Naming) PodCgroup(uid string, qos corev1.PodQOSClass) (string, error) {
	if uid == "" || strings.ContainsAny(uid, "/.") {
		return "", fmt.Errorf("pod uid %q: not a uid", uid)
	}
	var tier string
	switch qos {
	case corev1.PodQOSGuaranteed:
	case corev1.PodQOSBurstable:
		tier = "burstable"
	case corev1.PodQOSBestEffort:
		tier = "besteffort"
	default:
		return "", fmt.Errorf("pod %s: QoS class %q unknown", uid, qos)
	}
	if !n.Systemd {
		return path.Join(n.root(), "kubepods", tier, "pod"+uid), nil
	}
	// The systemd driver names every level of a slice after all its
	// ancestors, with "-" as separator: a "-" in the uid becomes "_".
	parts := []string{"kubepods"}
	if tier != "" {
		parts = append(parts, tier)
	}
	parts = append(parts, "pod"+strings.ReplaceAll(uid, "-", "_"))
	p := n.root()
	for i := range parts {
		p = path.Join(p, strings.Join(parts[:i+1], "-")+".slice")
	}
	return p, nil
}

// NamesPod says whether a pod-level cgroup path is pod uid's, by the last
// element the kubelet gives it with either driver: pod<uid> (cgroupfs),
// [kubepods-[<qos>-]]pod<uid with _ for ->.slice (systemd).
func NamesPod(cgroup, uid string) bool {
	if uid == "" {
		return false
	}
	base := path.Base(cgroup)
	if base == "pod"+uid {
		return true
	}
	slice := "pod" + strings.ReplaceAll(uid, "-", "_") + ".slice"
	return base == slice || strings.HasSuffix(base, "-"+slice)
}

func (n Naming) root() string {
	if n.Root == "" {
		return "/"
	}
	return n.Root
}

// ContainerCgroup is the path of a container's cgroup below its pod's:
//
//	containerd, cgroupfs: <pod>/<id>
//	containerd, systemd:  <pod>/cri-containerd-<id>.scope
//	CRI-O:                <pod>/crio-<id>.scope (either driver)
func (n Naming) ContainerCgroup(pod, id string) (string, error) {
	if !validID(id) {
		return "", fmt.Errorf("container id %q: not a container id", id)
	}
	switch {
	case n.CRIO:
		return path.Join(pod, "crio-"+id+".scope"), nil
	case n.Systemd:
		return path.Join(pod, "cri-containerd-"+id+".scope"), nil
	default:
		return path.Join(pod, id), nil
	}
}

// validID accepts the hex ids runtimes give containers, and nothing that
// could name another directory.
func validID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// ContainerID takes the id out of a container status's ContainerID,
// "<runtime>://<id>".
func ContainerID(statusID string) (string, error) {
	_, id, ok := strings.Cut(statusID, "://")
	if !ok || !validID(id) {
		return "", fmt.Errorf("container id %q: want <runtime>://<hex id>", statusID)
	}
	return id, nil
}

// SlicePath expands a systemd slice name into its cgroup path below the
// mount: "a-b-c.slice" is /a.slice/a-b.slice/a-b-c.slice.
func SlicePath(slice string) (string, error) {
	name, ok := strings.CutSuffix(slice, ".slice")
	if !ok || name == "" || strings.ContainsAny(name, "/") || strings.HasPrefix(name, "-") || strings.HasSuffix(name, "-") || strings.Contains(name, "--") {
		return "", fmt.Errorf("slice %q: not a slice name", slice)
	}
	if name == "-" {
		return "/", nil
	}
	parts := strings.Split(name, "-")
	p := "/"
	for i := range parts {
		p = path.Join(p, strings.Join(parts[:i+1], "-")+".slice")
	}
	return p, nil
}

// RuntimeCgroup turns a cgroup as a runtime gives it (a sandbox's
// cgroup parent, a container's linux.cgroupsPath) into a path below the
// cgroup v2 mount: a path for cgroupfs, "slice" or "slice:prefix:name" for
// systemd.
func RuntimeCgroup(p string) (string, error) {
	if strings.HasPrefix(p, "/") {
		if strings.Contains(p, "..") {
			return "", fmt.Errorf("cgroup %q: must not contain ..", p)
		}
		return path.Clean(p), nil
	}
	slice, rest, scoped := strings.Cut(p, ":")
	dir, err := SlicePath(slice)
	if err != nil {
		return "", fmt.Errorf("cgroup %q: %w", p, err)
	}
	if !scoped {
		return dir, nil
	}
	prefix, name, ok := strings.Cut(rest, ":")
	if !ok || name == "" || strings.ContainsAny(prefix+name, "/:") {
		return "", fmt.Errorf("cgroup %q: want slice:prefix:name", p)
	}
	unit := name
	if !strings.HasSuffix(name, ".slice") {
		unit = name + ".scope"
		if prefix != "" {
			unit = prefix + "-" + unit
		}
	}
	return path.Join(dir, unit), nil
}
