{{/* Chart name, overridable. */}}
{{- define "modelrollout.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped base name: "modelrollout" for a release called modelrollout, else "<release>-modelrollout".
At most 44 characters: objects are named <base>-<suffix>, and the longest suffix, -controller-metrics (19), must
leave a Service name within a DNS label's 63 (values.schema.json caps fullnameOverride the same). */}}
{{- define "modelrollout.fullname" -}}
{{- $base := "" -}}
{{- if .Values.fullnameOverride -}}
{{- $base = .Values.fullnameOverride | trunc 44 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- $base = .Release.Name | trunc 44 | trimSuffix "-" -}}
{{- else -}}
{{- $base = printf "%s-%s" .Release.Name $name | trunc 44 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- /* Helm takes release names (ml.prod, 1team) that make no Service name: refused here, not by the API server. */ -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $base) -}}
{{- fail (printf "the release name %q makes object names (%s-exporter) that are not DNS labels (a lowercase letter first, then letters, digits and '-'): choose another release name or set fullnameOverride" .Release.Name $base) -}}
{{- end -}}
{{- $base -}}
{{- end -}}

{{/* Labels on every object; deploy/ carries the same ones minus the two Helm adds. */}}
{{- define "modelrollout.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/name: {{ include "modelrollout.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: modelrollout
{{- end -}}

{{/* Selector labels of one component (controller | exporter): call with (list . "controller"). */}}
{{- define "modelrollout.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "modelrollout.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Labels of one component's objects. */}}
{{- define "modelrollout.componentLabels" -}}
{{- $root := index . 0 -}}
{{ include "modelrollout.labels" $root }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "modelrollout.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* Pod and container hardening shared by both Deployments ("restricted" Pod Security Standard). */}}
{{- define "modelrollout.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.runAsUser }}
runAsGroup: {{ .Values.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "modelrollout.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* A size as values.schema.json allows it (<n>Mi or <n>Gi), in MiB: the chart compares the volume with the
dataset budget. */}}
{{- define "modelrollout.mebibytes" -}}
{{- if hasSuffix "Gi" . -}}
{{- mul (trimSuffix "Gi" . | atoi) 1024 -}}
{{- else -}}
{{- trimSuffix "Mi" . | atoi -}}
{{- end -}}
{{- end -}}
