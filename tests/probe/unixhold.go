package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// actHoldUnix connects a stream socket to a unix socket (or, with fd:N,
// uses inherited descriptor N) and keeps writing one byte every 20 ms until
// a write fails or SECONDS pass: a connection an agent keeps using after
// its task ends. With "dgram" as a third argument the socket is a
// connected datagram socket instead. Once connected it prints "ok
// connected"; at the end "closed ERRNO" (or "closed timeout") followed by
// "pair ok|ERRNO": whether a socketpair it made after connecting (a
// connection inside the workload) still carries data.
func actHoldUnix(args []string) outcome {
	if len(args) != 2 && !(len(args) == 3 && args[2] == "dgram") {
		return usage("hold-unix PATH|@abstract|fd:N SECONDS [dgram]")
	}
	secs, err := strconv.ParseFloat(args[1], 64)
	if err != nil || secs < 0 {
		return usage("hold-unix: bad SECONDS %q", args[1])
	}
	var fd int
	if n, isFD := strings.CutPrefix(args[0], "fd:"); isFD {
		if fd, err = strconv.Atoi(n); err != nil {
			return usage("hold-unix: bad descriptor %q", args[0])
		}
	} else {
		typ := unix.SOCK_STREAM
		if len(args) == 3 {
			typ = unix.SOCK_DGRAM
		}
		if fd, err = unix.Socket(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0); err != nil {
			return failure("socket", err)
		}
		if err := unix.Connect(fd, unixSockaddr(args[0])); err != nil {
			return failure("connect", err)
		}
	}
	defer unix.Close(fd)
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return failure("socketpair", err)
	}
	fmt.Println("ok connected") // os.Stdout is unbuffered: the test sees it now
	end := "closed timeout"
	for deadline := time.Now().Add(time.Duration(secs * float64(time.Second))); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		// MSG_NOSIGNAL: a shut down connection gives EPIPE, not SIGPIPE.
		if _, err := unix.SendmsgN(fd, []byte("x"), nil, nil, unix.MSG_NOSIGNAL); err != nil {
			end = "closed " + errLabel(err)
			break
		}
	}
	return outcome{end + "; pair " + pairWorks(pair), exitOK}
}

// pairWorks sends a byte across a socketpair and reads it back.
func pairWorks(pair [2]int) string {
	if _, err := unix.SendmsgN(pair[0], []byte("p"), nil, nil, unix.MSG_NOSIGNAL); err != nil {
		return errLabel(err)
	}
	buf := make([]byte, 1)
	if n, err := unix.Read(pair[1], buf); err != nil || n != 1 {
		if err == nil {
			return "EOF"
		}
		return errLabel(err)
	}
	return "ok"
}
