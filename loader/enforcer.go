package loader

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"

	"github.com/bridle-sh/bridle/loader/sockabort"
)

// DefaultWakeupBytes batches event wakeups: the reader is woken when this
// much is pending, and polls for the rest (loader.pollInterval).
const DefaultWakeupBytes = 64 << 10

// DefaultEventBudget is how many decision events one workload's task may
// emit per second before the kernel only counts them (Options.EventBudget).
// The ring holds about 74,000 events (16 MiB of 224-byte records): at this
// budget it takes 37 workloads flooding at once for a whole second, with the
// reader stopped, to fill it, and the reader (500k+ events/s) keeps up with
// 250 flooding at once. One workload's flood is thus at most a small share
// of the ring and of the reader, and no workload's records are crowded out
// by another's. A workload past its budget loses no count: its next record
// says how many were left out, and its task's end reports the rest.
const DefaultEventBudget = 2000

// Options configure Load.
type Options struct {
	// PinDir holds the pinned maps and links of this enforcer, on a BPF
	// filesystem (mounted if absent). Pins keep enforcement in force when
	// the process that loaded it dies.
	PinDir string
	// WakeupBytes batches event wakeups: the reader is woken once this many
	// bytes are pending (0: on every event). The reader also polls.
	WakeupBytes uint64
	// ForceKillMode uses kill-mode exec enforcement even where BPF LSM is
	// active (for tests and comparison).
	ForceKillMode bool
	// EventBudget is how many events one workload's task may emit per
	// second; 0 takes DefaultEventBudget. Past it events are counted, not
	// emitted.
	EventBudget uint64
	// NoEventBudget lets every workload emit without limit (tests of the
	// ring itself); one flooding workload can then crowd out the others.
	NoEventBudget bool
}

// Enforcer is one loaded set of Bridle programs and maps.
type Enforcer struct {
	pinDir   string
	features Features

	net     netObjects
	unix    *unixObjects
	listen  *listenObjects
	sockopt *sockoptObjects
	// The reply half of DNS steering (dns.go); nil where the kernel
	// refuses it. dnsPeername is optional on top.
	dns         *dnsHooks
	dnsPeername *peernameHooks
	exec        io.Closer // execlsmObjects or execkillObjects

	execLink link.Link
	cgLinks  []link.Link
	// cgByID are the links of each attached cgroup, by cgroup id, so that
	// a cgroup that goes away (a pod's) can be let go of alone. cgMu
	// guards both: pods come and go while bridled runs.
	cgByID map[uint64][]link.Link
	cgMu   sync.Mutex

	guard      *ebpf.Collection // the LSM guards (guard.go), where they load
	guardLinks []link.Link

	abort *sockabort.Aborter // ends a workload's connections at its task's end
}

// Load probes the kernel, loads Bridle's programs and maps, pins the maps
// under opts.PinDir (reusing maps already pinned there) and attaches the exec
// program. Cgroup programs are attached per workload with AttachCgroup.
func Load(opts Options) (*Enforcer, error) {
	if opts.PinDir == "" {
		return nil, errors.New("load: no pin directory")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("load: remove memlock limit: %w", err)
	}
	if err := ensureBPFFS(opts.PinDir); err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	e := &Enforcer{pinDir: opts.PinDir}
	e.features.Kernel = kernelRelease()
	e.features.BTF = btfSource()
	lsms, lsmErr := activeLSMs()
	e.features.ActiveLSMs = lsms

	// The kernel's type information (for CO-RE relocations, kfuncs and
	// attach points), decoded once for every object below: decoding it
	// costs more than verifying most of the programs, and each object
	// decoded it anew.
	types := btf.NewCache()
	collOpts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: opts.PinDir}, Cache: types}

	netSpec, err := loadNet()
	if err != nil {
		return nil, fmt.Errorf("load: net spec: %w", err)
	}
	if err := setWakeup(netSpec, opts.WakeupBytes); err != nil {
		return nil, err
	}
	if err := setBudget(netSpec, opts); err != nil {
		return nil, err
	}
	netColl, err := ebpf.NewCollectionWithOptions(netSpec, *collOpts)
	if err != nil {
		return nil, fmt.Errorf("load: net programs: %s", verifierError(err))
	}
	shared := sharedMaps(netColl)
	if err := netColl.Assign(&e.net); err != nil {
		netColl.Close()
		return nil, fmt.Errorf("load: net objects: %w", err)
	}
	netColl.Close()
	collOpts.MapReplacements = shared

	if err := e.loadUnix(collOpts, opts); err != nil {
		e.features.UnixReason = err.Error()
	} else {
		e.features.UnixHooks = true
		e.features.UnixReason = "cgroup connect_unix and sendmsg_unix loaded"
	}

	if err := e.loadListen(collOpts, opts.WakeupBytes); err != nil {
		e.features.ListenReason = err.Error()
	} else {
		e.features.ListenHooks = true
		e.features.ListenReason = "cgroup bind4 and bind6, and inbound connections checked by cgroup_skb ingress"
	}
	e.features.SockoptReason = e.loadSockopt(collOpts, opts.WakeupBytes)
	e.loadDNS(collOpts)
	if !e.features.DNSRedirect {
		// A resolver pinned by an earlier load would steer queries whose
		// answers no hook restores: stub resolvers would drop them all.
		if err := e.SetResolver(netip.AddrPort{}, netip.AddrPort{}); err != nil {
			e.Close()
			return nil, fmt.Errorf("load: %w", err)
		}
	}
	e.features.SockoptHook = e.sockopt != nil

	if err := e.loadExec(collOpts, opts, lsms, lsmErr); err != nil {
		e.Close()
		return nil, err
	}
	e.loadGuards(collOpts, opts.WakeupBytes, lsms, lsmErr)
	e.abort = sockabort.New(CgroupRoot, types)
	e.features.SocketDestroy = e.abort.DestroyFeature()
	if e.features.UnixHooks {
		e.features.UnixShutdown = e.abort.UnixFeature()
	} else {
		e.features.UnixShutdown = UnixShutdownFeature{Method: UnixShutdownNone,
			Reason: "unix sockets are not enforced on this kernel, so no unix connection depends on a task"}
	}
	return e, nil
}

// sharedMaps returns the maps every object must use, keyed by name; data
// sections (.rodata, .bss) belong to each object alone.
func sharedMaps(c *ebpf.Collection) map[string]*ebpf.Map {
	out := maps.Clone(c.Maps)
	for name := range out {
		if strings.HasPrefix(name, ".") {
			delete(out, name)
		}
	}
	return out
}

// setBudget sets the per-workload event budget of an object.
func setBudget(spec *ebpf.CollectionSpec, o Options) error {
	perSecond := o.EventBudget
	switch {
	case o.NoEventBudget:
		perSecond = 0 // the programs' "no limit"
	case perSecond == 0:
		perSecond = DefaultEventBudget
	}
	v, ok := spec.Variables["bridle_event_budget"]
	if !ok {
		return errors.New("load: object has no bridle_event_budget")
	}
	if err := v.Set(perSecond); err != nil {
		return fmt.Errorf("load: set event budget: %w", err)
	}
	return nil
}

func setWakeup(spec *ebpf.CollectionSpec, bytes uint64) error {
	v, ok := spec.Variables["bridle_wakeup_bytes"]
	if !ok {
		return errors.New("load: object has no bridle_wakeup_bytes")
	}
	if err := v.Set(bytes); err != nil {
		return fmt.Errorf("load: set wakeup threshold: %w", err)
	}
	return nil
}

// withoutData drops map replacements the object does not declare, since
// cilium/ebpf refuses replacements for unknown maps.
func replacementsFor(spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions) ebpf.CollectionOptions {
	o := *opts
	o.MapReplacements = map[string]*ebpf.Map{}
	for name, m := range opts.MapReplacements {
		if _, ok := spec.Maps[name]; ok {
			o.MapReplacements[name] = m
		}
	}
	return o
}

func (e *Enforcer) loadUnix(opts *ebpf.CollectionOptions, o Options) error {
	spec, err := loadUnix()
	if err != nil {
		return err
	}
	if err := setWakeup(spec, o.WakeupBytes); err != nil {
		return err
	}
	if err := setBudget(spec, o); err != nil {
		return err
	}
	var objs unixObjects
	co := replacementsFor(spec, opts)
	if err := spec.LoadAndAssign(&objs, &co); err != nil {
		return &UnsupportedError{Feature: "unix socket hooks (kernel 6.7+)", Err: errors.New(firstLine(verifierError(err)))}
	}
	e.unix = &objs
	return nil
}

// loadListen loads the bind and inbound connection checks. A kernel that
// refuses them still gets everything else; Features says what is missing.
func (e *Enforcer) loadListen(opts *ebpf.CollectionOptions, wakeup uint64) error {
	spec, err := loadListen()
	if err != nil {
		return err
	}
	if err := setWakeup(spec, wakeup); err != nil {
		return err
	}
	var objs listenObjects
	o := replacementsFor(spec, opts)
	if err := spec.LoadAndAssign(&objs, &o); err != nil {
		return &UnsupportedError{Feature: "bind and listen control (cgroup bind4/bind6, cgroup_skb ingress)", Err: errors.New(firstLine(verifierError(err)))}
	}
	e.listen = &objs
	return nil
}

// loadSockopt loads the setsockopt check and returns what Features says
// about it. Older kernels do not give setsockopt programs the helpers for
// the cgroup ancestor walk and the current process; there it is loaded
// without them rather than not at all.
func (e *Enforcer) loadSockopt(opts *ebpf.CollectionOptions, wakeup uint64) string {
	const packetCheck = "; routing headers and IP options sent without setsockopt (ancillary data, 32-bit system calls) are dropped by the egress packet check"
	var firstErr error
	for _, ancestors := range []uint8{1, 0} {
		spec, err := loadSockopt()
		if err != nil {
			return err.Error() + packetCheck
		}
		if err := setWakeup(spec, wakeup); err != nil {
			return err.Error() + packetCheck
		}
		if err := setVariable(spec, "bridle_sockopt_ancestors", ancestors); err != nil {
			return err.Error() + packetCheck
		}
		if err := setVariable(spec, "bridle_page_size", int32(os.Getpagesize())); err != nil {
			return err.Error() + packetCheck
		}
		var objs sockoptObjects
		o := replacementsFor(spec, opts)
		err = spec.LoadAndAssign(&objs, &o)
		if err == nil {
			e.sockopt = &objs
			if ancestors == 0 {
				return "cgroup setsockopt refuses source routing and extension header options; this kernel gives it no ancestor walk, so processes in sub-cgroups of a workload are refused without their workload's audit mode, and records carry no pid (" + firstLine(verifierError(firstErr)) + ")" + packetCheck
			}
			return "cgroup setsockopt refuses source routing and extension header options" + packetCheck
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return (&UnsupportedError{Feature: "setsockopt control (cgroup setsockopt, kernel 5.3+)", Err: errors.New(firstLine(verifierError(firstErr)))}).Error() + packetCheck
}

func setVariable(spec *ebpf.CollectionSpec, name string, v any) error {
	sv, ok := spec.Variables[name]
	if !ok {
		return fmt.Errorf("load: object has no %s", name)
	}
	if err := sv.Set(v); err != nil {
		return fmt.Errorf("load: set %s: %w", name, err)
	}
	return nil
}

func (e *Enforcer) loadExec(opts *ebpf.CollectionOptions, o Options, lsms []string, lsmErr error) error {
	active, why := bpfLSMActive(lsms, lsmErr)
	if o.ForceKillMode {
		active, why = false, "kill mode requested"
	}
	if active {
		spec, err := loadExeclsm()
		if err != nil {
			return fmt.Errorf("load: exec lsm spec: %w", err)
		}
		if err := setWakeup(spec, o.WakeupBytes); err != nil {
			return err
		}
		if err := setBudget(spec, o); err != nil {
			return err
		}
		var objs execlsmObjects
		co := replacementsFor(spec, opts)
		if err := spec.LoadAndAssign(&objs, &co); err != nil {
			why = "\"bpf\" is in the active LSM list but this kernel refuses BPF LSM programs: " + rootCause(err) + verifierTail(err)
		} else {
			l, err := link.AttachLSM(link.LSMOptions{Program: objs.BridleExecLsm})
			if err != nil {
				objs.Close()
				why = "BPF LSM program loaded but did not attach: " + err.Error()
			} else {
				e.exec, e.execLink = &objs, l
				e.features.ExecMode = ExecModeLSM
				e.features.ExecModeReason = "BPF LSM active: exec refused with EPERM"
				return e.pinExec()
			}
		}
	}

	spec, err := loadExeckill()
	if err != nil {
		return fmt.Errorf("load: exec kill spec: %w", err)
	}
	if err := setWakeup(spec, o.WakeupBytes); err != nil {
		return err
	}
	if err := setBudget(spec, o); err != nil {
		return err
	}
	var objs execkillObjects
	co := replacementsFor(spec, opts)
	if err := spec.LoadAndAssign(&objs, &co); err != nil {
		return fmt.Errorf("load: exec programs: neither lsm (%s) nor kill mode loads: %s", why, verifierError(err))
	}
	l, err := link.AttachTracing(link.TracingOptions{Program: objs.BridleExecKill})
	if err != nil {
		objs.Close()
		return fmt.Errorf("load: attach exec kill program: %w", err)
	}
	e.exec, e.execLink = &objs, l
	e.features.ExecMode = ExecModeKill
	e.features.ExecModeReason = why + "; refused binaries are killed (SIGKILL) before their first instruction"
	return e.pinExec()
}

// pinExec pins the exec link. A link an earlier load pinned there is
// replaced only after the new one is attached: for a moment both check each
// exec, never neither.
func (e *Enforcer) pinExec() error {
	if err := replacePin(e.execLink, pinPath(e.pinDir, "exec_link")); err != nil {
		return fmt.Errorf("load: pin exec link: %w", err)
	}
	return nil
}

// verifierTail is the end of a verifier log, where the verifier says why it
// refused a program; empty for other errors.
func verifierTail(err error) string {
	var ve *ebpf.VerifierError
	if !errors.As(err, &ve) || len(ve.Log) == 0 {
		return ""
	}
	lines := ve.Log
	if len(lines) > 2 {
		lines = lines[len(lines)-2:]
	}
	return " (verifier: " + strings.Join(lines, " / ") + ")"
}

// rootCause is the innermost error, without the wrapping context that only
// repeats what the caller already says.
func rootCause(err error) string {
	for {
		next := errors.Unwrap(err)
		if next == nil {
			return err.Error()
		}
		err = next
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// Features reports what the loader found on this kernel.
func (e *Enforcer) Features() Features { return e.features }

// PinDir is where this enforcer's maps and links are pinned.
func (e *Enforcer) PinDir() string { return e.pinDir }

// AttachCgroup attaches the network programs to a cgroup and its whole
// subtree, and pins the links so they outlive this process.
func (e *Enforcer) AttachCgroup(path string) error {
	id, err := CgroupID(path)
	if err != nil {
		return err
	}
	for _, a := range e.cgroupHooks() {
		p := pinPath(e.pinDir, fmt.Sprintf("cg%d_%s", id, a.name))
		// A link pinned by an earlier load (a restart, an upgrade) gets the
		// new program in one atomic swap: the cgroup is never without one.
		if l, err := link.LoadPinnedLink(p, nil); err == nil {
			if err := l.Update(a.prog); err == nil {
				e.keepCgroupLink(id, l)
				continue
			}
			l.Close()
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: path, Attach: a.typ, Program: a.prog})
		if err != nil {
			return fmt.Errorf("attach %s to %s: %w", a.name, path, err)
		}
		e.keepCgroupLink(id, l)
		if err := replacePin(l, p); err != nil {
			return fmt.Errorf("pin %s link: %w", a.name, err)
		}
	}
	return nil
}

func (e *Enforcer) keepCgroupLink(id uint64, l link.Link) {
	e.cgMu.Lock()
	defer e.cgMu.Unlock()
	e.cgLinks = append(e.cgLinks, l)
	if e.cgByID == nil {
		e.cgByID = map[uint64][]link.Link{}
	}
	e.cgByID[id] = append(e.cgByID[id], l)
}

// ForgetCgroup lets go of the programs attached to a cgroup that is gone
// or no longer confined (a deleted pod's): its link pins are removed and
// this process's handles closed. Pins of a removed cgroup would otherwise
// keep it, and its links, in the kernel for as long as the pin directory
// lives.
func (e *Enforcer) ForgetCgroup(id uint64) error {
	e.cgMu.Lock()
	defer e.cgMu.Unlock()
	var errs []error
	for _, l := range e.cgByID[id] {
		e.cgLinks = slices.DeleteFunc(e.cgLinks, func(x link.Link) bool { return x == l })
		errs = append(errs, l.Close())
	}
	delete(e.cgByID, id)
	for _, a := range e.cgroupHooks() {
		p := pinPath(e.pinDir, fmt.Sprintf("cg%d_%s", id, a.name))
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// AttachedAt checks that every cgroup program of this enforcer is attached
// to the cgroup at path, and returns the hooks that are not. Someone with
// root can detach programs behind Bridle's back; this is how it notices.
func (e *Enforcer) AttachedAt(path string) ([]string, error) {
	dir, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("check attachments of %s: %w", path, err)
	}
	defer dir.Close()
	var missing []string
	for _, a := range e.cgroupHooks() {
		info, err := a.prog.Info()
		if err != nil {
			return nil, fmt.Errorf("check attachments: %s: %w", a.name, err)
		}
		want, _ := info.ID()
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(dir.Fd()), Attach: a.typ})
		if err != nil {
			return nil, fmt.Errorf("check attachments of %s: %s: %w", path, a.name, err)
		}
		found := false
		for _, p := range res.Programs {
			found = found || p.ID == want
		}
		if !found {
			missing = append(missing, a.name)
		}
	}
	return missing, nil
}

type cgroupHook struct {
	name string
	typ  ebpf.AttachType
	prog *ebpf.Program
}

// cgroupHooks lists the programs a confined cgroup gets.
func (e *Enforcer) cgroupHooks() []cgroupHook {
	type attach = cgroupHook
	list := []attach{
		{"connect4", ebpf.AttachCGroupInet4Connect, e.net.BridleConnect4},
		{"connect6", ebpf.AttachCGroupInet6Connect, e.net.BridleConnect6},
		{"sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, e.net.BridleSendmsg4},
		{"sendmsg6", ebpf.AttachCGroupUDP6Sendmsg, e.net.BridleSendmsg6},
		{"sock_create", ebpf.AttachCGroupInetSockCreate, e.net.BridleSockCreate},
		{"ping_egress", ebpf.AttachCGroupInetEgress, e.net.BridlePingEgress},
	}
	if e.unix != nil {
		list = append(list,
			attach{"connect_unix", ebpf.AttachCgroupUnixConnect, e.unix.BridleConnUnix},
			attach{"sendmsg_unix", ebpf.AttachCgroupUnixSendmsg, e.unix.BridleSendUnix})
	}
	if e.listen != nil {
		list = append(list,
			attach{"bind4", ebpf.AttachCGroupInet4Bind, e.listen.BridleBind4},
			attach{"bind6", ebpf.AttachCGroupInet6Bind, e.listen.BridleBind6},
			attach{"accept", ebpf.AttachCGroupInetIngress, e.listen.BridleAccept})
	}
	if e.sockopt != nil {
		list = append(list, attach{"setsockopt", ebpf.AttachCGroupSetsockopt, e.sockopt.BridleSockopt})
	}
	if e.dns != nil {
		list = append(list,
			attach{"recvmsg4", ebpf.AttachCGroupUDP4Recvmsg, e.dns.Recvmsg4},
			attach{"recvmsg6", ebpf.AttachCGroupUDP6Recvmsg, e.dns.Recvmsg6})
	}
	if e.dnsPeername != nil {
		list = append(list,
			attach{"getpeername4", ebpf.AttachCgroupInet4GetPeername, e.dnsPeername.Peername4},
			attach{"getpeername6", ebpf.AttachCgroupInet6GetPeername, e.dnsPeername.Peername6})
	}
	return list
}

// replacePin pins l at path, replacing whatever was pinned there in one
// rename, so the old link stays attached until the new one is in place.
func replacePin(l link.Link, path string) error {
	tmp := path + "_new" // bpffs refuses names with dots
	_ = os.Remove(tmp)
	if err := l.Pin(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}

// Close releases this process's handles. Pinned links and maps stay in the
// kernel and keep enforcing; Unpin removes them.
func (e *Enforcer) Close() error {
	var errs []error
	e.cgMu.Lock()
	for _, l := range e.cgLinks {
		errs = append(errs, l.Close())
	}
	e.cgLinks, e.cgByID = nil, nil
	e.cgMu.Unlock()
	errs = append(errs, e.closeGuards())
	if e.execLink != nil {
		errs = append(errs, e.execLink.Close())
		e.execLink = nil
	}
	if e.exec != nil {
		errs = append(errs, e.exec.Close())
		e.exec = nil
	}
	if e.unix != nil {
		errs = append(errs, e.unix.Close())
		e.unix = nil
	}
	if e.listen != nil {
		errs = append(errs, e.listen.Close())
		e.listen = nil
	}
	if e.sockopt != nil {
		errs = append(errs, e.sockopt.Close())
		e.sockopt = nil
	}
	errs = append(errs, e.closeDNS())
	if e.abort != nil {
		errs = append(errs, e.abort.Close())
	}
	errs = append(errs, e.net.Close())
	return errors.Join(errs...)
}

// Unpin removes every pin of this enforcer, so its programs detach once the
// last handle is closed.
func (e *Enforcer) Unpin() error {
	return RemovePins(e.pinDir)
}

// RemovePins deletes a pin directory and everything pinned in it.
func RemovePins(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, ent := range entries {
		errs = append(errs, os.Remove(pinPath(dir, ent.Name())))
	}
	errs = append(errs, os.Remove(dir))
	return errors.Join(errs...)
}
