// Command lab-pause is the lab's sandbox image: the process that holds a pod's
// namespaces, as Kubernetes' pause image does. It waits for SIGTERM or SIGINT.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
