package bench

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/daemon/node"
	"github.com/bridle-sh/bridle/daemon/store"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy/engine"
)

// nodePolicy writes a policy whose envelope, for a task labelled size=N, is
// lifecycleEnvelope(N): the rules come from data.json, as a policy that
// keeps its destinations in data would have them.
func nodePolicy(b *testing.B) string {
	b.Helper()
	dir := b.TempDir()
	sizes := map[string][]map[string]any{}
	for _, n := range lifecycleSizes {
		var rules []map[string]any
		for _, r := range lifecycleEnvelope(n).Egress {
			ports := make([]any, 0, len(r.Ports))
			for _, pr := range r.Ports {
				ports = append(ports, pr.String())
			}
			rules = append(rules, map[string]any{"protocol": r.Protocol.String(), "cidr": r.Prefix.String(), "ports": ports})
		}
		sizes[strconv.Itoa(n)] = rules
	}
	data, err := json.Marshal(map[string]any{"bench": map[string]any{"sizes": sizes}})
	if err != nil {
		b.Fatal(err)
	}
	rego := `package bridle

envelope := {
	"egress": data.bench.sizes[input.task.labels.size],
	"exec": [{"path": "/usr/bin/true"}, {"path": "/usr/bin/sh"}, {"path": "/usr/bin/env"}],
	"ttl": "1h",
	# The workload is this benchmark, running as root: it owns root's
	# files, so the exec rules are writable by it and must be accepted.
	"allow_writable_exec": true,
}
`
	for name, body := range map[string][]byte{"bench.rego": []byte(rego), "data.json": data} {
		if err := os.WriteFile(filepath.Join(dir, name), body, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	return dir
}

// BenchmarkTaskStartDaemon: a task start as bridled does it, from the
// request to the workload's first allowed connect: the policy is evaluated
// (OPA builds the N-rule envelope from data), the envelope compiled, the
// rules written and the workload bound, the task store written and synced
// (node.Node.Start), then connect() from the workload until it is allowed.
// Only the HTTP call around it is left out. Ending the task between
// iterations is not timed.
func BenchmarkTaskStartDaemon(b *testing.B) {
	e := benchEnforcer(b)
	tree := newCgroupTree(b)
	req := taskWorkload(b, e, tree)
	eng := engine.NewEngine()
	ctx := context.Background()
	if err := eng.LoadDir(ctx, nodePolicy(b)); err != nil {
		b.Fatal(err)
	}
	st, err := store.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	root, err := loader.CgroupRoot()
	if err != nil {
		b.Fatal(err)
	}
	n := node.New(node.Options{Kernel: e, Engine: eng, Store: st, CgroupRoot: root})
	for _, size := range lifecycleSizes {
		d, err := eng.Evaluate(ctx, engine.Input{Task: &engine.Task{Labels: map[string]string{"size": strconv.Itoa(size)}}})
		if err != nil {
			b.Fatal(err)
		}
		compile(b, d.Envelope, size) // the policy's envelope has the size it claims
	}
	sa := sockaddr4(udpTarget)
	mustRefuse(b, &sa, "before any task")

	interleave(b, lifecycleSizes, func(n int) string { return "rules=" + sizeName(n) }, func(b *testing.B, size int) {
		labels := map[string]string{"size": strconv.Itoa(size)}
		b.StopTimer()
		for i := 0; i < b.N; i++ {
			fd := udpSocket(b)
			if errno := connectRaw(fd, &sa); errno != unix.EPERM {
				b.Fatalf("before task %d: connect to %s: got %v, want %v", i, udpTarget, errnoText(errno), unix.EPERM)
			}
			b.StartTimer()
			t, err := n.Start(ctx, node.Request{Workload: req.Workload, Intent: "benchmark", Labels: labels})
			if err != nil {
				b.Fatal(err)
			}
			if errno := connectRaw(fd, &sa); errno != 0 {
				b.Fatalf("connect to %s right after task %s started: %v", udpTarget, t.ID, errno)
			}
			b.StopTimer()
			if t.Rules != size+3 {
				b.Fatalf("task %s has %d rules, want %d", t.ID, t.Rules, size+3)
			}
			if _, err := n.End(t.ID, "benchmark"); err != nil {
				b.Fatal(err)
			}
			n.Wait()
			unix.Close(fd)
		}
	})
}
