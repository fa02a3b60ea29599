package sockabort

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/loader/internal/kernel"
)

// loadIter loads the iterator programs and creates their links; iterators are
// opened per pass, in the namespace being swept.
func (d *Destroyer) loadIter(types *btf.Cache) error {
	spec, err := loadDestroy()
	if err != nil {
		return err
	}
	if types == nil {
		types = btf.NewCache()
	}
	var objs destroyObjects
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{Cache: types}); err != nil {
		if !kernel.HasFunc(types, "bpf_sock_destroy") {
			return errors.New("the kernel has no bpf_sock_destroy kfunc (kernel 6.5+)")
		}
		return refusal(err)
	}
	tcp, err := link.AttachIter(link.IterOptions{Program: objs.BridleDstTcp})
	if err != nil {
		objs.Close()
		return fmt.Errorf("attach iter/tcp: %w", err)
	}
	udp, err := link.AttachIter(link.IterOptions{Program: objs.BridleDstUdp})
	if err != nil {
		tcp.Close()
		objs.Close()
		return fmt.Errorf("attach iter/udp: %w", err)
	}
	d.objs, d.tcpIter, d.udpIter = &objs, tcp, udp
	return nil
}

// refusal says why the kernel refused the programs: the innermost error,
// without the wrapping that only repeats what the caller says, and the end
// of the verifier log, where the verifier gives its reason.
func refusal(err error) error {
	msg := err.Error()
	for next := errors.Unwrap(err); next != nil; next = errors.Unwrap(next) {
		msg = next.Error()
	}
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) && len(ve.Log) > 0 {
		tail := ve.Log[max(len(ve.Log)-2, 0):]
		msg += " (verifier: " + strings.Join(tail, " / ") + ")"
	}
	return errors.New(msg)
}

// iterPass runs the iterators once over the current namespace's tables,
// once more for every BRIDLE_DST_MAX_PORTS of the peer's port ranges past
// the first.
func (d *Destroyer) iterPass(targets []destroyTarget, listeners bool, peer *Peer) (DestroyStats, error) {
	var st DestroyStats
	vars := d.objs.destroyVariables
	var l uint32
	if listeners {
		l = 1
	}
	if err := vars.BridleDstListeners.Set(l); err != nil {
		return st, err
	}
	iters := []*link.Iter{d.tcpIter, d.udpIter}
	filters := []destroyBridleDstPeer{{}}
	if peer != nil {
		filters = peerFilters(peer)
		tcp, udp := peer.transports()
		iters = nil
		if tcp {
			iters = append(iters, d.tcpIter)
		}
		if udp {
			iters = append(iters, d.udpIter)
		}
	}
	var errs []error
	for _, f := range filters {
		if err := vars.BridleDstPeer.Set(f); err != nil {
			return st, err
		}
		one, err := d.iterTargets(targets, iters)
		st.add(one)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return st, errors.Join(errs...)
}

// peerFilters is the iterators' form of a peer: one filter per
// BRIDLE_DST_MAX_PORTS of its port ranges (one with no ports: any port).
func peerFilters(p *Peer) []destroyBridleDstPeer {
	// As16 of an IPv4 address is its IPv4-mapped form, as the iterators
	// compare it.
	base := destroyBridleDstPeer{Set: 1, Addr: p.Addr.As16()}
	if len(p.Ports) == 0 {
		return []destroyBridleDstPeer{base}
	}
	var out []destroyBridleDstPeer
	for ports := p.Ports; len(ports) > 0; {
		f := base
		n := min(len(ports), len(f.Ports))
		for i, r := range ports[:n] {
			f.Ports[i].First, f.Ports[i].Last = r.First, r.Last
		}
		f.Nports = uint32(n)
		ports = ports[n:]
		out = append(out, f)
	}
	return out
}

// iterTargets runs iters over the current namespace's tables for targets,
// as many passes as the targets need.
func (d *Destroyer) iterTargets(targets []destroyTarget, iters []*link.Iter) (DestroyStats, error) {
	var st DestroyStats
	vars := d.objs.destroyVariables
	var errs []error
	for len(targets) > 0 {
		n := min(len(targets), len(destroyTargetsArray{}))
		var arr destroyTargetsArray
		for i, t := range targets[:n] {
			arr[i] = destroyBridleDstTarget{Id: t.id, Level: t.level}
		}
		targets = targets[n:]
		if err := vars.BridleDstTargets.Set(arr); err != nil {
			return st, err
		}
		if err := vars.BridleDstNtargets.Set(uint32(n)); err != nil {
			return st, err
		}
		if err := vars.BridleDstStats.Set(destroyBridleDstCounts{}); err != nil {
			return st, err
		}
		for _, it := range iters {
			if err := runIter(it); err != nil {
				return st, err
			}
		}
		var c destroyBridleDstCounts
		if err := vars.BridleDstStats.Get(&c); err != nil {
			return st, err
		}
		st.TCP += int(c.Tcp)
		st.UDP += int(c.Udp)
		st.Failed += int(c.TcpFailed + c.UdpFailed)
		st.Kept += int(c.Skipped)
		if c.TcpFailed+c.UdpFailed > 0 {
			errs = append(errs, fmt.Errorf("%d sockets not aborted: bpf_sock_destroy: %w",
				c.TcpFailed+c.UdpFailed, unix.Errno(-c.LastErr)))
		}
	}
	return st, errors.Join(errs...)
}

// destroyTargetsArray mirrors bridle_dst_targets in bpf/destroy.c
// (BRIDLE_DST_MAX_TARGETS); Variable.Set refuses a value of another size.
type destroyTargetsArray [64]destroyBridleDstTarget

// runIter makes one pass of an iterator: the programs write nothing, so the
// read returns at the end of the table.
func runIter(it *link.Iter) error {
	r, err := it.Open()
	if err != nil {
		return fmt.Errorf("open iterator: %w", err)
	}
	defer r.Close()
	var buf [64]byte
	for {
		_, err := r.Read(buf[:])
		switch {
		case err == io.EOF:
			return nil
		case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
			// The kernel stops a pass after a million objects; the
			// next read carries on.
			continue
		case err != nil:
			return fmt.Errorf("run iterator: %w", err)
		}
	}
}
