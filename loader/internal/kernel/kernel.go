// Package kernel holds what loader and its sub-packages say about the
// running kernel alike: whether it has a function, and the error for a
// feature it lacks.
package kernel

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// UnsupportedError says that a kernel feature Bridle wanted is missing, and why.
type UnsupportedError struct {
	Feature string
	Err     error
}

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("%s not supported: %v", e.Feature, e.Err)
}

func (e *UnsupportedError) Unwrap() error { return e.Err }

// Is reports UnsupportedError as ebpf.ErrNotSupported, as cilium/ebpf does.
func (e *UnsupportedError) Is(target error) bool { return target == ebpf.ErrNotSupported }

// HasFunc reports whether the kernel's type information names a function
// (a kfunc or a hook point). The types are those decoded in types, shared
// with the loads beside this call; nil decodes them anew.
func HasFunc(types *btf.Cache, name string) bool {
	if types == nil {
		types = btf.NewCache()
	}
	spec, err := types.Kernel()
	if err != nil {
		return false
	}
	var fn *btf.Func
	return spec.TypeByName(name, &fn) == nil
}
