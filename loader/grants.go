package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bridle-sh/bridle/loader/sockabort"
	"github.com/bridle-sh/bridle/policy"
)

// Grants are what a person approved for a task beyond its rules (a step-up
// approval): an address, or a binary, until an expiry. The connect,
// sendmsg and ping checks consult the address grants after the rules and
// the learned addresses refuse, the exec check the binary grants after the
// exec rules; each checks the expiry and the task's generation itself, so
// a grant ends on time whether or not bridled runs then. An allow by a
// grant is recorded with its own reason (bpf.ReasonGrant).

// GrantedAddr is an address a grant lets a task reach: its protocol,
// address and ports (none for ICMP), until Expires. A zero Expires lasts
// as long as the task.
type GrantedAddr = LearnedAddr

// GrantedExec is a binary, by its device and inode as the exec check sees
// them (policy.FileID), a grant lets a task run until Expires. A zero
// Expires lasts as long as the task.
type GrantedExec struct {
	Dev, Ino uint64
	Expires  time.Time
}

// GrantAddrs lets the task of generation in slot reach addrs on their
// ports until each one's expiry. Granting an address again replaces its
// grant. An entry of an earlier task of the slot allows nothing.
func (e *Enforcer) GrantAddrs(slot, generation uint32, addrs []GrantedAddr) error {
	if slot >= MaxSlots {
		return fmt.Errorf("grant: slot %d out of range", slot)
	}
	var (
		keys4 []netBridleLearn4Key
		keys6 []netBridleLearn6Key
		vals4 []netBridleLearned
		vals6 []netBridleLearned
	)
	for _, g := range addrs {
		a := g.Addr.Unmap()
		if !a.IsValid() || a.Zone() != "" {
			return fmt.Errorf("grant: %q is not an address", g.Addr)
		}
		v, err := timedValue("grant", g, a, generation, true)
		if err != nil {
			return err
		}
		if a.Is4() {
			keys4 = append(keys4, netBridleLearn4Key{Slot: slot, Proto: uint32(g.Protocol), Addr: a.As4()})
			vals4 = append(vals4, v)
		} else {
			keys6 = append(keys6, netBridleLearn6Key{Slot: slot, Proto: uint32(g.Protocol), Addr: a.As16()})
			vals6 = append(vals6, v)
		}
	}
	if err := batchUpdate(e.net.BridleGrant4, keys4, vals4); err != nil {
		return fmt.Errorf("grant: %w", err)
	}
	if err := batchUpdate(e.net.BridleGrant6, keys6, vals6); err != nil {
		return fmt.Errorf("grant: %w", err)
	}
	return nil
}

// RevokeAddrs deletes address grants of a slot (their protocol and
// address; ports and expiry are not read). An address not granted is no
// error. Connections already open stay open: AbortTo ends them.
func (e *Enforcer) RevokeAddrs(slot uint32, addrs []GrantedAddr) error {
	for _, g := range addrs {
		a := g.Addr.Unmap()
		var err error
		switch {
		case a.Is4():
			err = e.net.BridleGrant4.Delete(netBridleLearn4Key{Slot: slot, Proto: uint32(g.Protocol), Addr: a.As4()})
		case a.Is6():
			err = e.net.BridleGrant6.Delete(netBridleLearn6Key{Slot: slot, Proto: uint32(g.Protocol), Addr: a.As16()})
		default:
			return fmt.Errorf("revoke grant: %q is not an address", g.Addr)
		}
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("revoke grant of %s: %w", a, err)
		}
	}
	return nil
}

// GrantExec lets the task of generation in slot run the binaries of g
// until each one's expiry, as a rule would (not as script-only). Granting
// a binary again replaces its grant.
func (e *Enforcer) GrantExec(slot, generation uint32, g []GrantedExec) error {
	if slot >= MaxSlots {
		return fmt.Errorf("grant exec: slot %d out of range", slot)
	}
	keys := make([]netBridleExecKey, 0, len(g))
	vals := make([]netBridleGrant, 0, len(g))
	for _, x := range g {
		if x.Ino == 0 {
			return fmt.Errorf("grant exec %d:%d: no inode", x.Dev, x.Ino)
		}
		ns, err := expiryNanos(fmt.Sprintf("grant exec %d:%d", x.Dev, x.Ino), x.Expires, true)
		if err != nil {
			return err
		}
		keys = append(keys, netBridleExecKey{Slot: slot, Dev: x.Dev, Ino: x.Ino})
		vals = append(vals, netBridleGrant{ExpiresNs: ns, Generation: generation})
	}
	if err := batchUpdate(e.net.BridleExgrant, keys, vals); err != nil {
		return fmt.Errorf("grant exec: %w", err)
	}
	return nil
}

// RevokeExec deletes binary grants of a slot (expiry is not read). A
// binary not granted is no error. A process already running stays.
func (e *Enforcer) RevokeExec(slot uint32, g []GrantedExec) error {
	for _, x := range g {
		err := e.net.BridleExgrant.Delete(netBridleExecKey{Slot: slot, Dev: x.Dev, Ino: x.Ino})
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("revoke exec grant of %d:%d: %w", x.Dev, x.Ino, err)
		}
	}
	return nil
}

// AbortTo resets the workload's open TCP/UDP sockets whose peer is addr on
// one of ports (all ports when none): connections opened under a grant
// that ended. The workload's other connections stay open. proto is
// ProtoTCP, ProtoUDP or ProtoAny (both); ICMP holds no connection to end
// (each ping packet is checked on its way out), so it aborts nothing.
// Reaches what DestroySockets reaches, in the same namespaces.
func (e *Enforcer) AbortTo(cgroupID uint64, proto policy.Protocol, addr netip.Addr, ports []policy.PortRange) (sockabort.DestroyStats, error) {
	p := sockabort.Peer{Addr: addr}
	switch proto {
	case policy.ProtoTCP:
		p.TCP = true
	case policy.ProtoUDP:
		p.UDP = true
	case policy.ProtoAny:
		p.TCP, p.UDP = true, true
	case policy.ProtoICMP:
		return sockabort.DestroyStats{Method: e.features.SocketDestroy.Method}, nil
	default:
		return sockabort.DestroyStats{}, fmt.Errorf("abort connections: protocol %s: want tcp, udp or any", proto)
	}
	for _, r := range ports {
		p.Ports = append(p.Ports, sockabort.PortRange{First: r.First, Last: r.Last})
	}
	return e.abort.DestroyTo(p, cgroupID)
}
