{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "modelship.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: the release name, with the chart name appended unless it already contains it. */}}
{{- define "modelship.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s-operator" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "modelship.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: modelship
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{ include "modelship.selectorLabels" . }}
{{- end -}}

{{- define "modelship.selectorLabels" -}}
app.kubernetes.io/name: modelship-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "modelship.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "modelship.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag or repository@digest; the tag defaults to the chart's appVersion. */}}
{{- define "modelship.image" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Namespaces of the model pods the monitoring objects select. */}}
{{- define "modelship.monitoredNamespaces" -}}
{{- $ns := .Values.monitoring.podMonitor.namespaces | default .Values.watchNamespaces -}}
{{- if $ns }}
namespaceSelector:
  matchNames:
{{- range $ns }}
    - {{ . | quote }}
{{- end }}
{{- else }}
namespaceSelector:
  any: true
{{- end }}
{{- end -}}
