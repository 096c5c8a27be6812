package main

import (
	"github.com/spf13/cobra"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

// components are the Kubernetes programs this binary carries, each the
// upstream cobra command exactly as its own main runs it.
var components = map[string]func() *cobra.Command{
	"kube-apiserver":          func() *cobra.Command { return apiserver.NewAPIServerCommand() },
	"kube-controller-manager": func() *cobra.Command { return controllermanager.NewControllerManagerCommand() },
	"kube-scheduler":          func() *cobra.Command { cmd := scheduler.NewSchedulerCommand(); return cmd },
}

// runComponent runs one component with the given arguments and returns its
// exit code.
func runComponent(name string, args []string) int {
	cmd := components[name]()
	cmd.SetArgs(args)
	return cli.Run(cmd)
}
