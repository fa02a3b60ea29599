package loader

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/bridle-sh/bridle/loader/internal/kernel"
)

// The guards refuse, for every workload whatever its task, what no task can
// allow: a socket of an address family no Bridle hook judges, and (kernel
// 6.1+) a user namespace. They are BPF LSM programs, so they run only where
// BPF LSM is active; elsewhere only the seccomp filter of `bridle run`
// guards these doors, for the workloads it launches, and Features says so.

// seccompGuard says what the launch filter (daemon/workload.Sandbox) refuses.
const seccompGuard = "for workloads bridle run launches: unshare/clone with namespace flags, setns, and sockets outside unix, inet, inet6 and netlink refused by a seccomp filter"

// usernsHook is the BTF name of the userns_create LSM hook's attach point.
const usernsHook = "bpf_lsm_userns_create"

// loadGuards loads and attaches the guards where BPF LSM is active, and
// records in e.features which are in force and why the others are not. A
// guard that cannot load is reported, never fatal: the rest of Bridle still
// enforces.
func (e *Enforcer) loadGuards(opts *ebpf.CollectionOptions, wakeup uint64, lsms []string, lsmErr error) {
	f := &e.features
	f.SeccompGuard = seccompGuard
	if active, why := bpfLSMActive(lsms, lsmErr); !active {
		f.FamilyGuardReason = "BPF LSM not active: " + why
		f.UsernsGuardReason = f.FamilyGuardReason
		return
	}
	spec, err := loadGuardlsm()
	if err == nil {
		err = setWakeup(spec, wakeup)
	}
	if err != nil {
		f.FamilyGuardReason = "guard programs: " + err.Error()
		f.UsernsGuardReason = f.FamilyGuardReason
		return
	}
	hasUserns := kernel.HasFunc(opts.Cache, usernsHook)
	if !hasUserns {
		delete(spec.Programs, guardlsmProgBridleUserns)
		f.UsernsGuardReason = "this kernel has no userns_create LSM hook (6.1+; " + usernsHook + " is not in its BTF)"
	}
	co := replacementsFor(spec, opts)
	coll, err := ebpf.NewCollectionWithOptions(spec, co)
	if err != nil {
		f.FamilyGuardReason = "this kernel refuses BPF LSM programs: " + rootCause(err) + verifierTail(err)
		if hasUserns {
			f.UsernsGuardReason = f.FamilyGuardReason
		}
		return
	}
	e.guard = coll
	attach := func(prog, pin string) error {
		l, err := link.AttachLSM(link.LSMOptions{Program: coll.Programs[prog]})
		if err != nil {
			return fmt.Errorf("BPF LSM program loaded but did not attach: %w", err)
		}
		e.guardLinks = append(e.guardLinks, l)
		// Pinned like the exec link: the guard outlives this process.
		if err := replacePin(l, pinPath(e.pinDir, pin)); err != nil {
			return fmt.Errorf("pin %s: %w", pin, err)
		}
		return nil
	}
	if err := attach(guardlsmProgBridleFamily, "guard_family_link"); err != nil {
		f.FamilyGuardReason = err.Error()
	} else {
		f.FamilyGuard = true
		f.FamilyGuardReason = "BPF LSM socket_create: every workload refused sockets outside unix, inet, inet6 and netlink, with a record"
	}
	if !hasUserns {
		return
	}
	if err := attach(guardlsmProgBridleUserns, "guard_userns_link"); err != nil {
		f.UsernsGuardReason = err.Error()
	} else {
		f.UsernsGuard = true
		f.UsernsGuardReason = "BPF LSM userns_create: every workload refused user namespaces, with a record"
	}
}

// GuardLines says, for people, how namespaces and address families are
// guarded here: the seccomp filter for launched workloads everywhere, the
// LSM guards for every workload where they are in force — and when they are
// not, that adopted workloads are not guarded and why.
func (f Features) GuardLines() (namespaces, families string) {
	namespaces = "refused to workloads bridle run launches (seccomp); "
	if f.UsernsGuard {
		namespaces += "user namespaces refused to every workload (BPF LSM userns_create)"
	} else {
		namespaces += "NOT refused to adopted workloads (give their units RestrictNamespaces=yes): " + f.UsernsGuardReason
	}
	families = "only unix, inet, inet6, netlink for workloads bridle run launches (seccomp); "
	if f.FamilyGuard {
		families += "the same for every workload (BPF LSM socket_create)"
	} else {
		families += "NOT restricted for adopted workloads (give their units RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK): " + f.FamilyGuardReason
	}
	return namespaces, families
}

// closeGuards releases this process's handles on the guards; pinned links
// keep them attached.
func (e *Enforcer) closeGuards() error {
	var errs []error
	for _, l := range e.guardLinks {
		errs = append(errs, l.Close())
	}
	e.guardLinks = nil
	if e.guard != nil {
		e.guard.Close()
		e.guard = nil
	}
	return errors.Join(errs...)
}
