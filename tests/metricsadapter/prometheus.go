package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// promClient asks Prometheus' HTTP API (/api/v1/series and /api/v1/query)
// what Prometheus Adapter asks it.
type promClient struct {
	base   string
	client *http.Client
}

type promAnswer struct {
	Status    string          `json:"status"`
	Data      json.RawMessage `json:"data"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
}

type vectorSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// sample is one element of an instant vector.
type sample struct {
	labels map[string]string
	time   time.Time
	value  float64
}

func (p *promClient) get(ctx context.Context, path string, params url.Values) (json.RawMessage, error) {
	request, err := http.NewRequestWithContext(ctx, http.MethodPost, p.base+path, strings.NewReader(params.Encode()))
	if err != nil {
		return nil, err
	}
	request.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	response, err := p.client.Do(request)
	if err != nil {
		return nil, err
	}
	defer response.Body.Close()
	body, err := io.ReadAll(io.LimitReader(response.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	var answer promAnswer
	if err := json.Unmarshal(body, &answer); err != nil {
		return nil, fmt.Errorf("%s: HTTP %d: %.200s", path, response.StatusCode, body)
	}
	if answer.Status != "success" {
		return nil, fmt.Errorf("%s: %s: %s", path, answer.ErrorType, answer.Error)
	}
	return answer.Data, nil
}

// series lists the label sets of the series `match` selects since `start`.
func (p *promClient) series(ctx context.Context, match string, start time.Time) ([]map[string]string, error) {
	params := url.Values{
		"match[]": {match},
		"start":   {strconv.FormatFloat(float64(start.UnixMilli())/1000, 'f', 3, 64)},
	}
	data, err := p.get(ctx, "/api/v1/series", params)
	if err != nil {
		return nil, err
	}
	var found []map[string]string
	if err := json.Unmarshal(data, &found); err != nil {
		return nil, fmt.Errorf("/api/v1/series: %w", err)
	}
	return found, nil
}

// query evaluates `expr` now; only an instant vector is accepted, as by
// Prometheus Adapter.
func (p *promClient) query(ctx context.Context, expr string) ([]sample, error) {
	data, err := p.get(ctx, "/api/v1/query", url.Values{"query": {expr}})
	if err != nil {
		return nil, err
	}
	var result struct {
		ResultType string         `json:"resultType"`
		Result     []vectorSample `json:"result"`
	}
	if err := json.Unmarshal(data, &result); err != nil {
		return nil, fmt.Errorf("/api/v1/query: %w", err)
	}
	if result.ResultType != "vector" {
		return nil, fmt.Errorf("/api/v1/query %q: a %s, not a vector", expr, result.ResultType)
	}
	samples := make([]sample, 0, len(result.Result))
	for _, s := range result.Result {
		seconds, ok := s.Value[0].(float64)
		text, isText := s.Value[1].(string)
		if !ok || !isText {
			return nil, fmt.Errorf("/api/v1/query %q: malformed sample %v", expr, s.Value)
		}
		value, err := strconv.ParseFloat(text, 64)
		if err != nil {
			return nil, fmt.Errorf("/api/v1/query %q: %w", expr, err)
		}
		samples = append(samples, sample{
			labels: s.Metric,
			time:   time.UnixMilli(int64(seconds * 1000)),
			value:  value,
		})
	}
	return samples, nil
}
