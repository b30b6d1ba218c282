{{/* Name of the chart, overridable. */}}
{{- define "keyward.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name of the release's objects (63 characters at most, a DNS label). */}}
{{- define "keyward.fullname" -}}
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

{{- define "keyward.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "keyward.labels" -}}
helm.sh/chart: {{ include "keyward.chart" . }}
{{ include "keyward.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: keyward
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that select the operator's pods. */}}
{{- define "keyward.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keyward.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "keyward.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "keyward.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: repository:tag, or repository@digest when a digest is given. */}}
{{- define "keyward.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Namespace of the leader-election Lease. */}}
{{- define "keyward.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.leaseNamespace }}
{{- end }}

{{/*
Checks that the values make sense together; the schema checks each value alone. Included by the Deployment, so every
render runs it.
*/}}
{{- define "keyward.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: without a Lease every replica would reconcile and write" }}
{{- end }}
{{- if eq .Values.rbac.scope "namespaced" }}
{{- if not .Values.watchNamespaces }}
{{- fail "rbac.scope=namespaced needs watchNamespaces: the namespaces the operator watches (one Role in each)" }}
{{- end }}
{{- if ne (len .Values.watchNamespaces) (len (uniq .Values.watchNamespaces)) }}
{{- fail "watchNamespaces lists a namespace twice" }}
{{- end }}
{{- else if .Values.watchNamespaces }}
{{- fail "watchNamespaces is only used with rbac.scope=namespaced; with rbac.scope=cluster the operator watches every namespace" }}
{{- end }}
{{- end }}

{{/*
The namespaced rules the controllers need, shared by the ClusterRole (cluster scope) and each namespace's Role
(namespaced scope). Keep in step with the API calls in src/apikey, src/ratelimit and src/operator; tests/helm.rs
holds the same list and fails when they differ.
*/}}
{{- define "keyward.rules" -}}
# ApiKeys and RateLimitPolicies: watched by the controllers; an ApiKey is also read by name to confirm a rotation
# request before acting on it.
- apiGroups: [keyward.dev]
  resources: [apikeys]
  verbs: [get, list, watch]
- apiGroups: [keyward.dev]
  resources: [ratelimitpolicies]
  verbs: [list, watch]
# Their status, written with server-side apply through the status subresource.
- apiGroups: [keyward.dev]
  resources: [apikeys/status, ratelimitpolicies/status]
  verbs: [patch]
# The keys' Secrets: watched metadata-only (which still needs list and watch), read once per version, created and
# replaced. Delete only to revoke: an `immutable` Secret that cannot be emptied, or another Secret a revoked key
# still controls. The admission guard (admission-guards.yaml) limits every write of the operator's identity to
# Secrets that carry Keyward's label and an ApiKey owner.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, update, delete]
# A Prometheus usage source's CA bundle may sit in a ConfigMap (its credentials sit in Secrets, read with `get`
# above); the admission guard lets a tenant name only ConfigMaps and Secrets they may read themselves.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get]
# usage.scrape.service: the Service's EndpointSlices, followed with a watch as the gateway scales.
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
# rolloutRestart targets: read the pod template annotation, patch it (what `kubectl rollout restart` does).
- apiGroups: [apps]
  resources: [deployments, statefulsets, daemonsets]
  verbs: [get, patch]
# Gateway scaling, only through the scale subresource.
- apiGroups: [apps]
  resources: [deployments/scale, statefulsets/scale]
  verbs: [get, patch]
{{- range .Values.rbac.extraScaleTargets }}
- apiGroups: {{ toJson .apiGroups }}
  resources:
  {{- range .resources }}
  - {{ printf "%s/scale" . }}
  {{- end }}
  verbs: [get, patch]
{{- end }}
# A HorizontalPodAutoscaler on the same target means hands off (ScalingConflict): read-only.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [list]
# RateLimitPolicy spec.enforce: the Envoy Gateway BackendTrafficPolicy each such policy owns, watched (Keyward's
# label), read by name (to tell an object someone else owns), applied server-side, deleted when enforce is removed.
# Discovery of gateway.envoyproxy.io needs no rule. The tenant guard lets a user set enforce only if they may
# create and patch BackendTrafficPolicies themselves.
- apiGroups: [gateway.envoyproxy.io]
  resources: [backendtrafficpolicies]
  verbs: [get, list, watch, create, patch, delete]
# Events (events.k8s.io/v1, each one created: src/events.rs).
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* The cluster-scoped rules the operator needs in every mode: it checks its two CRDs by name at start; with
metrics.auth it asks the API server who a scraper is and whether it may get /metrics. */}}
{{- define "keyward.crdRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  resourceNames: [apikeys.keyward.dev, ratelimitpolicies.keyward.dev]
  verbs: [get]
{{- if .Values.metrics.auth }}
# --metrics-auth: TokenReview, then SubjectAccessReview (src/operator/metrics_auth.rs).
- apiGroups: [authentication.k8s.io]
  resources: [tokenreviews]
  verbs: [create]
- apiGroups: [authorization.k8s.io]
  resources: [subjectaccessreviews]
  verbs: [create]
{{- end }}
{{- end }}
