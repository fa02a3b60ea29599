// Command listen serves the `make demo` example: it accepts and closes TCP
// connections on each loopback address given, until killed.
package main

import (
	"fmt"
	"net"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: listen ADDR:PORT...")
		os.Exit(2)
	}
	for _, addr := range os.Args[1:] {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "listen:", err)
			os.Exit(1)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	select {}
}
