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

{{/* The GMS flags' environment, shared by both workloads that talk to GMS. */}}
{{- define "outpost.gmsEnv" -}}
{{- with .Values.global.datahub.gms.url }}
- name: DATAHUB_GMS_URL
  value: {{ . | quote }}
{{- end }}
{{- if .Values.global.datahub.gms.secretRef }}
- name: DATAHUB_GMS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.global.datahub.gms.secretRef }}
      key: {{ .Values.global.datahub.gms.secretKey }}
{{- end }}
{{- end -}}
