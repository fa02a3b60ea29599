package daemon

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/bridle-sh/bridle/daemon/api"
	"github.com/bridle-sh/bridle/daemon/config"
	"github.com/bridle-sh/bridle/daemon/identity"
	"github.com/bridle-sh/bridle/daemon/node"
	"github.com/bridle-sh/bridle/daemon/pods"
)

// A task request may name an agent pod, or one of its containers; a
// workload named by cgroup inside an agent pod is linked to it; every
// other pod is refused with its reason.
func TestStartRequestByPod(t *testing.T) {
	mount := t.TempDir()
	podCg := "/kubepods/burstable/podu1"
	if err := os.MkdirAll(filepath.Join(mount, podCg, "abc1"), 0o755); err != nil {
		t.Fatal(err)
	}
	d := &Daemon{cfg: &config.Config{Roots: []string{"/agents"}}, cgRoot: mount, log: slog.New(slog.DiscardHandler)}
	if _, _, err := d.workloadOf(context.Background(), api.StartRequest{Pod: "team/a"}); err == nil || !strings.Contains(err.Error(), "kubernetes is not enabled") {
		t.Fatalf("pod without kubernetes: %v", err)
	}

	d.podIndex = pods.NewIndex()
	n := node.New(node.Options{Kernel: noKernel{}, NodeName: "n1", CgroupRoot: mount,
		Identities: pods.NewIdentities(identity.NewStatic(identity.StaticConfig{Node: "n1"}, mount), d.podIndex)})
	client := fake.NewClientset(
		&corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "a", UID: "u1", Labels: map[string]string{"bridle.sh/agent": "true"}},
			Spec:       corev1.PodSpec{NodeName: "n1"},
			Status: corev1.PodStatus{QOSClass: corev1.PodQOSBurstable, Phase: corev1.PodRunning,
				ContainerStatuses: []corev1.ContainerStatus{{Name: "main", ContainerID: "containerd://abc1"}}},
		},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "web", UID: "u2"}, Spec: corev1.PodSpec{NodeName: "n1"}},
	)
	sel, _ := labels.Parse("bridle.sh/agent=true")
	d.pods = pods.New(pods.Options{Node: n, Client: client, NodeName: "n1", Selector: sel,
		TrustDomain: spiffeid.RequireTrustDomainFromString("td"), Index: d.podIndex})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = d.pods.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; n.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for d.pods.Status().Bound != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("pod not bound: %+v", d.pods.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}

	for _, c := range []struct {
		req          api.StartRequest
		cg, pod, err string
	}{
		{req: api.StartRequest{Pod: "team/a"}, cg: podCg, pod: "team/a/u1"},
		{req: api.StartRequest{Pod: "team/a/main"}, cg: podCg + "/abc1", pod: "team/a/u1"},
		{req: api.StartRequest{Workload: podCg + "/abc1"}, cg: podCg + "/abc1", pod: "team/a/u1"},
		{req: api.StartRequest{Workload: podCg}, cg: podCg, pod: "team/a/u1"},
		{req: api.StartRequest{Pod: "team/web"}, err: "not an agent pod"},
		{req: api.StartRequest{Pod: "team/a/other"}, err: "no running container"},
		{req: api.StartRequest{Pod: "team/a", Workload: "/agents/w"}, err: "one of cgroup, pid and pod"},
		{req: api.StartRequest{Workload: "/kubepods/burstable/podu2"}, err: "not under a confined root"},
	} {
		cg, pod, err := d.workloadOf(context.Background(), c.req)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%+v: %v, want an error with %q", c.req, err, c.err)
			}
			continue
		}
		if err != nil || cg != c.cg || pod != c.pod {
			t.Errorf("%+v = %q, %q, %v; want %q, %q", c.req, cg, pod, err, c.cg, c.pod)
		}
	}
	// A process of an agent pod is a workload: refused by the guard.
	if reason := d.authorize(Caller{Peer: Peer{Cgroup: podCg + "/abc1"}, Auth: "peercred"}, needReader); !strings.Contains(reason, "agent pod") {
		t.Errorf("caller in an agent pod: %q", reason)
	}
}
