// Command controlplane runs a real Kubernetes control plane for GatewayPool's
// tests: etcd, kube-apiserver, kube-controller-manager and kube-scheduler,
// built from Kubernetes' own Go modules, on loopback ports.
//
//	controlplane up --dir DIR [--hpa-sync-period 2s] ...
//
// starts etcd in this process and each Kubernetes component as a child
// process of this same binary (one process per component, as in a cluster:
// their global state, metrics registries and flags stay apart). Once the
// API server is ready it writes DIR/ready.json, naming the server, the admin
// kubeconfig and a control port. The control port restarts the API server or
// compacts etcd on request, the two faults tests need on demand. SIGTERM stops
// everything; so does the death of the process that started it.
//
//	controlplane kube-apiserver|kube-controller-manager|kube-scheduler ARGS
//
// runs one component exactly as its upstream main does.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) > 1 {
		if _, ok := components[os.Args[1]]; ok {
			os.Exit(runComponent(os.Args[1], os.Args[2:]))
		}
		if os.Args[1] == "up" {
			if err := up(os.Args[2:]); err != nil {
				fmt.Fprintln(os.Stderr, "controlplane:", err)
				os.Exit(1)
			}
			return
		}
	}
	fmt.Fprintln(os.Stderr, "usage: controlplane up --dir DIR | kube-apiserver|kube-controller-manager|kube-scheduler ARGS")
	os.Exit(2)
}
