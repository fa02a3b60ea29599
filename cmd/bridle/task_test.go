package main

import (
	"strings"
	"testing"

	"github.com/bridle-sh/bridle/daemon/api"
)

func TestWorkloadFlags(t *testing.T) {
	for _, ok := range []api.StartRequest{{Workload: "/a/w"}, {PID: 7}, {Pod: "ns/name"}, {Pod: "ns/name/c"}} {
		if err := checkWorkloadFlags(ok); err != nil {
			t.Errorf("%+v: %v", ok, err)
		}
	}
	for _, bad := range []api.StartRequest{{}, {Workload: "/a", Pod: "ns/n"}, {PID: 1, Pod: "ns/n"}, {Pod: "ns"}, {Pod: "ns/"}, {Pod: "ns/n/c/x"}, {Pod: "/n"}} {
		if err := checkWorkloadFlags(bad); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

func TestKubernetesLine(t *testing.T) {
	got := kubernetesLine(api.KubernetesStatus{Node: "w1", Synced: true, Watched: 3, Bound: 2})
	if got != "kubernetes:    node w1, 3 agent pod(s) watched, 2 bound; NO runtime hook" {
		t.Errorf("%q", got)
	}
	if got := kubernetesLine(api.KubernetesStatus{Node: "w1", Hook: true}); !strings.Contains(got, "not listed yet") || !strings.Contains(got, "runtime hook connected") {
		t.Errorf("%q", got)
	}
}
