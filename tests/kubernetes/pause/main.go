// Command pause is the sandbox ("pause") container of the test cluster's
// pods: it holds the pod's namespaces open and does nothing until it is told
// to stop. As PID 1 of its pod it has no default signal handlers, so it
// catches SIGTERM and SIGINT itself, or it could only be killed.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
