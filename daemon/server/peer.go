package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Peer is the process on the other end of an API connection, as the kernel
// reports it (SO_PEERCRED): it cannot be claimed by the caller.
type Peer struct {
	UID    uint32
	GID    uint32
	PID    int32
	Groups []uint32 // primary and supplementary groups
	Cgroup string   // cgroup v2 path; "" when it could not be read
	Err    error    // why the credentials are incomplete, if they are
}

type peerKey struct{}

// connContext records each connection's peer credentials as it is
// accepted, before any request on it is read.
func connContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, peerKey{}, readPeer(c))
}

func peerFrom(ctx context.Context) Peer {
	p, ok := ctx.Value(peerKey{}).(Peer)
	if !ok {
		return Peer{Err: errors.New("no peer credentials")}
	}
	return p
}

func readPeer(c net.Conn) Peer {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Peer{Err: fmt.Errorf("not a unix socket connection: %T", c)}
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Peer{Err: fmt.Errorf("peer credentials: %w", err)}
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{Err: fmt.Errorf("peer credentials: %w", err)}
	}
	if credErr != nil {
		return Peer{Err: fmt.Errorf("peer credentials: %w", credErr)}
	}
	p := Peer{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid, Groups: []uint32{cred.Gid}}
	if p.Cgroup, err = procCgroup(int(cred.Pid)); err != nil {
		p.Err = err
		return p
	}
	if groups, err := procGroups(int(cred.Pid)); err == nil {
		p.Groups = append(p.Groups, groups...)
	}
	return p
}

// procCgroup reads the cgroup v2 path of a process from /proc/PID/cgroup
// (the "0::" line).
func procCgroup(pid int) (string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", fmt.Errorf("cgroup of pid %d: %w", pid, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			// A cgroup removed while the process is in it reads "/x (deleted)".
			rest, _ = strings.CutSuffix(rest, " (deleted)")
			return rest, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("cgroup of pid %d: %w", pid, err)
	}
	return "", fmt.Errorf("cgroup of pid %d: no cgroup v2 entry", pid)
}

// procGroups reads the supplementary groups of a process.
func procGroups(pid int) ([]uint32, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "Groups:")
		if !ok {
			continue
		}
		var out []uint32
		for _, g := range strings.Fields(rest) {
			n, err := strconv.ParseUint(g, 10, 32)
			if err != nil {
				return nil, err
			}
			out = append(out, uint32(n))
		}
		return out, nil
	}
	return nil, sc.Err()
}
