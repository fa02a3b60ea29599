// Package kubernetes holds bridled's Kubernetes deployment: the Helm chart
// (chart/bridle) and the plain manifests rendered from it (bridle.yaml).
// Its test reads the rendered manifests and checks what the DaemonSet may
// do; no cluster is needed.
package kubernetes

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/bridle-sh/bridle/daemon/config"
)

const namespace = "bridle-system"

// manifests are the objects of bridle.yaml, decoded strictly: a field the
// API type does not have (a typo, a field at the wrong level) fails.
type manifests struct {
	namespaces   []corev1.Namespace
	accounts     []corev1.ServiceAccount
	roles        []rbacv1.ClusterRole
	bindings     []rbacv1.ClusterRoleBinding
	configMaps   map[string]corev1.ConfigMap
	services     []corev1.Service
	daemonSets   []appsv1.DaemonSet
	namespaced   []string // kind/name of objects that live in a namespace
	namespacesOf map[string]string
}

func load(t *testing.T) *manifests {
	t.Helper()
	b, err := os.ReadFile("bridle.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m := &manifests{configMaps: map[string]corev1.ConfigMap{}, namespacesOf: map[string]string{}}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for i := 0; ; i++ {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("bridle.yaml document %d: %v", i, err)
		}
		if doc == nil {
			continue // an empty document (a template that renders nothing)
		}
		js, err := sigsyaml.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		kind, _ := doc["kind"].(string)
		var meta struct {
			Metadata struct{ Name, Namespace string }
		}
		if err := sigsyaml.Unmarshal(js, &meta); err != nil {
			t.Fatal(err)
		}
		into := func(v any) {
			t.Helper()
			if err := sigsyaml.UnmarshalStrict(js, v); err != nil {
				t.Fatalf("%s %s: %v", kind, meta.Metadata.Name, err)
			}
		}
		switch kind {
		case "Namespace":
			var o corev1.Namespace
			into(&o)
			m.namespaces = append(m.namespaces, o)
			continue
		case "ClusterRole":
			var o rbacv1.ClusterRole
			into(&o)
			m.roles = append(m.roles, o)
			continue
		case "ClusterRoleBinding":
			var o rbacv1.ClusterRoleBinding
			into(&o)
			m.bindings = append(m.bindings, o)
			continue
		case "ServiceAccount":
			var o corev1.ServiceAccount
			into(&o)
			m.accounts = append(m.accounts, o)
		case "ConfigMap":
			var o corev1.ConfigMap
			into(&o)
			m.configMaps[o.Name] = o
		case "Service":
			var o corev1.Service
			into(&o)
			m.services = append(m.services, o)
		case "DaemonSet":
			var o appsv1.DaemonSet
			into(&o)
			m.daemonSets = append(m.daemonSets, o)
		default:
			// Roles, RoleBindings and anything else would be grants or
			// objects this test knows nothing about.
			t.Fatalf("bridle.yaml has a %s (%s): the test does not know what it grants", kind, meta.Metadata.Name)
		}
		id := kind + "/" + meta.Metadata.Name
		m.namespaced = append(m.namespaced, id)
		m.namespacesOf[id] = meta.Metadata.Namespace
	}
	return m
}

func (m *manifests) daemonSet(t *testing.T) *appsv1.DaemonSet {
	t.Helper()
	if len(m.daemonSets) != 1 {
		t.Fatalf("want one DaemonSet, have %d", len(m.daemonSets))
	}
	ds := &m.daemonSets[0]
	if len(ds.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("want one container in the DaemonSet, have %d", len(ds.Spec.Template.Spec.Containers))
	}
	return ds
}

func TestNamespace(t *testing.T) {
	m := load(t)
	if len(m.namespaces) != 1 || m.namespaces[0].Name != namespace {
		t.Fatalf("want one Namespace %s, have %v", namespace, m.namespaces)
	}
	if got := m.namespaces[0].Labels["pod-security.kubernetes.io/enforce"]; got != "privileged" {
		t.Errorf("namespace's pod-security enforce level %q, want privileged (hostPID, hostPath, capabilities)", got)
	}
	for _, id := range m.namespaced {
		if ns := m.namespacesOf[id]; ns != namespace {
			t.Errorf("%s in namespace %q, want %s", id, ns, namespace)
		}
	}
}

// TestRBAC: bridled may read pods and nothing else, cluster-wide or not.
func TestRBAC(t *testing.T) {
	m := load(t)
	if len(m.roles) != 1 {
		t.Fatalf("want one ClusterRole, have %d", len(m.roles))
	}
	role := m.roles[0]
	want := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}}}
	if len(role.Rules) != 1 || !slices.Equal(role.Rules[0].APIGroups, want[0].APIGroups) ||
		!slices.Equal(role.Rules[0].Resources, want[0].Resources) || !slices.Equal(role.Rules[0].Verbs, want[0].Verbs) ||
		len(role.Rules[0].ResourceNames) != 0 || len(role.Rules[0].NonResourceURLs) != 0 || role.AggregationRule != nil {
		t.Errorf("ClusterRole %s rules %+v, want exactly %+v", role.Name, role.Rules, want)
	}
	if len(m.bindings) != 1 {
		t.Fatalf("want one ClusterRoleBinding, have %d", len(m.bindings))
	}
	b := m.bindings[0]
	if b.RoleRef.Kind != "ClusterRole" || b.RoleRef.Name != role.Name {
		t.Errorf("binding %s refers to %s %s, want ClusterRole %s", b.Name, b.RoleRef.Kind, b.RoleRef.Name, role.Name)
	}
	ds := m.daemonSet(t)
	sa := ds.Spec.Template.Spec.ServiceAccountName
	wantSubject := rbacv1.Subject{Kind: "ServiceAccount", Name: sa, Namespace: namespace}
	if len(b.Subjects) != 1 || b.Subjects[0] != wantSubject {
		t.Errorf("binding %s subjects %+v, want only %+v", b.Name, b.Subjects, wantSubject)
	}
	if len(m.accounts) != 1 || m.accounts[0].Name != sa {
		t.Errorf("service accounts %v, want the DaemonSet's %q", m.accounts, sa)
	}
}

func TestDaemonSetPrivileges(t *testing.T) {
	ds := load(t).daemonSet(t)
	pod := ds.Spec.Template.Spec
	c := pod.Containers[0]
	if !pod.HostPID || !pod.HostNetwork {
		t.Errorf("hostPID %v hostNetwork %v: bridled needs both", pod.HostPID, pod.HostNetwork)
	}
	if pod.HostIPC {
		t.Error("hostIPC set: bridled does not use it")
	}
	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("no securityContext")
	}
	if sc.Privileged == nil || *sc.Privileged {
		t.Error("the container must say privileged: false")
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Error("runAsUser must be 0 (cgroup, bpffs and /proc files of other users)")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem must be true")
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities must drop ALL, have %+v", sc.Capabilities)
	} else {
		add := slices.Clone(sc.Capabilities.Add)
		slices.Sort(add)
		want := []corev1.Capability{"DAC_OVERRIDE", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"}
		if !slices.Equal(add, want) {
			t.Errorf("capabilities added %v, want exactly %v", add, want)
		}
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("seccomp profile %+v, want RuntimeDefault", sc.SeccompProfile)
	}
	if pod.SecurityContext != nil && pod.SecurityContext.SeccompProfile != nil {
		t.Errorf("a pod-level seccomp profile %+v would apply to everything; keep it on the container", pod.SecurityContext.SeccompProfile)
	}
	for _, m := range c.VolumeMounts {
		if m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional {
			t.Errorf("mount %s is Bidirectional: only privileged containers may", m.MountPath)
		}
	}
	if pod.AutomountServiceAccountToken != nil && !*pod.AutomountServiceAccountToken {
		t.Error("the service account token is not mounted: the pod informer needs it")
	}
}

// TestDaemonSetMounts: the host paths bridled reads and writes, each mounted
// where bridled.yaml says it is.
func TestDaemonSetMounts(t *testing.T) {
	m := load(t)
	ds := m.daemonSet(t)
	pod := ds.Spec.Template.Spec
	c := pod.Containers[0]
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	type hostMount struct {
		path     string
		typ      corev1.HostPathType
		readOnly bool
		prop     corev1.MountPropagationMode
	}
	want := map[string]hostMount{ // mount path -> host path
		"/sys/fs/bpf":     {"/sys/fs/bpf", corev1.HostPathDirectory, false, corev1.MountPropagationHostToContainer},
		"/sys/fs/cgroup":  {"/sys/fs/cgroup", corev1.HostPathDirectory, false, corev1.MountPropagationHostToContainer},
		"/run/bridle":     {"/run/bridle", corev1.HostPathDirectoryOrCreate, false, ""},
		"/var/lib/bridle": {"/var/lib/bridle", corev1.HostPathDirectoryOrCreate, false, ""},
		"/var/run/nri":    {"/var/run/nri", corev1.HostPathDirectoryOrCreate, false, ""},
		// execPaths: where exec rules' programs are found, read-only.
		"/usr": {"/usr", corev1.HostPathDirectory, true, ""},
		"/opt": {"/opt", corev1.HostPathDirectory, true, ""},
	}
	seen := map[string]bool{}
	for _, vm := range c.VolumeMounts {
		v, ok := volumes[vm.Name]
		if !ok {
			t.Errorf("mount %s names volume %q, which the pod does not have", vm.MountPath, vm.Name)
			continue
		}
		if v.HostPath == nil {
			continue
		}
		w, ok := want[vm.MountPath]
		if !ok {
			t.Errorf("host path %s mounted at %s: not one bridled uses", v.HostPath.Path, vm.MountPath)
			continue
		}
		seen[vm.MountPath] = true
		prop := corev1.MountPropagationMode("")
		if vm.MountPropagation != nil {
			prop = *vm.MountPropagation
		}
		if v.HostPath.Path != w.path || v.HostPath.Type == nil || *v.HostPath.Type != w.typ || vm.ReadOnly != w.readOnly || prop != w.prop {
			typ := corev1.HostPathType("")
			if v.HostPath.Type != nil {
				typ = *v.HostPath.Type
			}
			t.Errorf("%s: host %s type %q readOnly %v propagation %q, want host %s type %q readOnly %v propagation %q",
				vm.MountPath, v.HostPath.Path, typ, vm.ReadOnly, prop, w.path, w.typ, w.readOnly, w.prop)
		}
	}
	for p := range want {
		if !seen[p] {
			t.Errorf("host path %s not mounted", p)
		}
	}

	// The paths in bridled.yaml are below those mounts, and the file is one
	// bridled reads: the configuration parser itself must accept it.
	cm, ok := m.configMaps["bridled-config"]
	if !ok {
		t.Fatal("no ConfigMap bridled-config")
	}
	raw := cm.Data["bridled.yaml"]
	var cfg struct {
		Socket        string `yaml:"socket"`
		StateDir      string `yaml:"state_dir"`
		PinDir        string `yaml:"pin_dir"`
		PolicyDir     string `yaml:"policy_dir"`
		MetricsListen string `yaml:"metrics_listen"`
		Kubernetes    struct {
			Enabled   bool   `yaml:"enabled"`
			NRISocket string `yaml:"nri_socket"`
		} `yaml:"kubernetes"`
	}
	if err := yaml.Unmarshal([]byte(raw), &cfg); err != nil {
		t.Fatalf("bridled.yaml: %v", err)
	}
	under := func(field, p, dir string) {
		t.Helper()
		if p != dir && !strings.HasPrefix(p, dir+"/") {
			t.Errorf("bridled.yaml %s %q is not below the mount %s", field, p, dir)
		}
	}
	under("socket", cfg.Socket, "/run/bridle")
	under("state_dir", cfg.StateDir, "/var/lib/bridle")
	under("pin_dir", cfg.PinDir, "/sys/fs/bpf")
	under("policy_dir", cfg.PolicyDir, "/etc/bridle")
	under("kubernetes.nri_socket", cfg.Kubernetes.NRISocket, "/var/run/nri")
	if !cfg.Kubernetes.Enabled {
		t.Error("bridled.yaml: kubernetes.enabled is not true")
	}

	// The command reads the file where the config volume puts it.
	if !slices.Equal(c.Command[:3], []string{"/bridled", "--config", "/etc/bridle/bridled.yaml"}) {
		t.Errorf("command %v, want /bridled --config /etc/bridle/bridled.yaml", c.Command)
	}
	files := projected(t, pod, "/etc/bridle", c)
	if files["bridled.yaml"] != "bridled-config/bridled.yaml" {
		t.Errorf("/etc/bridle/bridled.yaml comes from %q, want ConfigMap bridled-config", files["bridled.yaml"])
	}
	policies := m.configMaps["bridled-policies"]
	if len(policies.Data) == 0 {
		t.Error("ConfigMap bridled-policies holds no policy")
	}
	for name := range policies.Data {
		p := filepath.Join(strings.TrimPrefix(cfg.PolicyDir, "/etc/bridle/"), name)
		if files[p] != "bridled-policies/"+name {
			t.Errorf("policy %s is not projected to %s", name, filepath.Join(cfg.PolicyDir, name))
		}
	}
}

// projected maps each file of the projected volume mounted at dir to the
// ConfigMap and key it comes from ("name/key").
func projected(t *testing.T, pod corev1.PodSpec, dir string, c corev1.Container) map[string]string {
	t.Helper()
	var name string
	for _, vm := range c.VolumeMounts {
		if vm.MountPath == dir {
			name = vm.Name
			if !vm.ReadOnly {
				t.Errorf("%s is mounted writable", dir)
			}
		}
	}
	files := map[string]string{}
	for _, v := range pod.Volumes {
		if v.Name != name || v.Projected == nil {
			continue
		}
		for _, s := range v.Projected.Sources {
			if s.ConfigMap == nil {
				continue
			}
			for _, it := range s.ConfigMap.Items {
				files[it.Path] = s.ConfigMap.Name + "/" + it.Key
			}
		}
	}
	if len(files) == 0 {
		t.Fatalf("no projected ConfigMap volume mounted at %s", dir)
	}
	return files
}

// TestDaemonSetRollout: a node agent on every node, one node at a time.
func TestDaemonSetRollout(t *testing.T) {
	ds := load(t).daemonSet(t)
	pod := ds.Spec.Template.Spec
	c := pod.Containers[0]
	u := ds.Spec.UpdateStrategy
	if u.Type != appsv1.RollingUpdateDaemonSetStrategyType || u.RollingUpdate == nil ||
		u.RollingUpdate.MaxUnavailable == nil || u.RollingUpdate.MaxUnavailable.String() != "1" {
		t.Errorf("update strategy %+v, want RollingUpdate with maxUnavailable 1", u)
	}
	tolerateAll := slices.ContainsFunc(pod.Tolerations, func(t corev1.Toleration) bool {
		return t.Operator == corev1.TolerationOpExists && t.Key == "" && t.Effect == ""
	})
	if !tolerateAll {
		t.Errorf("tolerations %+v: want one that tolerates every taint", pod.Tolerations)
	}
	if pod.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q, want system-node-critical", pod.PriorityClassName)
	}
	if pod.TerminationGracePeriodSeconds == nil {
		t.Error("no terminationGracePeriodSeconds")
	}
	if !strings.HasPrefix(c.Image, "bridle.sh/bridle:") || c.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("image %s pull %s, want bridle.sh/bridle:<tag> IfNotPresent (the image is imported, not pulled)", c.Image, c.ImagePullPolicy)
	}
	var nodeName bool
	for _, e := range c.Env {
		if e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName" {
			nodeName = true
		}
	}
	if !nodeName {
		t.Error("NODE_NAME does not come from spec.nodeName")
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	for what, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s probe: want an HTTP GET of /metrics", what)
			continue
		}
		if _, ok := ports[p.HTTPGet.Port.String()]; !ok || p.HTTPGet.Path != "/metrics" {
			t.Errorf("%s probe: GET %s on port %s, want /metrics on a named container port", what, p.HTTPGet.Path, p.HTTPGet.Port.String())
		}
	}
	m := load(t)
	if len(m.services) != 1 {
		t.Fatalf("want one Service (metrics), have %d", len(m.services))
	}
	svc := m.services[0]
	for k, v := range svc.Spec.Selector {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("Service %s selects %s=%s, which the DaemonSet's pods do not carry", svc.Name, k, v)
		}
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].TargetPort.String() != "metrics" || svc.Spec.Ports[0].Port != ports["metrics"] {
		t.Errorf("Service %s ports %+v, want the metrics port %d", svc.Name, svc.Spec.Ports, ports["metrics"])
	}
	var cfg struct {
		MetricsListen string `yaml:"metrics_listen"`
	}
	if err := yaml.Unmarshal([]byte(m.configMaps["bridled-config"].Data["bridled.yaml"]), &cfg); err != nil {
		t.Fatal(err)
	}
	// The kubelet probes, and the Service reaches, the node's addresses.
	if want := ":" + strconv.Itoa(int(ports["metrics"])); cfg.MetricsListen != want {
		t.Errorf("metrics_listen %q, want %q (the container port, every address)", cfg.MetricsListen, want)
	}
}

// TestConfigLoads: bridled's own parser accepts the rendered bridled.yaml
// (unknown fields and bad values are refused there).
func TestConfigLoads(t *testing.T) {
	m := load(t)
	raw := m.configMaps["bridled-config"].Data["bridled.yaml"]
	if _, err := config.Parse([]byte(raw), "bridled.yaml"); err != nil {
		t.Errorf("bridled refuses the rendered bridled.yaml: %v", err)
	}
}
