{{/* Names and labels, as `helm create` makes them. */}}

{{- define "longvila-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: object name prefix, at most 52 characters so suffixes still fit 63. */}}
{{- define "longvila-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Cluster-scoped objects (ClusterRole, ClusterRoleBinding) carry the release namespace:
two releases of the same name in different namespaces must not share them. */}}
{{- define "longvila-operator.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "longvila-operator.fullname" .) }}
{{- end }}

{{- define "longvila-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "longvila-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "longvila-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "longvila-operator.labels" -}}
helm.sh/chart: {{ include "longvila-operator.chart" . }}
{{ include "longvila-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: longvila
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "longvila-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "longvila-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "longvila-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The namespaces a namespaced operator watches, as a JSON list (default: the release namespace). */}}
{{- define "longvila-operator.watchNamespaces" -}}
{{- if .Values.watchNamespaces }}
{{- toJson .Values.watchNamespaces }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{/* Rules for the namespaced resources the operator reads and writes: a Role per watched
namespace, or part of the ClusterRole when clusterWide. Derived from the operator's code:
handlers.py (kopf indexes and watches), apply.py (the only module that writes). */}}
{{- define "longvila-operator.namespacedRules" -}}
# handlers.py: the job_bodies index and job_event watch; apply.py delete_job (ttlSecondsAfterFinished).
- apiGroups: ["longvila.io"]
  resources: ["longvilajobs"]
  verbs: ["list", "watch", "delete"]
# apply.py patch_status: merge patch of the status subresource.
- apiGroups: ["longvila.io"]
  resources: ["longvilajobs/status"]
  verbs: ["patch"]
# handlers.py: the job_pods and gpu_pods indexes; apply.py: server-side apply (create on
# first apply, patch after) and delete_pod.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# apply.py: server-side apply of each stage's trainer ConfigMap and headless Service.
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["create", "patch"]
# apply.py post_event and kopf's own warnings (settings.posting).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# handlers.py watch_workloads: Kueue's Workloads (queue status, docs/kueue.md); only watched
# when the API server serves them, harmless where Kueue is not installed.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["list", "watch"]
{{- end }}

{{/* Cluster-scoped reads, in both modes. */}}
{{- define "longvila-operator.clusterRules" -}}
# handlers.py: the node_infos index and node_event watch (placement reads GPU nodes).
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list", "watch"]
# kopf's resource observer: it lists and watches CRDs to notice the LongVILAJob CRD
# appearing or changing (without it kopf only scans once, at start, and logs a warning).
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if not .Values.clusterWide }}
# kopf's namespace observer (namespaced mode only): it lists and watches namespaces to
# notice a watched namespace being created or deleted.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end }}
