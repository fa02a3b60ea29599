package pods

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

const uid = "0c3a9b2e-1f2d-4c5b-8a7e-6d5c4b3a2f10"
const cid = "4f8e2a1b9c7d"

func TestNaming(t *testing.T) {
	for _, c := range []struct {
		name   string
		n      Naming
		qos    corev1.PodQOSClass
		pod    string
		contnr string
	}{
		{"containerd cgroupfs burstable", Naming{}, corev1.PodQOSBurstable,
			"/kubepods/burstable/pod" + uid, "/kubepods/burstable/pod" + uid + "/" + cid},
		{"containerd cgroupfs guaranteed", Naming{}, corev1.PodQOSGuaranteed,
			"/kubepods/pod" + uid, "/kubepods/pod" + uid + "/" + cid},
		{"containerd cgroupfs besteffort, cgroup root", Naming{Root: "/test.slice"}, corev1.PodQOSBestEffort,
			"/test.slice/kubepods/besteffort/pod" + uid, "/test.slice/kubepods/besteffort/pod" + uid + "/" + cid},
		{"containerd systemd burstable", Naming{Systemd: true}, corev1.PodQOSBurstable,
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0c3a9b2e_1f2d_4c5b_8a7e_6d5c4b3a2f10.slice",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0c3a9b2e_1f2d_4c5b_8a7e_6d5c4b3a2f10.slice/cri-containerd-" + cid + ".scope"},
		{"containerd systemd guaranteed", Naming{Systemd: true}, corev1.PodQOSGuaranteed,
			"/kubepods.slice/kubepods-pod0c3a9b2e_1f2d_4c5b_8a7e_6d5c4b3a2f10.slice",
			"/kubepods.slice/kubepods-pod0c3a9b2e_1f2d_4c5b_8a7e_6d5c4b3a2f10.slice/cri-containerd-" + cid + ".scope"},
		{"cri-o cgroupfs", Naming{CRIO: true}, corev1.PodQOSBestEffort,
			"/kubepods/besteffort/pod" + uid, "/kubepods/besteffort/pod" + uid + "/crio-" + cid + ".scope"},
		{"cri-o systemd", Naming{CRIO: true, Systemd: true}, corev1.PodQOSBestEffort,
			"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0c3a9b2e_1f2d_4c5b_8a7e_6d5c4b3a2f10.slice",
			"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0c3a9b2e_1f2d_4c5b_8a7e_6d5c4b3a2f10.slice/crio-" + cid + ".scope"},
	} {
		pod, err := c.n.PodCgroup(uid, c.qos)
		if err != nil || pod != c.pod {
			t.Errorf("%s: PodCgroup = %q, %v; want %q", c.name, pod, err, c.pod)
			continue
		}
		ct, err := c.n.ContainerCgroup(pod, cid)
		if err != nil || ct != c.contnr {
			t.Errorf("%s: ContainerCgroup = %q, %v; want %q", c.name, ct, err, c.contnr)
		}
	}
}

func TestNamingRefuses(t *testing.T) {
	n := Naming{}
	for _, bad := range []string{"", "../x", "a/b"} {
		if _, err := n.PodCgroup(bad, corev1.PodQOSBurstable); err == nil {
			t.Errorf("pod uid %q accepted", bad)
		}
	}
	if _, err := n.PodCgroup(uid, ""); err == nil {
		t.Error("a pod without QoS class named")
	}
	for _, bad := range []string{"", "..", "abc/def", "xyz"} {
		if _, err := n.ContainerCgroup("/kubepods/pod"+uid, bad); err == nil {
			t.Errorf("container id %q accepted", bad)
		}
	}
}

func TestContainerID(t *testing.T) {
	for in, want := range map[string]string{"containerd://" + cid: cid, "cri-o://" + cid: cid} {
		if got, err := ContainerID(in); err != nil || got != want {
			t.Errorf("ContainerID(%q) = %q, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", cid, "containerd://", "containerd://../x"} {
		if _, err := ContainerID(bad); err == nil {
			t.Errorf("ContainerID(%q) accepted", bad)
		}
	}
}

func TestRuntimeCgroup(t *testing.T) {
	for in, want := range map[string]string{
		"/kubepods/burstable/pod" + uid + "/" + cid:               "/kubepods/burstable/pod" + uid + "/" + cid,
		"kubepods-burstable-podab_cd.slice":                       "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podab_cd.slice",
		"kubepods-burstable-podab_cd.slice:cri-containerd:" + cid: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podab_cd.slice/cri-containerd-" + cid + ".scope",
		"kubepods-podab.slice:crio:" + cid:                        "/kubepods.slice/kubepods-podab.slice/crio-" + cid + ".scope",
	} {
		if got, err := RuntimeCgroup(in); err != nil || got != want {
			t.Errorf("RuntimeCgroup(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"/a/../b", "kubepods", "a--b.slice", "x.slice:p", "x.slice:p:a/b"} {
		if _, err := RuntimeCgroup(bad); err == nil {
			t.Errorf("RuntimeCgroup(%q) accepted", bad)
		}
	}
}
