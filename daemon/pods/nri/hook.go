// Package nri is bridled's runtime hook: an NRI plugin that the container
// runtime (containerd, CRI-O) calls synchronously at each pod sandbox and
// container start. It closes the window an informer leaves open: the pod's
// cgroup is confined, and its annotation task bound, before the runtime
// releases the first process of any of its containers.
//
// The hook only relays: what is an agent pod, and what binding it gets, is
// the pods package's business. An error returned here makes the runtime
// refuse the sandbox or the container, so a pod bridled cannot confine
// does not run unconfined.
package nri

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"

	"github.com/bridle-sh/bridle/daemon/pods"
)

// Pods is what the hook tells about sandboxes and containers
// (pods.Watcher).
type Pods interface {
	SandboxStarting(ctx context.Context, p pods.SandboxInfo) error
	ContainerStarting(ctx context.Context, p pods.SandboxInfo, c pods.ContainerInfo) error
	SandboxGone(ctx context.Context, p pods.SandboxInfo)
	SetHookConnected(ok bool)
}

// Name and index the plugin registers under. The index orders plugins;
// bridled's goes early so that other plugins see containers that are
// already confined.
const (
	PluginName  = "bridle"
	PluginIndex = "05"
)

// Hook is the plugin. Run connects it and keeps it connected.
type Hook struct {
	socket string
	pods   Pods
	log    *slog.Logger
}

// New returns a hook that talks to the runtime's NRI socket.
func New(socket string, p Pods, log *slog.Logger) *Hook {
	return &Hook{socket: socket, pods: p, log: log}
}

// Run connects to the runtime and serves its events until ctx ends. When
// the runtime goes away (a restart of containerd), it reconnects, with a
// backoff of up to 5 s; while disconnected the pods package reports the
// hook missing.
func (h *Hook) Run(ctx context.Context) {
	backoff := 250 * time.Millisecond
	for ctx.Err() == nil {
		start := time.Now()
		err := h.serve(ctx)
		h.pods.SetHookConnected(false)
		if ctx.Err() != nil {
			return
		}
		h.log.Warn("runtime hook disconnected; agent containers may run briefly before binding until it is back",
			"socket", h.socket, "err", err)
		if time.Since(start) > time.Minute {
			backoff = 250 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// serve runs one connection to the runtime.
func (h *Hook) serve(ctx context.Context) error {
	closed := make(chan struct{})
	s, err := stub.New(&plugin{h: h},
		stub.WithPluginName(PluginName),
		stub.WithPluginIdx(PluginIndex),
		stub.WithSocketPath(h.socket),
		stub.WithLogger(logger{h.log}),
		stub.WithOnClose(func() { close(closed) }),
		// A hook that does not answer in time (bridled busy, the API
		// server slow) must refuse the container like an error does: by
		// default the runtime would drop the plugin and start the
		// container, and every later one, without it. Kept connected, a
		// slow answer costs one retry of the kubelet's, not the hook. A
		// runtime whose NRI predates failure policies ignores this.
		stub.WithFailurePolicy(&api.FailurePolicy{FailRequest: true, KeepConnected: true}),
	)
	if err != nil {
		return err
	}
	if err := s.Start(ctx); err != nil {
		return fmt.Errorf("registering with the runtime: %w", err)
	}
	h.log.Info("runtime hook registered", "socket", h.socket, "runtime_nri", s.RuntimeNRIVersion())
	select {
	case <-ctx.Done():
		s.Stop()
		return ctx.Err()
	case <-closed:
		s.Stop()
		return errors.New("the runtime closed the connection")
	}
}

// plugin implements the NRI events bridled takes part in; the stub
// subscribes it to exactly those.
type plugin struct{ h *Hook }

// Synchronize is the runtime's list of what already runs when the hook
// connects (the last step of registering) (after a bridled or runtime restart): each sandbox and
// container is told as if it were starting, so agent pods are adopted.
func (p *plugin) Synchronize(ctx context.Context, sandboxes []*api.PodSandbox, containers []*api.Container) ([]*api.ContainerUpdate, error) {
	byID := make(map[string]pods.SandboxInfo, len(sandboxes))
	for _, sb := range sandboxes {
		info := sandbox(sb)
		byID[sb.GetId()] = info
		if err := p.h.pods.SandboxStarting(ctx, info); err != nil {
			p.h.log.Warn("runtime hook: a running sandbox could not be adopted", "pod", info.Namespace+"/"+info.Name, "err", err)
		}
	}
	for _, c := range containers {
		info, ok := byID[c.GetPodSandboxId()]
		if !ok {
			continue
		}
		if err := p.h.pods.ContainerStarting(ctx, info, container(c)); err != nil {
			p.h.log.Warn("runtime hook: a running container could not be adopted", "pod", info.Namespace+"/"+info.Name, "container", c.GetName(), "err", err)
		}
	}
	// The runtime calls in for every sandbox and container from now on.
	p.h.pods.SetHookConnected(true)
	return nil, nil
}

// RunPodSandbox: the sandbox exists, none of its containers does yet.
func (p *plugin) RunPodSandbox(ctx context.Context, sb *api.PodSandbox) error {
	return p.h.pods.SandboxStarting(ctx, sandbox(sb))
}

// CreateContainer: the container's process is about to be created. No
// adjustment is asked for; an error refuses the container.
func (p *plugin) CreateContainer(ctx context.Context, sb *api.PodSandbox, c *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	return nil, nil, p.h.pods.ContainerStarting(ctx, sandbox(sb), container(c))
}

// StartContainer: the container's cgroup exists and its process waits to
// be released; a task asked for this container is bound now.
func (p *plugin) StartContainer(ctx context.Context, sb *api.PodSandbox, c *api.Container) error {
	return p.h.pods.ContainerStarting(ctx, sandbox(sb), container(c))
}

// RemovePodSandbox: the pod's sandbox is gone for good.
func (p *plugin) RemovePodSandbox(ctx context.Context, sb *api.PodSandbox) error {
	p.h.pods.SandboxGone(ctx, sandbox(sb))
	return nil
}

func sandbox(sb *api.PodSandbox) pods.SandboxInfo {
	return pods.SandboxInfo{
		Namespace: sb.GetNamespace(), Name: sb.GetName(), UID: sb.GetUid(),
		Labels: sb.GetLabels(), Annotations: sb.GetAnnotations(),
		CgroupParent: sb.GetLinux().GetCgroupParent(),
	}
}

func container(c *api.Container) pods.ContainerInfo {
	return pods.ContainerInfo{ID: c.GetId(), Name: c.GetName(), CgroupsPath: c.GetLinux().GetCgroupsPath()}
}

// logger hands the NRI library's messages to bridled's log.
type logger struct{ l *slog.Logger }

func (l logger) Debugf(_ context.Context, f string, a ...any) {
	l.l.Debug("nri: " + fmt.Sprintf(f, a...))
}
func (l logger) Infof(_ context.Context, f string, a ...any) {
	l.l.Debug("nri: " + fmt.Sprintf(f, a...))
}
func (l logger) Warnf(_ context.Context, f string, a ...any) {
	l.l.Warn("nri: " + fmt.Sprintf(f, a...))
}
func (l logger) Errorf(_ context.Context, f string, a ...any) {
	l.l.Error("nri: " + fmt.Sprintf(f, a...))
}
