package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// The listening actions try to open an inbound channel: a server a host
// outside the workload can connect to, or a port taken before the service
// that owns it can bind it.

// actTCPListen listens on ADDR:PORT and waits up to SECONDS for one
// connection. PORT 0 calls no bind(2) at all: listen(2) then picks an
// ephemeral port itself (ADDR only chooses the family). The port is
// written to PORTFILE once the socket listens, for the test to connect to;
// "ok accepted" means a connection came in.
func actTCPListen(args []string) outcome {
	if len(args) != 3 {
		return usage("tcp-listen ADDR:PORT PORTFILE SECONDS")
	}
	ep, err := parseEndpoint(args[0])
	if err != nil {
		return usage("%v", err)
	}
	secs, err := strconv.ParseFloat(args[2], 64)
	if err != nil || secs < 0 {
		return usage("tcp-listen: bad SECONDS %q", args[2])
	}
	fd, err := unix.Socket(ep.family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return failure("socket", err)
	}
	defer unix.Close(fd)
	if ep.port != 0 {
		if err := unix.Bind(fd, ep.sockaddr()); err != nil {
			return failure("bind", err)
		}
	}
	if err := unix.Listen(fd, 8); err != nil {
		return failure("listen", err)
	}
	port, err := localPort(fd)
	if err != nil {
		return failure("getsockname", err)
	}
	if err := writeAtomic(args[1], fmt.Sprintf("%d\n", port)); err != nil {
		return failure("write port file", err)
	}
	ready, err := pollFd(fd, unix.POLLIN, time.Now().Add(time.Duration(secs*float64(time.Second))))
	if err != nil {
		return failure("poll", err)
	}
	if !ready {
		return failure("accept", unix.ETIMEDOUT)
	}
	nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
	if err != nil {
		return failure("accept", err)
	}
	unix.Close(nfd)
	return ok("accepted")
}

// actUDPBind binds a UDP socket to ADDR:PORT: a datagram server's first
// step, or squatting a port another service needs.
func actUDPBind(args []string) outcome {
	ep, u := oneEndpoint(args, "udp-bind")
	if u != nil {
		return *u
	}
	fd, err := unix.Socket(ep.family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return failure("socket", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, ep.sockaddr()); err != nil {
		return failure("bind", err)
	}
	return ok("")
}

func localPort(fd int) (int, error) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return 0, err
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return sa.Port, nil
	case *unix.SockaddrInet6:
		return sa.Port, nil
	}
	return 0, fmt.Errorf("unexpected address %T", sa)
}

// writeAtomic writes a file under a temporary name and renames it, so a
// reader polling for the name never sees it half written.
func writeAtomic(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
