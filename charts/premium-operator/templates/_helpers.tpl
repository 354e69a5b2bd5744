{{/* Chart name, at most 63 characters. */}}
{{- define "premium-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart unless the release name already contains the chart name. */}}
{{- define "premium-operator.fullname" -}}
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

{{/* Name of cluster-scoped objects: the namespace is part of it, so the same release name
in two namespaces does not collide. */}}
{{- define "premium-operator.clusterName" -}}
{{- printf "%s-%s" (include "premium-operator.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The watched namespaces as one comma-separated string, each once (empty: every namespace).
watchNamespace may be a name, a comma-separated list or a YAML list. */}}
{{- define "premium-operator.watchNamespaces" -}}
{{- $given := .Values.watchNamespace | default "" -}}
{{- if kindIs "string" $given }}{{ $given = splitList "," $given }}{{ end -}}
{{- $names := list -}}
{{- range $given }}{{ with trim (toString .) }}{{ $names = append $names . }}{{ end }}{{ end -}}
{{- join "," (uniq $names) -}}
{{- end }}

{{- define "premium-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "premium-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "premium-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "premium-operator.labels" -}}
helm.sh/chart: {{ include "premium-operator.chart" . }}
{{ include "premium-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: premium-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "premium-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "premium-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: pinned by digest when image.digest is set (the tag is then only a
label for people and is left out), else repository:tag. */}}
{{- define "premium-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Operator pods. Without leader election every pod would reconcile and write on its own, so
the chart runs at most one then, whatever replicaCount says (NOTES.txt tells so). */}}
{{- define "premium-operator.replicas" -}}
{{- if .Values.leaderElection.enabled }}
{{- .Values.replicaCount }}
{{- else }}
{{- min (int .Values.replicaCount) 1 }}
{{- end }}
{{- end }}

{{/* The rules the operator needs on the resources it watches and writes (everything but the
Lease, which lives in the release namespace). Verified against src/controller: */}}
{{- define "premium-operator.rules" -}}
# PremiumFeatures and PremiumPolicies: watched; features get the teardown finalizer by a patch,
# and are deleted by a cascade a policy asks for (deletion.whileDependents: Cascade).
- apiGroups: ["premium.dev"]
  resources: ["premiumfeatures"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["premium.dev"]
  resources: ["premiumpolicies"]
  verbs: ["get", "list", "watch"]
# Status is written with server-side apply.
- apiGroups: ["premium.dev"]
  resources: ["premiumfeatures/status", "premiumpolicies/status"]
  verbs: ["patch"]
# The objects owned by each feature: server-side apply (patch, which creates when absent),
# deletion of what is no longer wanted (the HPA while gated).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Events on transitions (one new Event each; no series is patched).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* The label matchers that pick this release's operator series in Prometheus (without
braces): by default the job a ServiceMonitor on the metrics Service gives them. */}}
{{- define "premium-operator.seriesSelector" -}}
{{- if .Values.metrics.prometheusRule.seriesSelector }}
{{- .Values.metrics.prometheusRule.seriesSelector }}
{{- else }}
{{- printf "job=%q,namespace=%q" (printf "%s-metrics" (include "premium-operator.fullname" .)) .Release.Namespace }}
{{- end }}
{{- end }}

{{/* An alert's labels: its severity, then the user's (which may override it). */}}
{{- define "premium-operator.alertLabels" -}}
{{- toYaml (merge (dict) .extra (dict "severity" .severity)) }}
{{- end }}
