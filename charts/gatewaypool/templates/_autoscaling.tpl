{{/*
The ConfigMap holding Prometheus Adapter's configuration: the name to give
the adapter chart as rules.existing.
*/}}
{{- define "gatewaypool.adapterRulesName" -}}
{{- default (printf "%s-adapter-rules" (include "gatewaypool.fullname" .)) .Values.autoscaling.prometheusAdapter.rules.name }}
{{- end }}

{{/*
Prometheus Adapter's configuration (its config.yaml). Each rule turns one
router series into a Pods metric of the custom metrics API: the label
"gateway" (the gateway's pod name) names the pod, "namespace" its namespace,
and the sum "by (<<.GroupBy>>)" (the gateway) adds up the router replicas
and, for the counters, the outcomes. The adapter loads the file strictly: a
field it does not know stops it. examples/autoscaling/ holds the same rules
as plain files.
*/}}
{{- define "gatewaypool.adapterRules" -}}
{{- $window := .Values.autoscaling.prometheusAdapter.rules.rateWindow -}}
rules:
  # Studies each gateway is receiving now, over all routers: a study counts
  # from its first instance until it has been quiet for quietSeconds.
  - seriesQuery: 'gatewaypool_router_studies_in_flight{namespace!="",gateway!=""}'
    resources:
      overrides:
        namespace: {resource: namespace}
        gateway: {resource: pod}
    name:
      matches: '^gatewaypool_router_studies_in_flight$'
      as: gatewaypool_studies_in_flight
    metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
  # Instances per second each gateway receives, all outcomes, all routers.
  # gateway="-" counts instances refused before a gateway was chosen.
  - seriesQuery: 'gatewaypool_router_instances_total{namespace!="",gateway!="",gateway!="-"}'
    resources:
      overrides:
        namespace: {resource: namespace}
        gateway: {resource: pod}
    name:
      matches: '^gatewaypool_router_instances_total$'
      as: gatewaypool_instances_per_second
    metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[{{ $window }}])) by (<<.GroupBy>>)'
  # Data set bytes per second each gateway receives, all outcomes, all routers.
  - seriesQuery: 'gatewaypool_router_bytes_total{namespace!="",gateway!="",gateway!="-"}'
    resources:
      overrides:
        namespace: {resource: namespace}
        gateway: {resource: pod}
    name:
      matches: '^gatewaypool_router_bytes_total$'
      as: gatewaypool_bytes_per_second
    metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[{{ $window }}])) by (<<.GroupBy>>)'
{{- end }}

{{/*
Checks of autoscaling.keda that values.schema.json cannot express: a
Prometheus address, maxReplicas not below minReplicas, and one ScaledObject
per pool (two would be two HPAs fighting over the pool's spec.replicas).
*/}}
{{- define "gatewaypool.validateKeda" -}}
{{- $seen := dict }}
{{- range .Values.autoscaling.keda.scaledObjects }}
{{- $ns := default $.Release.Namespace .namespace }}
{{- $key := printf "%s/%s" $ns .pool }}
{{- if hasKey $seen $key }}
{{- fail (printf "autoscaling.keda.scaledObjects lists pool %s twice: one pool, one autoscaler" $key) }}
{{- end }}
{{- $_ := set $seen $key true }}
{{- if lt (int .maxReplicas) (int (default 1 .minReplicas)) }}
{{- fail (printf "autoscaling.keda.scaledObjects: pool %s has maxReplicas %v below minReplicas %v" $key .maxReplicas (default 1 .minReplicas)) }}
{{- end }}
{{- end }}
{{- if and .Values.autoscaling.keda.scaledObjects (not .Values.autoscaling.keda.serverAddress) }}
{{- fail "autoscaling.keda.serverAddress is required with autoscaling.keda.scaledObjects: the Prometheus the triggers query" }}
{{- end }}
{{- end }}
