{{/* Names and labels shared by every object. */}}
{{- define "outpost.name" -}}
{{- printf "%s-outpost" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "outpost.controller" -}}{{ include "outpost.name" . }}-controller{{- end -}}
{{- define "outpost.agent" -}}{{ include "outpost.name" . }}-agent{{- end -}}

{{- define "outpost.labels" -}}
app.kubernetes.io/name: outpost
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "outpost.selector" -}}
app.kubernetes.io/name: outpost
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The controller's in-cluster gRPC address, as agents dial it. */}}
{{- define "outpost.controllerUrl" -}}
https://{{ include "outpost.controller" . }}.{{ .Release.Namespace }}.svc:{{ .Values.controller.ports.grpc }}
{{- end -}}

{{- define "outpost.joinUrl" -}}
https://{{ include "outpost.controller" . }}.{{ .Release.Namespace }}.svc:{{ .Values.controller.ports.join }}
{{- end -}}

{{/* A container security context for a read-only root file system, no privileges. */}}
{{- define "outpost.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The controller's GMS environment: the URL, and the token from DataHub's Secret or (global.datahub.auth.tokenFileEnabled)
as a file, read again whenever it changes. */}}
{{- define "outpost.gmsEnv" -}}
{{- $auth := .Values.global.datahub.auth | default dict }}
{{- with .Values.global.datahub.gms.url }}
- name: DATAHUB_GMS_URL
  value: {{ . | quote }}
{{- end }}
{{- if $auth.tokenFileEnabled }}
- name: DATAHUB_GMS_TOKEN_FILE
  value: {{ $auth.tokenFile | default "/etc/datahub/auth/token" | quote }}
{{- else if .Values.global.datahub.gms.secretRef }}
- name: DATAHUB_GMS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.global.datahub.gms.secretRef }}
      key: {{ .Values.global.datahub.gms.secretKey }}
{{- end }}
{{- end -}}

{{/*
How the token file reaches the controller: "secret" (DataHub's Secret mounted at DataHub's default path,
/etc/datahub/auth), "extra" (another path, e.g. a CSI or Vault mount: DataHub's extraVolumes/extraVolumeMounts are
mounted in the controller too) or "" (no token file).
*/}}
{{- define "outpost.tokenFileMount" -}}
{{- $auth := .Values.global.datahub.auth | default dict -}}
{{- if $auth.tokenFileEnabled -}}
{{- if and $auth.tokenFile (ne $auth.tokenFile "/etc/datahub/auth/token") -}}extra{{- else if .Values.global.datahub.gms.secretRef -}}secret{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the release's bootstrap join token (made once by the chart, kept across upgrades). */}}
{{- define "outpost.bootstrapToken" -}}{{ include "outpost.name" . }}-bootstrap-token{{- end -}}

{{/* Probe timing: DataHub's livenessProbe/readinessProbe fields where given, else a period of `period` s. */}}
{{- define "outpost.probeTiming" -}}
{{- $probe := .probe | default dict -}}
periodSeconds: {{ $probe.periodSeconds | default .period }}
{{- range $field := list "initialDelaySeconds" "timeoutSeconds" "failureThreshold" "successThreshold" }}
{{- with index $probe $field }}
{{ $field }}: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
The service account of a component ("controller" or "agent"). DataHub's top-level serviceAccount.name names one
account for both (the chart makes it when serviceAccount.create, else it must exist), so an IAM role bound to that
name (IRSA) serves the controller's SQS calls and the agents' Secrets Manager calls. Otherwise the chart makes one
per component (controller.serviceAccount / agents.serviceAccount), carrying serviceAccount.annotations too.
*/}}
{{- define "outpost.serviceAccountName" -}}
{{- $top := .top -}}
{{- $own := ternary $top.Values.controller.serviceAccount $top.Values.agents.serviceAccount (eq .component "controller") -}}
{{- $shared := $top.Values.serviceAccount | default dict -}}
{{- if $shared.name -}}
{{ $shared.name }}
{{- else if $own.create -}}
{{ include "outpost.name" $top }}-{{ .component }}
{{- else -}}
{{ $own.name | default "default" }}
{{- end -}}
{{- end -}}

{{- define "outpost.serviceAccount" -}}
{{- $top := .top -}}
{{- $own := ternary $top.Values.controller.serviceAccount $top.Values.agents.serviceAccount (eq .component "controller") -}}
{{- $shared := $top.Values.serviceAccount | default dict -}}
{{- $name := "" -}}
{{- $annotations := dict -}}
{{- if $shared.name -}}
{{- if and $shared.create (eq .component "controller") -}}
{{- $name = $shared.name -}}
{{- $annotations = $shared.annotations | default dict -}}
{{- end -}}
{{- else if $own.create -}}
{{- $name = printf "%s-%s" (include "outpost.name" $top) .component -}}
{{- $annotations = merge (dict) ($own.annotations | default dict) ($shared.annotations | default dict) -}}
{{- end -}}
{{- if $name }}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $name }}
  labels:
    {{- include "outpost.labels" $top | nindent 4 }}
  {{- with $annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: false
{{- end }}
{{- end -}}
