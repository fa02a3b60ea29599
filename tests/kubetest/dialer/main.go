// Command dialer is the test cluster's workload: it connects to the TCP
// address it is given, prints what it connected from and the first line the
// other end sends (if any within two seconds), and then waits to be stopped,
// so that its pod stays Running for the test to look at.
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: dialer HOST:PORT")
		os.Exit(2)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	if err := dial(os.Args[1]); err != nil {
		fmt.Println("dialer:", err)
	}
	<-stop
}

func dial(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	fmt.Printf("connected to %s from %s\n", conn.RemoteAddr(), conn.LocalAddr())
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if line != "" {
		fmt.Printf("read: %s", line)
	} else if err != nil {
		fmt.Println("read nothing:", err)
	}
	return nil
}
