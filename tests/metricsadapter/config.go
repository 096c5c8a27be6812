package main

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"text/template"

	"sigs.k8s.io/yaml"
)

// The file format is Prometheus Adapter's (its config.yaml, as the chart's
// gatewaypool.adapterRules renders it). Every field the real adapter reads
// is declared, so that a field it knows but this stand-in does not support
// is refused by name, and a field neither knows is refused by the strict
// parse, as the real adapter refuses it.

type adapterConfig struct {
	Rules         []rule          `json:"rules,omitempty"`
	ResourceRules *map[string]any `json:"resourceRules,omitempty"`
	ExternalRules []rule          `json:"externalRules,omitempty"`
}

type rule struct {
	SeriesQuery   string           `json:"seriesQuery"`
	SeriesFilters []map[string]any `json:"seriesFilters,omitempty"`
	Resources     resourceMapping  `json:"resources"`
	Name          nameMapping      `json:"name"`
	MetricsQuery  string           `json:"metricsQuery,omitempty"`
}

type resourceMapping struct {
	Template   string                   `json:"template,omitempty"`
	Overrides  map[string]groupResource `json:"overrides,omitempty"`
	Namespaced *bool                    `json:"namespaced,omitempty"`
}

type groupResource struct {
	Group    string `json:"group,omitempty"`
	Resource string `json:"resource"`
}

type nameMapping struct {
	Matches string `json:"matches"`
	As      string `json:"as"`
}

// compiledRule is one rule of the file, checked: a Pods metric of the
// custom metrics API, read from one series name.
type compiledRule struct {
	index        int
	seriesQuery  string
	seriesName   string         // the metric name the series query selects
	matches      *regexp.Regexp // name.matches
	as           string         // name.as
	namespaceKey string         // the series label holding the namespace
	podKey       string         // the series label holding the pod's name
	query        *template.Template
}

// seriesSelector is what this stand-in accepts as a seriesQuery: a metric
// name and label matchers, the form every rule of the chart has.
var seriesSelector = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)\{[^{}]*\}$`)

func loadConfig(path string) ([]compiledRule, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var config adapterConfig
	if err := yaml.UnmarshalStrict(text, &config); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if config.ResourceRules != nil {
		return nil, unsupported(path, "resourceRules", "the resource metrics API is metrics-server's here")
	}
	if len(config.ExternalRules) > 0 {
		return nil, unsupported(path, "externalRules", "no external metrics are served")
	}
	if len(config.Rules) == 0 {
		return nil, fmt.Errorf("%s: no rules", path)
	}
	compiled := make([]compiledRule, 0, len(config.Rules))
	for i, r := range config.Rules {
		c, err := compileRule(i, r)
		if err != nil {
			return nil, fmt.Errorf("%s: rules[%d]: %w", path, i, err)
		}
		compiled = append(compiled, c)
	}
	return compiled, nil
}

func unsupported(path, field, why string) error {
	return fmt.Errorf("%s: %s is valid for Prometheus Adapter but not supported by this stand-in (%s)", path, field, why)
}

func compileRule(index int, r rule) (compiledRule, error) {
	c := compiledRule{index: index, seriesQuery: r.SeriesQuery}
	if len(r.SeriesFilters) > 0 {
		return c, fmt.Errorf("seriesFilters: not supported by this stand-in")
	}
	if r.Resources.Template != "" {
		return c, fmt.Errorf("resources.template: not supported by this stand-in (use overrides)")
	}
	if r.Resources.Namespaced != nil {
		return c, fmt.Errorf("resources.namespaced: not supported by this stand-in")
	}
	found := seriesSelector.FindStringSubmatch(r.SeriesQuery)
	if found == nil {
		return c, fmt.Errorf("seriesQuery %q: this stand-in takes only name{matchers}", r.SeriesQuery)
	}
	c.seriesName = found[1]
	for label, target := range r.Resources.Overrides {
		if target.Group != "" {
			return c, fmt.Errorf("resources.overrides.%s: group %q: only core resources are supported", label, target.Group)
		}
		switch target.Resource {
		case "namespace":
			c.namespaceKey = label
		case "pod":
			c.podKey = label
		default:
			return c, fmt.Errorf("resources.overrides.%s: resource %q: only namespace and pod are supported", label, target.Resource)
		}
	}
	if c.namespaceKey == "" || c.podKey == "" {
		return c, fmt.Errorf("resources.overrides: this stand-in serves Pods metrics only: a namespace and a pod label are both needed")
	}
	if r.Name.Matches == "" {
		return c, fmt.Errorf("name.matches: required")
	}
	matches, err := regexp.Compile(r.Name.Matches)
	if err != nil {
		return c, fmt.Errorf("name.matches: %w", err)
	}
	c.matches = matches
	c.as = r.Name.As
	if c.as == "" {
		// Prometheus Adapter's default: the first capture group, or the whole name.
		c.as = "$0"
		if matches.NumSubexp() == 1 {
			c.as = "$1"
		}
	}
	if !matches.MatchString(c.seriesName) {
		return c, fmt.Errorf("name.matches %q never matches the series %q", r.Name.Matches, c.seriesName)
	}
	if r.MetricsQuery == "" {
		return c, fmt.Errorf("metricsQuery: required")
	}
	for _, action := range regexp.MustCompile(`<<\s*([^>]*?)\s*>>`).FindAllStringSubmatch(r.MetricsQuery, -1) {
		switch action[1] {
		case ".Series", ".LabelMatchers", ".GroupBy":
		default:
			return c, fmt.Errorf("metricsQuery: <<%s>> is not supported by this stand-in (only .Series, .LabelMatchers and .GroupBy)", action[1])
		}
	}
	query, err := template.New("metrics-query").Delims("<<", ">>").Option("missingkey=error").Parse(r.MetricsQuery)
	if err != nil {
		return c, fmt.Errorf("metricsQuery: %w", err)
	}
	c.query = query
	return c, nil
}

// metricName is the name a series is served under (name.matches and name.as),
// or "" when the rule does not name it.
func (c compiledRule) metricName(series string) string {
	found := c.matches.FindStringSubmatchIndex(series)
	if found == nil {
		return ""
	}
	return string(c.matches.ExpandString(nil, c.as, series, found))
}

// queryArgs are the template's arguments, as Prometheus Adapter fills them.
type queryArgs struct {
	Series        string
	LabelMatchers string
	GroupBy       string
}

// buildQuery renders metricsQuery for pods `names` of `namespace`: one name
// is matched with =, several with =~ and |, as Prometheus Adapter does.
func (c compiledRule) buildQuery(namespace string, names []string) (string, error) {
	matchers := []string{fmt.Sprintf("%s=%q", c.namespaceKey, namespace)}
	if len(names) == 1 {
		matchers = append(matchers, fmt.Sprintf("%s=%q", c.podKey, names[0]))
	} else {
		matchers = append(matchers, fmt.Sprintf("%s=~%q", c.podKey, strings.Join(names, "|")))
	}
	var out strings.Builder
	err := c.query.Execute(&out, queryArgs{
		Series:        c.seriesName,
		LabelMatchers: strings.Join(matchers, ","),
		GroupBy:       c.podKey,
	})
	if err != nil {
		return "", err
	}
	return out.String(), nil
}
