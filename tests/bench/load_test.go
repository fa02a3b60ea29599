package bench

import (
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/bridle-sh/bridle/loader"
)

// BenchmarkLoad is what `bridle run` and a starting bridled pay before the
// first workload is confined: every object parsed, relocated, verified and
// loaded, the maps created and pinned, the optional hooks probed. Its
// baseline is one decode of the kernel's BTF, which every object's load
// needs and Load shares among them: the ratio says how many decodes' worth
// of work a Load is (before Load shared one decode, it paid about ten).
func BenchmarkLoad(b *testing.B) {
	requireRoot(b)
	root := filepath.Join(loader.DefaultPinRoot, "bench")
	sweep(root, func(dir string) { _ = loader.RemovePins(dir) })
	for range rounds {
		b.Run("kernel-btf", func(b *testing.B) {
			for b.Loop() {
				if _, err := btf.LoadKernelSpec(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("bridle", func(b *testing.B) {
			for b.Loop() {
				e, err := loader.Load(loader.Options{PinDir: filepath.Join(root, ownedName(b.Name())), WakeupBytes: wakeupBytes})
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				e.Close()
				if err := e.Unpin(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}
