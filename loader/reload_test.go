package loader

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
)

// Loading again over the same pins (a daemon restart or upgrade) keeps the
// maps and their contents, and swaps the programs in place: one program per
// hook on the cgroup, never zero, never two.
func TestReloadReplacesProgramsInPlace(t *testing.T) {
	requireRoot(t)
	dir := filepath.Join(DefaultPinRoot, "test", fmt.Sprintf("reload-%d", time.Now().UnixNano()))
	cg, id := testCgroup(t)

	first, err := Load(Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = RemovePins(dir) })
	if err := first.AttachCgroup(cg); err != nil {
		t.Fatal(err)
	}
	if err := first.BindWorkload(id, 3, WorkloadMode{}); err != nil {
		t.Fatal(err)
	}
	first.Close() // the process that loaded it is gone; the pins remain

	second, err := Load(Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if err := second.AttachCgroup(cg); err != nil {
		t.Fatal(err)
	}
	var w netBridleWorkload
	if err := second.net.BridleCgroups.Lookup(id, &w); err != nil || w.Slot != 3 {
		t.Fatalf("binding lost across reload: %+v %v", w, err)
	}

	fd, err := syscall.Open(cg, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	// Every hook, the bind, inbound and setsockopt ones included.
	for _, h := range second.cgroupHooks() {
		res, err := link.QueryPrograms(link.QueryOptions{Target: fd, Attach: h.typ})
		if err != nil {
			t.Fatal(err)
		}
		info, err := h.prog.Info()
		if err != nil {
			t.Fatal(err)
		}
		want, _ := info.ID()
		if len(res.Programs) != 1 || res.Programs[0].ID != want {
			t.Fatalf("%s programs on the cgroup: %+v, want only the new one (%d)", h.name, res.Programs, want)
		}
	}
	for _, name := range []string{"bind4", "bind6", "accept", "setsockopt"} {
		if !slices.ContainsFunc(second.cgroupHooks(), func(h cgroupHook) bool { return h.name == name }) {
			t.Errorf("no %s hook on kernel %s: %s / %s", name, second.Features().Kernel, second.Features().ListenReason, second.Features().SockoptReason)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "exec_link_new")); err == nil {
		t.Fatal("temporary pin left behind")
	}
}
