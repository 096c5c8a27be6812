// Command metricsadapter is the test cluster's stand-in for Prometheus
// Adapter (sigs.k8s.io/prometheus-adapter), which the Go module proxy does
// not serve. It is built on the library the real adapter is built on,
// sigs.k8s.io/custom-metrics-apiserver, so the API it serves through the
// API server's aggregation layer (custom.metrics.k8s.io v1beta1 and
// v1beta2, with delegated authentication and authorization) is the real
// one. What it stands in for is the adapter's own part: it reads the
// adapter's config.yaml (--config, the chart's gatewaypool.adapterRules),
// lists each rule's series in Prometheus every --metrics-relist-interval,
// and answers a Pods metric with the rule's metricsQuery, asked of
// Prometheus' HTTP API (--prometheus-url). It supports what the chart's
// rules use (a seriesQuery of one metric name, namespace and pod
// overrides, name.matches and name.as, metricsQuery with <<.Series>>,
// <<.LabelMatchers>> and <<.GroupBy>>) and refuses anything else by name
// when it starts.
package main

import (
	"context"
	"net/http"
	"os"
	"time"

	"k8s.io/component-base/logs"
	"k8s.io/klog/v2"

	basecmd "sigs.k8s.io/custom-metrics-apiserver/pkg/cmd"
)

type adapter struct {
	basecmd.AdapterBase

	config        string
	prometheusURL string
	relist        time.Duration
}

func main() {
	logs.InitLogs()
	defer logs.FlushLogs()

	cmd := &adapter{}
	cmd.Name = "gatewaypool-test-metrics-adapter"
	flags := cmd.Flags()
	flags.StringVar(&cmd.config, "config", "", "Prometheus Adapter's configuration file (config.yaml)")
	flags.StringVar(&cmd.prometheusURL, "prometheus-url", "", "Prometheus' address, e.g. http://prometheus.monitoring.svc:9090")
	flags.DurationVar(&cmd.relist, "metrics-relist-interval", 10*time.Minute, "how often the rules' series are listed again")
	logs.AddFlags(flags)
	if err := flags.Parse(os.Args); err != nil {
		klog.Fatalf("unable to parse flags: %v", err)
	}
	if cmd.config == "" || cmd.prometheusURL == "" {
		klog.Fatalf("--config and --prometheus-url are required")
	}
	rules, err := loadConfig(cmd.config)
	if err != nil {
		klog.Fatalf("unable to load the configuration: %v", err)
	}
	client, err := cmd.DynamicClient()
	if err != nil {
		klog.Fatalf("unable to construct dynamic client: %v", err)
	}
	mapper, err := cmd.RESTMapper()
	if err != nil {
		klog.Fatalf("unable to construct discovery REST mapper: %v", err)
	}
	p := &rulesProvider{
		rules:   rules,
		prom:    &promClient{base: cmd.prometheusURL, client: &http.Client{Timeout: 10 * time.Second}},
		mapper:  mapper,
		client:  client,
		relist:  cmd.relist,
		metrics: nil,
	}
	ctx := context.Background()
	go p.run(ctx)
	cmd.WithCustomMetrics(p)
	klog.Infof("serving %d rules from %s, Prometheus at %s", len(rules), cmd.config, cmd.prometheusURL)
	if err := cmd.Run(ctx); err != nil {
		klog.Fatalf("unable to run the custom metrics adapter: %v", err)
	}
}
