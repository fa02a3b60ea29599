//go:build kubernetes

package kubetest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bridle-sh/bridle/deploy/kubernetes/mkimage/imagetar"
)

const dialerImage = "bridle.sh/kubetest/dialer:dev"

// A pod on the pod network reaches an address on the node and kubectl logs
// shows what it printed; a DaemonSet gets its pod on the node; a
// hostNetwork pod reaches the API server through the kubernetes Service's
// ClusterIP (kube-proxy).
func TestCluster(t *testing.T) {
	c := Start(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	dialer := GoBuild(t, "github.com/bridle-sh/bridle/tests/kubetest/dialer")
	c.Image(t, dialerImage, []string{"/dialer"}, imagetar.File{Src: dialer, Dst: "/dialer"})

	// The node's listener greets each connection with the address it came from.
	l, err := net.Listen("tcp", NodeIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	peers := make(chan string, 10)
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			peers <- conn.RemoteAddr().String()
			fmt.Fprintf(conn, "hello %s\n", conn.RemoteAddr())
			conn.Close()
		}
	}()
	_, podNet, _ := net.ParseCIDR(PodCIDR)

	pods := c.Client().CoreV1().Pods("default")
	_, err = pods.Create(ctx, dialerPod("dial-node", l.Addr().String(), false), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitPodRunning(ctx, "default", "dial-node"); err != nil {
		t.Fatal(err)
	}
	select {
	case peer := <-peers:
		host, _, _ := net.SplitHostPort(peer)
		if !podNet.Contains(net.ParseIP(host)) {
			t.Errorf("the pod connected from %s, not from the pod network %s", peer, PodCIDR)
		}
	case <-ctx.Done():
		t.Fatal("the pod never connected to the node")
	}
	logs := waitLogs(t, c, "dial-node", "read: hello ")
	t.Logf("kubectl logs dial-node:\n%s", logs)

	// Each container's processes are in the pod's cgroup in the cgroup v2
	// hierarchy too (runc joins it on a hybrid host), where Bridle's
	// programs find them.
	out, err := c.Ctr("tasks", "ls")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, line := range strings.Split(out, "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 || fields[0] == "TASK" {
			continue
		}
		cg, err := os.ReadFile("/proc/" + fields[1] + "/cgroup")
		if err != nil {
			t.Fatalf("task %s: %v", fields[0], err)
		}
		if !strings.Contains(string(cg), "0::/kubepods/") {
			t.Errorf("task %s (pid %s) is not under /kubepods in cgroup v2:\n%s", fields[0], fields[1], cg)
		}
		checked++
	}
	if checked < 2 {
		t.Errorf("ctr tasks ls lists %d tasks, want the pod's sandbox and container:\n%s", checked, out)
	}

	// The in-cluster client's path: a hostNetwork pod to the kubernetes
	// Service, which kube-proxy sends to the API server.
	_, err = pods.Create(ctx, dialerPod("dial-service", fmt.Sprintf("%s:443", KubernetesServiceIP), true), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitPodRunning(ctx, "default", "dial-service"); err != nil {
		t.Fatal(err)
	}
	logs = waitLogs(t, c, "dial-service", "connected to "+KubernetesServiceIP+":443")
	t.Logf("kubectl logs dial-service:\n%s", logs)

	// A DaemonSet's pod lands on the node.
	labels := map[string]string{"app": "dial-ds"}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "dial-ds"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       dialerPod("", l.Addr().String(), false).Spec,
			},
		},
	}
	ds.Spec.Template.Spec.RestartPolicy = corev1.RestartPolicyAlways
	if _, err := c.Client().AppsV1().DaemonSets("default").Create(ctx, ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var dsPod string
	for dsPod == "" {
		list, err := pods.List(ctx, metav1.ListOptions{LabelSelector: "app=dial-ds"})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range list.Items {
			if p.Spec.NodeName == c.NodeName {
				dsPod = p.Name
			}
		}
		if dsPod == "" {
			select {
			case <-ctx.Done():
				t.Fatalf("the DaemonSet made no pod on %s", c.NodeName)
			case <-time.After(250 * time.Millisecond):
			}
		}
	}
	if _, err := c.WaitPodRunning(ctx, "default", dsPod); err != nil {
		t.Fatal(err)
	}
	waitLogs(t, c, dsPod, "read: hello ")
	out, err = c.Kubectl("get", "daemonset", "dial-ds", "-o", "jsonpath={.status.numberReady}")
	if err != nil || out != "1" {
		t.Errorf("kubectl get daemonset: numberReady %q (%v), want 1", out, err)
	}
}

func dialerPod(name, addr string, hostNetwork bool) *corev1.Pod {
	grace := int64(1)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			HostNetwork:                   hostNetwork,
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name:            "dialer",
				Image:           dialerImage,
				ImagePullPolicy: corev1.PullNever,
				Args:            []string{addr},
			}},
		},
	}
}

// waitLogs waits until `kubectl logs pod` has a line that starts with want,
// and returns the log.
func waitLogs(t *testing.T, c *Cluster, pod, want string) string {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	var out string
	var err error
	for time.Now().Before(deadline) {
		out, err = c.Kubectl("logs", pod)
		sc := bufio.NewScanner(strings.NewReader(out))
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), want) {
				return out
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("kubectl logs %s: no line starting %q in %q (%v)", pod, want, out, err)
	return ""
}
