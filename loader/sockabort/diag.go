package sockabort

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// diagConn is a sock_diag netlink socket of the network namespace of the
// thread that opened it. Framing, sending and receiving are the netlink
// library's; what is asked (inet and unix dumps, SOCK_DESTROY) is ours.
type diagConn struct {
	sock   *nl.NetlinkSocket
	handle *nl.SocketHandle // numbers requests; ExecuteIter reuses the socket through it
}

// diagTimeout bounds each wait for the kernel's answer.
var diagTimeout = unix.Timeval{Sec: 5}

func openSockDiag() (*diagConn, error) {
	s, err := nl.Subscribe(unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sock_diag socket: %w", err)
	}
	// Acks carry only the header of the request they answer.
	_ = unix.SetsockoptInt(s.GetFd(), unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	if err := s.SetReceiveTimeout(&diagTimeout); err != nil {
		s.Close()
		return nil, fmt.Errorf("sock_diag socket: %w", err)
	}
	if err := s.SetSendTimeout(&diagTimeout); err != nil {
		s.Close()
		return nil, fmt.Errorf("sock_diag socket: %w", err)
	}
	return &diagConn{sock: s, handle: &nl.SocketHandle{Socket: s}}, nil
}

func (c *diagConn) Close() { c.sock.Close() }

// dump sends a dump request and calls fn with the payload of each answer,
// until the kernel says it is done; an error the kernel sends ends the dump
// with that errno.
func (c *diagConn) dump(req *nl.NetlinkRequest, fn func(msg []byte)) error {
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_SOCK_DIAG: c.handle}
	err := req.ExecuteIter(unix.NETLINK_SOCK_DIAG, unix.SOCK_DIAG_BY_FAMILY, func(msg []byte) bool {
		fn(msg)
		return true
	})
	if errors.Is(err, nl.ErrDumpInterrupted) {
		// The table changed during the dump. What came is what the
		// kernel held, but a socket that moved in its hash table
		// meanwhile may have been missed; the BPF iterator method, used
		// wherever the kernel has it (6.5+), has no such gap.
		return nil
	}
	return err
}

// ackAll sends requests that ask for an ack, all before reading any answer,
// and returns each one's result (nil: done).
func (c *diagConn) ackAll(reqs []*nl.NetlinkRequest) ([]error, error) {
	index := make(map[uint32]int, len(reqs))
	for i, r := range reqs {
		c.handle.Seq++
		r.Seq = c.handle.Seq
		index[r.Seq] = i
		if err := c.sock.Send(r); err != nil {
			return nil, err
		}
	}
	res := make([]error, len(reqs))
	for pending := len(reqs); pending > 0; {
		msgs, _, err := c.sock.Receive()
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			i, ok := index[m.Header.Seq]
			if m.Header.Type != unix.NLMSG_ERROR || !ok || len(m.Data) < 4 {
				continue
			}
			delete(index, m.Header.Seq)
			if e := int32(nl.NativeEndian().Uint32(m.Data)); e < 0 {
				res[i] = unix.Errno(-e)
			}
			pending--
		}
	}
	return res, nil
}

// attrs calls fn with the type (flags stripped) and value of each netlink
// attribute in b. Malformed attributes are skipped whole: the kernel does not
// send them.
func attrs(b []byte, fn func(typ uint16, val []byte)) {
	list, err := nl.ParseRouteAttr(b)
	if err != nil {
		return
	}
	for _, a := range list {
		fn(a.Attr.Type&nl.NLA_TYPE_MASK, a.Value)
	}
}
