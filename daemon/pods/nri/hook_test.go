package nri

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/adaptation"

	"github.com/bridle-sh/bridle/daemon/pods"
)

// recorder is a Pods that notes what it is told and refuses one pod.
type recorder struct {
	mu        sync.Mutex
	calls     []string
	connected chan bool
	refuse    string // pod name whose sandbox and containers are refused
}

func (r *recorder) note(s string) { r.mu.Lock(); r.calls = append(r.calls, s); r.mu.Unlock() }

func (r *recorder) SandboxStarting(_ context.Context, p pods.SandboxInfo) error {
	r.note("sandbox " + p.Namespace + "/" + p.Name + " " + p.CgroupParent)
	if p.Name == r.refuse {
		return errors.New("not confined")
	}
	return nil
}

func (r *recorder) ContainerStarting(_ context.Context, p pods.SandboxInfo, c pods.ContainerInfo) error {
	r.note("container " + p.Name + "/" + c.Name + " " + c.CgroupsPath)
	if p.Name == r.refuse {
		return errors.New("not confined")
	}
	return nil
}

func (r *recorder) SandboxGone(_ context.Context, p pods.SandboxInfo) { r.note("gone " + p.Name) }

func (r *recorder) SetHookConnected(ok bool) { r.connected <- ok }

func (r *recorder) saw(want string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.calls {
		if c == want {
			return true
		}
	}
	return false
}

// TestHookRelaysRuntimeEvents runs the runtime side of NRI (the adaptation
// library containerd and CRI-O embed) on a socket of the test's, connects
// the hook to it, and checks that every event reaches the pods package
// synchronously and that a refusal from it fails the runtime's call.
func TestHookRelaysRuntimeEvents(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "nri.sock")
	running := &adaptation.PodSandbox{Id: "sb0", Name: "old", Namespace: "agents", Uid: "u0",
		Linux: &adaptation.LinuxPodSandbox{CgroupParent: "/kubepods/besteffort/podu0"}}
	runningC := &adaptation.Container{Id: "c0", PodSandboxId: "sb0", Name: "main",
		Linux: &adaptation.LinuxContainer{CgroupsPath: "/kubepods/besteffort/podu0/c0"}}
	sync := func(ctx context.Context, cb adaptation.SyncCB) error {
		_, err := cb(ctx, []*adaptation.PodSandbox{running}, []*adaptation.Container{runningC})
		return err
	}
	update := func(context.Context, []*adaptation.ContainerUpdate) ([]*adaptation.ContainerUpdate, error) {
		return nil, nil
	}
	rt, err := adaptation.New("test-runtime", "v0", sync, update,
		adaptation.WithSocketPath(socket), adaptation.WithPluginPath(filepath.Join(dir, "plugins")),
		adaptation.WithPluginConfigPath(filepath.Join(dir, "conf")))
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(); err != nil {
		t.Fatal(err)
	}
	defer rt.Stop()

	rec := &recorder{connected: make(chan bool, 8), refuse: "evil"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		New(socket, rec, slog.New(slog.NewTextHandler(io.Discard, nil))).Run(ctx)
		close(done)
	}()
	defer func() { cancel(); <-done }()
	waitConnected(t, rec, true)
	for _, want := range []string{"sandbox agents/old /kubepods/besteffort/podu0", "container old/main /kubepods/besteffort/podu0/c0"} {
		if !rec.saw(want) {
			t.Errorf("Synchronize: the pods package was not told %q; calls: %q", want, rec.calls)
		}
	}

	// The runtime adds the plugin to those it calls once Synchronize has
	// returned: wait until a sandbox start reaches the hook.
	bg := context.Background()
	probe := &adaptation.PodSandbox{Id: "sbp", Name: "probe", Namespace: "agents"}
	for deadline := time.Now().Add(10 * time.Second); !rec.saw("sandbox agents/probe "); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the runtime never called the hook after it registered")
		}
		if err := rt.RunPodSandbox(bg, &adaptation.RunPodSandboxRequest{Pod: probe}); err != nil {
			t.Fatal(err)
		}
	}

	pod := &adaptation.PodSandbox{Id: "sb1", Name: "agent", Namespace: "agents", Uid: "u1",
		Linux: &adaptation.LinuxPodSandbox{CgroupParent: "/kubepods/besteffort/podu1"}}
	ctr := &adaptation.Container{Id: "c1", PodSandboxId: "sb1", Name: "main",
		Linux: &adaptation.LinuxContainer{CgroupsPath: "/kubepods/besteffort/podu1/c1"}}
	if err := rt.RunPodSandbox(bg, &adaptation.RunPodSandboxRequest{Pod: pod}); err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	if !rec.saw("sandbox agents/agent /kubepods/besteffort/podu1") {
		t.Errorf("RunPodSandbox returned before the pods package was told; calls: %q", rec.calls)
	}
	if _, err := rt.CreateContainer(bg, &adaptation.CreateContainerRequest{Pod: pod, Container: ctr}); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if err := rt.StartContainer(bg, &adaptation.StartContainerRequest{Pod: pod, Container: ctr}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	if err := rt.RemovePodSandbox(bg, &adaptation.RemovePodSandboxRequest{Pod: pod}); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	if !rec.saw("gone agent") {
		t.Errorf("RemovePodSandbox did not reach the pods package; calls: %q", rec.calls)
	}

	// A pod the pods package cannot confine is refused by the runtime.
	evil := &adaptation.PodSandbox{Id: "sb2", Name: "evil", Namespace: "agents", Uid: "u2"}
	if err := rt.RunPodSandbox(bg, &adaptation.RunPodSandboxRequest{Pod: evil}); err == nil {
		t.Error("RunPodSandbox of a pod that could not be confined succeeded")
	}
	evilC := &adaptation.Container{Id: "c2", PodSandboxId: "sb2", Name: "main"}
	if _, err := rt.CreateContainer(bg, &adaptation.CreateContainerRequest{Pod: evil, Container: evilC}); err == nil {
		t.Error("CreateContainer of a container that could not be confined succeeded")
	}
	if err := rt.StartContainer(bg, &adaptation.StartContainerRequest{Pod: evil, Container: evilC}); err == nil {
		t.Error("StartContainer of a container that could not be confined succeeded")
	}
}

func waitConnected(t *testing.T, rec *recorder, want bool) {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		select {
		case ok := <-rec.connected:
			if ok == want {
				return
			}
		case <-deadline:
			t.Fatalf("the hook never reported connected=%v", want)
		}
	}
}

// slow is a Pods that takes longer than the runtime waits for a plugin.
type slow struct {
	recorder
	delay time.Duration
}

func (s *slow) ContainerStarting(ctx context.Context, p pods.SandboxInfo, c pods.ContainerInfo) error {
	if c.Name == "slow" {
		time.Sleep(s.delay)
	}
	return s.recorder.ContainerStarting(ctx, p, c)
}

// TestHookTimeoutRefusesContainer: a hook that does not answer in time
// (bridled busy, the API server slow) must not let the container start
// unconfined, nor be dropped by the runtime for the next ones.
func TestHookTimeoutRefusesContainer(t *testing.T) {
	adaptation.SetPluginRequestTimeout(200 * time.Millisecond)
	defer adaptation.SetPluginRequestTimeout(adaptation.DefaultPluginRequestTimeout)
	dir := t.TempDir()
	socket := filepath.Join(dir, "nri.sock")
	sync := func(ctx context.Context, cb adaptation.SyncCB) error { _, err := cb(ctx, nil, nil); return err }
	update := func(context.Context, []*adaptation.ContainerUpdate) ([]*adaptation.ContainerUpdate, error) {
		return nil, nil
	}
	rt, err := adaptation.New("test-runtime", "v0", sync, update,
		adaptation.WithSocketPath(socket), adaptation.WithPluginPath(filepath.Join(dir, "plugins")),
		adaptation.WithPluginConfigPath(filepath.Join(dir, "conf")))
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(); err != nil {
		t.Fatal(err)
	}
	defer rt.Stop()
	rec := &slow{recorder: recorder{connected: make(chan bool, 8)}, delay: time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		New(socket, rec, slog.New(slog.NewTextHandler(io.Discard, nil))).Run(ctx)
		close(done)
	}()
	defer func() { cancel(); <-done }()
	waitConnected(t, &rec.recorder, true)
	bg := context.Background()
	pod := &adaptation.PodSandbox{Id: "sb1", Name: "agent", Namespace: "agents", Uid: "u1"}
	probe := &adaptation.Container{Id: "c0", PodSandboxId: "sb1", Name: "probe"}
	for deadline := time.Now().Add(10 * time.Second); !rec.saw("container agent/probe "); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the runtime never called the hook after it registered")
		}
		if _, err := rt.CreateContainer(bg, &adaptation.CreateContainerRequest{Pod: pod, Container: probe}); err != nil {
			t.Fatal(err)
		}
	}
	c := &adaptation.Container{Id: "c1", PodSandboxId: "sb1", Name: "slow"}
	if _, err := rt.CreateContainer(bg, &adaptation.CreateContainerRequest{Pod: pod, Container: c}); err == nil {
		t.Fatal("CreateContainer went on without the hook when the hook timed out: the container would run unconfined")
	}
	// Still connected: the next container is asked about.
	next := &adaptation.Container{Id: "c2", PodSandboxId: "sb1", Name: "next"}
	if _, err := rt.CreateContainer(bg, &adaptation.CreateContainerRequest{Pod: pod, Container: next}); err != nil {
		t.Fatal(err)
	}
	if !rec.saw("container agent/next ") {
		t.Fatal("the runtime dropped the hook after one timeout: later containers start without it")
	}
}
