package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// actConnectFlood opens COUNT connections to the unix stream socket PATH as
// fast as it can, sends one HTTP request on each (so that a server without
// an idle timeout keeps them for good) and keeps them open without reading,
// as a local user exhausting a daemon's connections and descriptors would.
// After a second it prints how many connects worked and how many of those
// the server has closed since, then holds the rest open for SECONDS.
func actConnectFlood(args []string) outcome {
	if len(args) != 3 {
		return usage("connect-flood PATH COUNT SECONDS")
	}
	count, err := strconv.Atoi(args[1])
	if err != nil || count < 1 {
		return usage("connect-flood: bad COUNT %q", args[1])
	}
	secs, err := strconv.ParseFloat(args[2], 64)
	if err != nil || secs < 0 {
		return usage("connect-flood: bad SECONDS %q", args[2])
	}
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	var refused int
	for range count {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return failure("socket", err)
		}
		if err := unix.Connect(fd, &unix.SockaddrUnix{Name: args[0]}); err != nil {
			// A full backlog (EAGAIN) or a server gone: count and go on.
			unix.Close(fd)
			refused++
			continue
		}
		fds = append(fds, fd)
		_, _ = unix.Write(fd, []byte("GET /v1/status HTTP/1.1\r\nHost: bridled\r\n\r\n"))
	}
	// bridled closes what is over its limits as it accepts: count until
	// at most a caller's share (8) is left open, or the count has held
	// still for 3 s (a single emulated CPU, shared with this flood, can
	// stall the server's accepts for a second), for 60 s at most.
	closed, still := 0, 0
	for deadline := time.Now().Add(60 * time.Second); still < 12 && len(fds)-closed > 8 && time.Now().Before(deadline); {
		time.Sleep(250 * time.Millisecond)
		n := 0
		for _, fd := range fds {
			if peerClosed(fd) {
				n++
			}
		}
		if n == closed {
			still++
		} else {
			closed, still = n, 0
		}
	}
	// The test reads this line while the connections are held.
	fmt.Printf("ok connected %d closed %d refused %d\n", len(fds), closed, refused)
	time.Sleep(time.Duration(secs * float64(time.Second)))
	return outcome{"", exitOK}
}

// peerClosed reports whether the other end has closed the connection (EOF
// or a reset is waiting), without blocking.
func peerClosed(fd int) bool {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLRDHUP}}
	n, err := unix.Poll(pfd, 0)
	if err != nil || n == 0 {
		return false
	}
	return pfd[0].Revents&(unix.POLLHUP|unix.POLLRDHUP|unix.POLLERR) != 0
}

// actListenTCP listens on ADDR:PORT (port 0: any) and holds the socket for
// SECONDS, accepting nothing: a process squatting a daemon's port. It
// prints the address it holds.
func actListenTCP(args []string) outcome {
	if len(args) != 2 {
		return usage("listen-tcp ADDR:PORT SECONDS")
	}
	secs, err := strconv.ParseFloat(args[1], 64)
	if err != nil || secs < 0 {
		return usage("listen-tcp: bad SECONDS %q", args[1])
	}
	ln, err := net.Listen("tcp", args[0])
	if err != nil {
		return failure("listen", err)
	}
	defer ln.Close()
	fmt.Printf("ok listening %s\n", ln.Addr())
	time.Sleep(time.Duration(secs * float64(time.Second)))
	return outcome{"", exitOK}
}

// actHTTPGet sends GET PATH to an HTTP server on the unix socket SOCKET and
// prints "ok STATUS": what a local caller is answered.
func actHTTPGet(args []string) outcome {
	if len(args) != 2 {
		return usage("http-get SOCKET PATH")
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", args[0])
		},
	}}
	resp, err := c.Get("http://bridled" + args[1])
	if err != nil {
		return outcome{"error " + err.Error(), exitError}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	fmt.Fprintf(os.Stderr, "probe: %s: %s\n", args[1], strings.TrimSpace(string(body)))
	return ok(strconv.Itoa(resp.StatusCode))
}
