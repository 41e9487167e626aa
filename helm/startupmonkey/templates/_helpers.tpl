{{/* The release's full name, at most 63 characters. */}}
{{- define "startupmonkey.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Standard labels on every object. */}}
{{- define "startupmonkey.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Labels that select the operator pod. */}}
{{- define "startupmonkey.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The operator's ServiceAccount name. */}}
{{- define "startupmonkey.serviceAccountName" -}}
{{- default (include "startupmonkey.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The image reference. */}}
{{- define "startupmonkey.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The operator's rules: exactly startupmonkey/rbac.py OPERATOR_RULES (a test compares). */}}
{{- define "startupmonkey.operatorRules" -}}
- apiGroups: [startupmonkey.dev]
  resources: [databasemonitors]
  verbs: [get, list, watch, patch]
- apiGroups: [startupmonkey.dev]
  resources: [databasemonitors/status]
  verbs: [patch]
- apiGroups: [startupmonkey.dev]
  resources: [databasemonitors/finalizers]
  verbs: [update]
- apiGroups: [startupmonkey.dev]
  resources: [remediations]
  verbs: [list, watch, delete]
- apiGroups: [""]
  resources: [configmaps, services, serviceaccounts]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, patch, delete]
{{- if .secrets }}
{{ include "startupmonkey.secretRules" . }}
{{- end }}
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [startupmonkey.dev]
  resources: [databasemonitors]
  verbs: [get, list, watch]
- apiGroups: [startupmonkey.dev]
  resources: [databasemonitors/status]
  verbs: [patch]
- apiGroups: [startupmonkey.dev]
  resources: [remediations, remediations/status]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}

{{/* startupmonkey/rbac.py SECRET_RULES. */}}
{{- define "startupmonkey.secretRules" -}}
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, patch]
{{- end -}}

{{/* The approver webhook's MutatingWebhookConfiguration (cluster-scoped, one per release). */}}
{{- define "startupmonkey.webhookConfigurationName" -}}
{{- printf "%s-approved-by" (include "startupmonkey.fullname" .) -}}
{{- end -}}

{{/* With the webhook on: exactly startupmonkey/rbac.py webhook_rules(<that name>). */}}
{{- define "startupmonkey.webhookRules" -}}
- apiGroups: [admissionregistration.k8s.io]
  resources: [mutatingwebhookconfigurations]
  resourceNames: [{{ include "startupmonkey.webhookConfigurationName" . }}]
  verbs: [create, patch]
{{- end -}}

{{/* Labels of the in-cluster dashboard's objects. */}}
{{- define "startupmonkey.dashboardLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: dashboard
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Labels that select the dashboard pod. */}}
{{- define "startupmonkey.dashboardSelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: dashboard
{{- end -}}
