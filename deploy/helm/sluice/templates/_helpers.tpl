{{/* Chart name, at most 63 characters. */}}
{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, at most 46 characters: object names add a suffix of up to 17
("-control-headless") and must stay within 63.
*/}}
{{- define "sluice.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 46 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sluice.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "sluice.labels" -}}
helm.sh/chart: {{ include "sluice.chart" . }}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sluice
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "gateway"). */}}
{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of one component's objects: (dict "ctx" $ "component" "gateway"). */}}
{{- define "sluice.componentLabels" -}}
{{ include "sluice.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "sluice.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{- define "sluice.controlName" -}}
{{- printf "%s-control" (include "sluice.fullname" .) }}
{{- end }}

{{- define "sluice.controlHeadlessName" -}}
{{- printf "%s-control-headless" (include "sluice.fullname" .) }}
{{- end }}

{{- define "sluice.gatewayName" -}}
{{- printf "%s-gateway" (include "sluice.fullname" .) }}
{{- end }}

{{- define "sluice.sidecarName" -}}
{{- printf "%s-sidecar" (include "sluice.fullname" .) }}
{{- end }}

{{- define "sluice.serviceAccountName" -}}
{{- .Values.control.serviceAccount.name | default (include "sluice.controlName" .) }}
{{- end }}

{{- define "sluice.tokensSecretName" -}}
{{- .Values.tokens.existingSecret | default (printf "%s-tokens" (include "sluice.fullname" .)) }}
{{- end }}

{{- define "sluice.keysSecretName" -}}
{{- printf "%s-keys" (include "sluice.fullname" .) }}
{{- end }}

{{/* The control plane's URL inside the cluster, as gateways and replicas use it. */}}
{{- define "sluice.controlUrl" -}}
{{- printf "http://%s.%s.svc:%v" (include "sluice.controlName" .) .Release.Namespace .Values.control.service.port }}
{{- end }}

{{/* Selector labels of the replica pods the control plane creates: fixed by sluice control, plus
     this release's instance label, which the control plane adds (--replica-label). */}}
{{- define "sluice.replicaSelectorLabels" -}}
app.kubernetes.io/managed-by: sluice-control
app.kubernetes.io/component: replica
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Pod-level fields every pod shares. */}}
{{- define "sluice.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/*
A probe: the handler the chart fixes, merged with the timing from values.
(dict "handler" (dict "httpGet" ...) "timing" .Values.x.readinessProbe)
*/}}
{{- define "sluice.probe" -}}
{{- toYaml (merge (deepCopy .handler) (.timing | default dict)) }}
{{- end }}

{{/* The name a model gets from its file: the file name without its extension. */}}
{{- define "sluice.modelName" -}}
{{- regexReplaceAll "\\.[^.]*$" (base .) "" }}
{{- end }}

{{/*
A credential from values, else the one already in the cluster's Secret, else a new random one.
Prints it base64-encoded. (dict "explicit" value "existing" secretData "key" "admin-token")
*/}}
{{- define "sluice.credential" -}}
{{- if .explicit }}
{{- .explicit | b64enc }}
{{- else if (get .existing .key) }}
{{- get .existing .key }}
{{- else }}
{{- randAlphaNum 48 | b64enc }}
{{- end }}
{{- end }}

{{/* Fails with a clear message when a credential set in values is too short or not printable. */}}
{{- define "sluice.checkCredential" -}}
{{- if and .value (not (regexMatch (printf "^[!-~]{%d,256}$" (int .min)) .value)) }}
{{- fail (printf "%s must be %d to 256 visible ASCII characters (no spaces)" .name (int .min)) }}
{{- end }}
{{- end }}

{{- define "sluice.checkLayout" -}}
{{- if not (has .Values.layout (list "platform" "sidecar")) }}
{{- fail (printf "layout must be \"platform\" or \"sidecar\", not %q" (toString .Values.layout)) }}
{{- end }}
{{- end }}
