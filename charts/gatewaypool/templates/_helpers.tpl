{{/*
The chart name, or nameOverride.
*/}}
{{- define "gatewaypool.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: "<release>-gatewaypool", or the
release name alone when it already contains the chart name. Object names
are DNS labels: at most 63 characters.
*/}}
{{- define "gatewaypool.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"name-version" of the chart, for the helm.sh/chart label.
*/}}
{{- define "gatewaypool.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object of the release.
*/}}
{{- define "gatewaypool.commonLabels" -}}
helm.sh/chart: {{ include "gatewaypool.chart" . }}
app.kubernetes.io/name: {{ include "gatewaypool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gatewaypool
{{- end }}

{{/*
Labels of the operator's own objects (Deployment, ServiceAccount, RBAC).
*/}}
{{- define "gatewaypool.labels" -}}
{{ include "gatewaypool.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The operator pod's selector. The component "operator" keeps it apart from
the routers and gateways of the pools, which carry
app.kubernetes.io/name: gatewaypool too.
*/}}
{{- define "gatewaypool.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gatewaypool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The common labels for an object of component .component, merged with the
extra labels .extra from values; the chart's own labels win a clash.
Called as (dict "context" $ "component" "x" "extra" $map).
*/}}
{{- define "gatewaypool.labelsWith" -}}
{{- $labels := include "gatewaypool.commonLabels" .context | fromYaml }}
{{- $_ := set $labels "app.kubernetes.io/component" .component }}
{{- toYaml (merge $labels (.extra | default dict)) }}
{{- end }}

{{/*
The operator's ServiceAccount.
*/}}
{{- define "gatewaypool.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gatewaypool.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference: repository@digest when a digest is set, else
repository:tag (the tag defaults to the chart's appVersion). The operator
runs it and hands the same string to its routers (GATEWAYPOOL_IMAGE).
*/}}
{{- define "gatewaypool.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Checks across values that values.schema.json cannot express as clearly.
*/}}
{{- define "gatewaypool.validate" -}}
{{- if and (eq .Values.rbac.scope "namespaces") (empty .Values.watchNamespaces) }}
{{- fail "rbac.scope \"namespaces\" needs the namespaces in watchNamespaces" }}
{{- end }}
{{- if and .Values.examplePool.enabled (eq .Values.rbac.scope "namespaces") }}
{{- $ns := default .Release.Namespace .Values.examplePool.namespace }}
{{- if not (has $ns .Values.watchNamespaces) }}
{{- fail (printf "examplePool.namespace %q is not in watchNamespaces: the operator could not manage it" $ns) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The rules the operator needs in every namespace it manages pools in; the
same list goes into the ClusterRole (rbac.scope cluster) or into one Role
per watched namespace (rbac.scope namespaces).
*/}}
{{- define "gatewaypool.namespacedRules" -}}
# The GatewayPools: kopf lists and watches them and patches their
# annotations (progress, last handled spec) and their status; every reconcile
# pass reads its pool afresh ("get") under the pool's lock. These rules are
# checked against the calls the operator really makes, as the API server's
# audit log records them (tests/e2e/test_cluster_rbac.py): no more, no less.
- apiGroups: ["gatewaypool.io"]
  resources: ["gatewaypools"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["gatewaypool.io"]
  resources: ["gatewaypools/status"]
  verbs: ["patch"]
# Children carry an ownerReference with blockOwnerDeletion: true, which the
# OwnerReferencesPermissionEnforcement admission plugin allows only to who
# may update the owner's finalizers.
- apiGroups: ["gatewaypool.io"]
  resources: ["gatewaypools/finalizers"]
  verbs: ["update"]
# What a pool owns: read, create, repair drift (server-side apply is a
# patch, and creates what is missing with "create"). Deleting the pool deletes
# them through their ownerReferences (the API server's garbage collector).
# ConfigMaps also need "list" and "watch": the operator creates a Role that
# grants them to the routers, and Kubernetes lets it grant only what it holds.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "create", "patch"]
# Services are also deleted: the routers' headless Service NAME-router-pods
# when spec.router.spool goes.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create", "patch", "delete"]
# StatefulSets are also deleted, with propagationPolicy Orphan (pods and
# volumes kept), to change an immutable field (spec.gateway.storage,
# spec.router.spool.size) by creating them again; NetworkPolicies when
# spec.networkPolicy.enabled is false. The routers run as a Deployment, or as
# a StatefulSet with spec.router.spool: the kind the spec no longer asks for
# is deleted once the other is ready.
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch"]
# The HorizontalPodAutoscaler of a pool with spec.autoscaling; deleted when
# that field goes. The operator reads its status for the pool's Degraded
# condition; it never lists or watches autoscalers.
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "create", "patch", "delete"]
# Gateway and router pods: which gateways are Ready (a bucket moves only to a
# Ready gateway), which routers exist (whose reports a handover waits for).
# The routers' spool claims: which no router mounts (status.spool.idleClaims).
- apiGroups: [""]
  resources: ["pods", "persistentvolumeclaims"]
  verbs: ["list"]
# Events about the pools (kopf posts core/v1 Events, never patches them).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
Rules that exist only cluster-wide. kopf lists and watches CRDs to find
the GatewayPool resource; when it watches given namespaces it also lists
and watches namespaces, to notice one that is created later.
*/}}
{{- define "gatewaypool.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if .Values.operator.peering.enabled }}
# kopf peering: watch the peering object and keep this replica's record in it;
# the operator's own resync reads it to stand by with kopf.
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings", "kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- if .Values.watchNamespaces }}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end }}
