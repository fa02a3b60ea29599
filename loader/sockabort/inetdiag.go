package sockabort

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// sock_diag wire format (linux/inet_diag.h).
const (
	inetDiagReqBytecode  = 1  // INET_DIAG_REQ_BYTECODE
	inetDiagBcJmp        = 1  // INET_DIAG_BC_JMP
	inetDiagBcCgroupCond = 13 // INET_DIAG_BC_CGROUP_COND
	inetDiagCgroupID     = 21 // INET_DIAG_CGROUP_ID
	inetDiagReqLen       = 56 // struct inet_diag_req_v2
	inetDiagSockIDOff    = 8  // its idiag_sockid
	inetDiagMsgLen       = 72 // struct inet_diag_msg
	inetDiagSockIDLen    = 48 // struct inet_diag_sockid
	// A bytecode program is one netlink attribute (16-bit length): past
	// this many ids, sockets are filtered here instead.
	maxBytecodeIDs = 2000
)

// TCP states as bits of idiag_states.
const (
	tcpEstablished = 1
	tcpSynSent     = 2
	tcpSynRecv     = 3
	tcpFinWait1    = 4
	tcpFinWait2    = 5
	tcpClose       = 7
	tcpCloseWait   = 8
	tcpLastAck     = 9
	tcpListen      = 10
	tcpClosing     = 11
)

// Every state of a socket that has or is setting up a connection. Request
// sockets answer to SYN_RECV but record no cgroup, so the filter drops them.
const tcpConnStates = 1<<tcpEstablished | 1<<tcpSynSent | 1<<tcpSynRecv | 1<<tcpFinWait1 |
	1<<tcpFinWait2 | 1<<tcpCloseWait | 1<<tcpLastAck | 1<<tcpClosing

// A bound UDP socket is ESTABLISHED when connected, CLOSE when not.
const udpStates = 1<<tcpEstablished | 1<<tcpClose

// probeNetlinkDestroy checks, without touching any socket, that sock_diag
// can both filter by cgroup and destroy. A destroy request naming no socket
// (all zero, cookie 0: no socket has cookie 0) fails with ENOENT where
// destroy is built in and EOPNOTSUPP where it is not.
func probeNetlinkDestroy() error {
	c, err := openSockDiag()
	if err != nil {
		return err
	}
	defer c.Close()
	// Dumping with a cgroup filter proves the diag modules are there and
	// the kernel knows INET_DIAG_BC_CGROUP_COND (5.9+).
	for _, p := range []struct {
		name   string
		num    uint8
		states uint32
	}{{"tcp", unix.IPPROTO_TCP, tcpConnStates}, {"udp", unix.IPPROTO_UDP, udpStates}} {
		_, err := c.inetDump(unix.AF_INET, p.num, p.states, []uint64{^uint64(0)})
		switch {
		case err == unix.ENOENT:
			return fmt.Errorf("the kernel has no %s sock_diag (CONFIG_INET_DIAG, or the inet_diag and %s_diag modules)", p.name, p.name)
		case err == unix.EINVAL:
			return fmt.Errorf("%s sock_diag cannot filter by cgroup (kernel 5.9+)", p.name)
		case err != nil:
			return fmt.Errorf("%s sock_diag dump with a cgroup filter: %w", p.name, err)
		}
	}
	errsByIdx, err := c.destroy([]inetDiagReq{{family: unix.AF_INET, protocol: unix.IPPROTO_TCP}})
	if err != nil {
		return err
	}
	switch e := errsByIdx[0]; {
	case e == unix.ENOENT || e == unix.ESTALE:
		return nil
	case e == unix.EOPNOTSUPP:
		return errors.New("the kernel cannot destroy sockets through sock_diag (CONFIG_INET_DIAG_DESTROY is off)")
	case e == nil:
		return errors.New("sock_diag destroyed a socket that should not exist")
	default:
		return fmt.Errorf("sock_diag SOCK_DESTROY: %w", e)
	}
}

// netlinkPass destroys the sockets of the given cgroup ids in the current
// namespace: four dumps (TCP and UDP, IPv4 and IPv6), then SOCK_DESTROY for
// each socket found whose peer matches peer (nil: every socket).
func netlinkPass(ids []uint64, listeners bool, peer *Peer) (DestroyStats, error) {
	var st DestroyStats
	c, err := openSockDiag()
	if err != nil {
		return st, err
	}
	defer c.Close()
	want := make(map[uint64]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	filter := ids
	if len(filter) > maxBytecodeIDs {
		filter = nil
	}
	tcpStates := uint32(tcpConnStates)
	if listeners {
		tcpStates |= 1 << tcpListen
	}
	wantTCP, wantUDP := peer.transports()
	var errs []error
	for _, proto := range []struct {
		num    uint8
		states uint32
		count  *int
		want   bool
	}{{unix.IPPROTO_TCP, tcpStates, &st.TCP, wantTCP}, {unix.IPPROTO_UDP, udpStates, &st.UDP, wantUDP}} {
		if !proto.want {
			continue
		}
		for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
			if peer != nil && family == unix.AF_INET && !peer.Addr.Unmap().Is4() {
				continue // an IPv6 peer is only reached from IPv6 sockets
			}
			socks, err := c.inetDump(family, proto.num, proto.states, filter)
			if err != nil {
				errs = append(errs, fmt.Errorf("sock_diag dump: %w", err))
				continue
			}
			var reqs []inetDiagReq
			for _, s := range socks {
				// The kernel filtered by cgroup; the attribute
				// confirms it, and filters when the list was too
				// long for bytecode.
				if want[s.cgroup] && peer.matches(s.peer(family)) {
					reqs = append(reqs, inetDiagReq{family: family, protocol: proto.num, id: s.id})
				}
			}
			for len(reqs) > 0 {
				n := min(len(reqs), 256)
				res, err := c.destroy(reqs[:n])
				reqs = reqs[n:]
				if err != nil {
					errs = append(errs, err)
					break
				}
				for _, e := range res {
					switch {
					case e == nil:
						*proto.count++
					case e == unix.ENOENT || e == unix.ESTALE:
						// Closed since the dump.
					default:
						st.Failed++
						errs = append(errs, fmt.Errorf("sock_diag SOCK_DESTROY: %w", e))
					}
				}
			}
		}
	}
	return st, errors.Join(errs...)
}

// inetDiagReq is a struct inet_diag_req_v2: which sockets a dump lists, or
// (with the states zero) the one socket a SOCK_DESTROY names.
type inetDiagReq struct {
	family, protocol uint8
	states           uint32
	id               [inetDiagSockIDLen]byte // struct inet_diag_sockid, as a dump gave it
}

func (r *inetDiagReq) Len() int { return inetDiagReqLen }

func (r *inetDiagReq) Serialize() []byte {
	b := make([]byte, inetDiagReqLen)
	b[0], b[1] = r.family, r.protocol
	nl.NativeEndian().PutUint32(b[4:], r.states)
	copy(b[inetDiagSockIDOff:], r.id[:])
	return b
}

type diagSock struct {
	id     [inetDiagSockIDLen]byte // struct inet_diag_sockid, as the kernel sent it
	cgroup uint64
}

// peer is the socket's remote address and port, read from its
// inet_diag_sockid: idiag_dport (network order) at 2, idiag_dst at 20 (an
// IPv4 socket's address in its first 4 bytes).
func (s *diagSock) peer(family uint8) (netip.Addr, uint16) {
	port := binary.BigEndian.Uint16(s.id[2:4])
	if family == unix.AF_INET {
		return netip.AddrFrom4([4]byte(s.id[20:24])), port
	}
	return netip.AddrFrom16([16]byte(s.id[20:36])), port
}

// cgroupBytecode is a sock_diag filter matching any of ids. Each condition
// falls through to a jump to the end (accept) when it matches and skips
// over that jump to the next condition when it does not; the last one's
// miss jumps past the end (reject). The kernel's audit follows the "yes"
// chain, so every op must lie on it.
func cgroupBytecode(ids []uint64) []byte {
	const cond, jmp = 12, 4
	var b []byte
	for i, id := range ids {
		last := i == len(ids)-1
		no := cond + jmp
		if last {
			no = cond + 4
		}
		b = append(b, inetDiagBcCgroupCond, cond, 0, 0)
		binary.NativeEndian.PutUint16(b[len(b)-2:], uint16(no))
		b = binary.NativeEndian.AppendUint64(b, id)
		if !last {
			rest := (len(ids) - i - 1) * (cond + jmp)
			rest -= jmp // the last condition has no jump after it
			b = append(b, inetDiagBcJmp, jmp, 0, 0)
			binary.NativeEndian.PutUint16(b[len(b)-2:], uint16(jmp+rest))
		}
	}
	return b
}

// inetDump lists the sockets of one family and protocol in the given states,
// filtered in the kernel to the cgroup ids (nil: no filter), with each
// socket's cgroup id.
func (c *diagConn) inetDump(family, proto uint8, states uint32, ids []uint64) ([]diagSock, error) {
	req := nl.NewNetlinkRequest(unix.SOCK_DIAG_BY_FAMILY, unix.NLM_F_DUMP)
	req.AddData(&inetDiagReq{family: family, protocol: proto, states: states})
	if len(ids) > 0 {
		req.AddData(nl.NewRtAttr(inetDiagReqBytecode, cgroupBytecode(ids)))
	}
	var out []diagSock
	err := c.dump(req, func(msg []byte) {
		if len(msg) < inetDiagMsgLen {
			return
		}
		var s diagSock
		copy(s.id[:], msg[4:])
		attrs(msg[inetDiagMsgLen:], func(typ uint16, val []byte) {
			if typ == inetDiagCgroupID && len(val) >= 8 {
				s.cgroup = nl.NativeEndian().Uint64(val)
			}
		})
		out = append(out, s)
	})
	return out, err
}

// destroy sends one SOCK_DESTROY per request, in one batch, and returns each
// one's result (nil: destroyed).
func (c *diagConn) destroy(reqs []inetDiagReq) ([]error, error) {
	msgs := make([]*nl.NetlinkRequest, len(reqs))
	for i := range reqs {
		msgs[i] = nl.NewNetlinkRequest(unix.SOCK_DESTROY, unix.NLM_F_ACK)
		msgs[i].AddData(&reqs[i])
	}
	res, err := c.ackAll(msgs)
	if err != nil {
		return nil, fmt.Errorf("sock_diag SOCK_DESTROY: %w", err)
	}
	return res, nil
}
