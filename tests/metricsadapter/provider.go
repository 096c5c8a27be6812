package main

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	apierr "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/klog/v2"
	"k8s.io/metrics/pkg/apis/custom_metrics"

	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider/helpers"
)

var pods = schema.GroupResource{Resource: "pods"}

// served is a metric the last relist found: the rule that names it and the
// series it is read from.
type served struct {
	rule   compiledRule
	series string
}

// rulesProvider serves the rules' Pods metrics from Prometheus, as
// Prometheus Adapter does: it lists the series each rule's seriesQuery
// selects every relist interval (a metric exists once Prometheus has a
// series for it), resolves a label selector to pod names through the API
// server, and answers with the rule's metricsQuery for those names.
type rulesProvider struct {
	rules  []compiledRule
	prom   *promClient
	mapper apimeta.RESTMapper
	client dynamic.Interface
	relist time.Duration

	mu      sync.RWMutex
	metrics map[provider.CustomMetricInfo]served
}

func (p *rulesProvider) run(ctx context.Context) {
	for {
		if err := p.relistOnce(ctx); err != nil {
			klog.Errorf("unable to update the list of metrics: %v", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(p.relist):
		}
	}
}

func (p *rulesProvider) relistOnce(ctx context.Context) error {
	start := time.Now().Add(-p.relist)
	found := map[provider.CustomMetricInfo]served{}
	for _, r := range p.rules {
		listed, err := p.prom.series(ctx, r.seriesQuery, start)
		if err != nil {
			return fmt.Errorf("rules[%d] seriesQuery %q: %w", r.index, r.seriesQuery, err)
		}
		for _, labelSet := range listed {
			name := labelSet["__name__"]
			if labelSet[r.namespaceKey] == "" || labelSet[r.podKey] == "" {
				continue // not about a pod: not served as a Pods metric
			}
			metric := r.metricName(name)
			if metric == "" {
				continue
			}
			info := provider.CustomMetricInfo{GroupResource: pods, Namespaced: true, Metric: metric}
			if earlier, seen := found[info]; seen && earlier.series != name {
				return fmt.Errorf("metric %s comes from two series, %s and %s", metric, earlier.series, name)
			}
			found[info] = served{rule: r, series: name}
		}
	}
	p.mu.Lock()
	changed := len(found) != len(p.metrics)
	p.metrics = found
	p.mu.Unlock()
	if changed {
		klog.Infof("serving %d metrics: %v", len(found), sortedNames(found))
	}
	return nil
}

func sortedNames(found map[provider.CustomMetricInfo]served) []string {
	names := make([]string, 0, len(found))
	for info := range found {
		names = append(names, info.String())
	}
	sort.Strings(names)
	return names
}

func (p *rulesProvider) lookup(info provider.CustomMetricInfo) (served, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	s, ok := p.metrics[info]
	return s, ok
}

func (p *rulesProvider) ListAllMetrics() []provider.CustomMetricInfo {
	p.mu.RLock()
	defer p.mu.RUnlock()
	infos := make([]provider.CustomMetricInfo, 0, len(p.metrics))
	for info := range p.metrics {
		infos = append(infos, info)
	}
	return infos
}

func (p *rulesProvider) GetMetricByName(ctx context.Context, name types.NamespacedName, info provider.CustomMetricInfo, metricSelector labels.Selector) (*custom_metrics.MetricValue, error) {
	values, err := p.values(ctx, info, name.Namespace, []string{name.Name}, metricSelector)
	if err != nil {
		return nil, err
	}
	if len(values) == 0 {
		return nil, provider.NewMetricNotFoundForError(info.GroupResource, info.Metric, name.Name)
	}
	return &values[0], nil
}

func (p *rulesProvider) GetMetricBySelector(ctx context.Context, namespace string, selector labels.Selector, info provider.CustomMetricInfo, metricSelector labels.Selector) (*custom_metrics.MetricValueList, error) {
	names, err := helpers.ListObjectNames(p.mapper, p.client, namespace, selector, info)
	if err != nil {
		klog.Errorf("unable to list the objects matching %s: %v", selector, err)
		return nil, apierr.NewInternalError(fmt.Errorf("unable to list matching resources"))
	}
	if len(names) == 0 {
		return nil, provider.NewMetricNotFoundForSelectorError(info.GroupResource, info.Metric, "", selector)
	}
	values, err := p.values(ctx, info, namespace, names, metricSelector)
	if err != nil {
		return nil, err
	}
	return &custom_metrics.MetricValueList{Items: values}, nil
}

// values asks Prometheus for `info` of pods `names`: one value per pod the
// answer names, in the order of `names`; pods it does not name are left out.
func (p *rulesProvider) values(ctx context.Context, info provider.CustomMetricInfo, namespace string, names []string, metricSelector labels.Selector) ([]custom_metrics.MetricValue, error) {
	if info.GroupResource != pods || !info.Namespaced {
		return nil, provider.NewMetricNotFoundError(info.GroupResource, info.Metric)
	}
	if !metricSelector.Empty() {
		// The HPA sends one when its metric has a selector; no rule of the chart expects one.
		return nil, apierr.NewBadRequest(fmt.Sprintf("metric selector %q: not supported by this stand-in", metricSelector))
	}
	s, ok := p.lookup(info)
	if !ok {
		return nil, provider.NewMetricNotFoundError(info.GroupResource, info.Metric)
	}
	query, err := s.rule.buildQuery(namespace, names)
	if err != nil {
		klog.Errorf("rules[%d]: unable to render metricsQuery: %v", s.rule.index, err)
		return nil, apierr.NewInternalError(fmt.Errorf("unable to fetch metrics"))
	}
	samples, err := p.prom.query(ctx, query)
	if err != nil {
		klog.Errorf("unable to fetch metrics from Prometheus: %v", err)
		return nil, apierr.NewInternalError(fmt.Errorf("unable to fetch metrics"))
	}
	if len(samples) == 0 {
		return nil, provider.NewMetricNotFoundError(info.GroupResource, info.Metric)
	}
	byName := map[string]sample{}
	for _, found := range samples {
		byName[found.labels[s.rule.podKey]] = found
	}
	values := []custom_metrics.MetricValue{}
	for _, name := range names {
		found, ok := byName[name]
		if !ok {
			continue
		}
		values = append(values, custom_metrics.MetricValue{
			DescribedObject: custom_metrics.ObjectReference{
				APIVersion: "/v1",
				Kind:       "Pod",
				Name:       name,
				Namespace:  namespace,
			},
			Metric:    custom_metrics.MetricIdentifier{Name: info.Metric},
			Timestamp: metav1.NewTime(found.time),
			Value:     *resource.NewMilliQuantity(int64(found.value*1000.0), resource.DecimalSI),
		})
	}
	klog.V(2).Infof("%s in %s: %d of %d pods answered by %q", info.Metric, namespace, len(values), len(names), query)
	return values, nil
}
