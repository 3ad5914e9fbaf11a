{{/*
The agents' settings, worked out once from DataHub's executor names (top level, global.datahub.executor.*) with
agents.* winning where set, as a YAML map: agents.yaml (mode fleet) and the one-pod controller.yaml (mode
standalone) read them with `include "outpost.agentValues" . | fromYaml`.
*/}}
{{- define "outpost.agentValues" -}}
{{- $drain := .Values.agents.drainTimeout | toString -}}
{{- $drainSeconds := 150 -}}
{{- if hasSuffix "s" $drain }}{{ $drainSeconds = trimSuffix "s" $drain | int }}{{ end -}}
{{- if hasSuffix "m" $drain }}{{ $drainSeconds = mul (trimSuffix "m" $drain | int) 60 }}{{ end -}}
{{- $grace := add $drainSeconds 30 -}}
{{- if .Values.terminationGracePeriodSeconds -}}
{{- $grace = int .Values.terminationGracePeriodSeconds -}}
{{- $drainSeconds = max (sub $grace 30) 10 -}}
{{- end -}}
{{- $defaultResources := dict "requests" (dict "cpu" "500m" "memory" "1Gi") "limits" (dict "memory" "4Gi") -}}
{{- toYaml (dict
  "slots" (.Values.agents.slots | default .Values.global.datahub.executor.ingestions.max_workers | default 4)
  "drainSeconds" $drainSeconds
  "grace" $grace
  "resources" (.Values.agents.resources | default .Values.resources | default $defaultResources)
  "podAnnotations" (merge (dict) (.Values.agents.podAnnotations | default dict) (.Values.podAnnotations | default dict))
  "extraEnvs" (concat (.Values.extraEnvs | default list) (.Values.agents.extraEnvs | default list))
  "extraVolumes" (concat (.Values.extraVolumes | default list) (.Values.agents.extraVolumes | default list))
  "extraVolumeMounts" (concat (.Values.extraVolumeMounts | default list) (.Values.agents.extraVolumeMounts | default list))
  "nodeSelector" (.Values.agents.nodeSelector | default .Values.nodeSelector | default dict)
  "tolerations" (.Values.agents.tolerations | default .Values.tolerations | default list)
  "affinity" (.Values.agents.affinity | default .Values.affinity | default dict)
  "token" (eq .Values.agents.enrollment "token")
  "joinSecret" (.Values.agents.joinToken.secretRef | default (include "outpost.bootstrapToken" .))
) }}
{{- end -}}

{{/*
The agent container. `top` is the chart's context; `controllerUrl`/`joinUrl` are where it dials (the Service in
mode fleet, loopback in mode standalone); `portName` names its metrics port (unique in the pod).
*/}}
{{- define "outpost.agentContainer" -}}
{{- $top := .top -}}
{{- $a := include "outpost.agentValues" $top | fromYaml -}}
{{- $values := $top.Values -}}
- name: agent
  image: "{{ $values.image.agent.repository | default $values.image.repository }}:{{ $values.image.agent.tag | default $values.image.tag | default $top.Chart.AppVersion }}"
  imagePullPolicy: {{ $values.image.agent.pullPolicy | default $values.image.pullPolicy }}
  args:
    - --controller={{ .controllerUrl }}
    - --pool={{ $values.global.datahub.executor.pool_id }}
    - --slots={{ $a.slots }}
    - --drain-timeout={{ $a.drainSeconds }}s
    - --metrics-listen=0.0.0.0:{{ $values.agents.metricsPort }}
    - --state-dir=/var/lib/outpost-agent/state
    {{- if $a.token }}
    - --join-url={{ .joinUrl }}
    - --join-token-file=/etc/outpost/join/token
    {{- with $values.agents.caPin }}
    - --ca-pin={{ . }}
    {{- end }}
    {{- else }}
    - --tls-cert=/etc/outpost/tls/tls.crt
    - --tls-key=/etc/outpost/tls/tls.key
    - --tls-ca=/etc/outpost/tls/ca.crt
    {{- end }}
    {{- if $values.agents.secretsDir.secretName }}
    - --secrets-dir=/etc/outpost/secrets
    {{- end }}
    {{- range $values.agents.secretsManager }}
    - --secret={{ . }}
    {{- end }}
  env:
    - name: OUTPOST_LOG_FORMAT
      value: json
    # The pod name is the worker ID the agent asks for when it joins (stable in a StatefulSet).
    - name: DATAHUB_EXECUTOR_WORKER_ID
      valueFrom:
        fieldRef: {fieldPath: metadata.name}
    - name: TMPDIR
      value: /tmp
    # uv's cache beside the venvs (the image's OUTPOST_VENV_ROOT), on one file system: hardlinks work.
    - name: UV_CACHE_DIR
      value: /var/lib/outpost-agent/uv-cache
    {{- with $values.global.datahub.executor.uv_link_mode }}
    - name: UV_LINK_MODE
      value: {{ . | quote }}
    {{- end }}
    {{- if $values.agents.extraCaCerts.secretName }}
    - name: SSL_CERT_FILE
      value: /etc/outpost/extra-ca/ca.crt
    - name: REQUESTS_CA_BUNDLE
      value: /etc/outpost/extra-ca/ca.crt
    {{- end }}
    {{- with $a.extraEnvs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $values.agents.extraEnvsFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - {name: {{ .portName }}, containerPort: {{ $values.agents.metricsPort }}, protocol: TCP}
  livenessProbe:
    httpGet: {path: /healthz, port: {{ .portName }}}
    {{- include "outpost.probeTiming" (dict "probe" $values.livenessProbe "period" 10) | nindent 4 }}
  readinessProbe:
    httpGet: {path: /readyz, port: {{ .portName }}}
    {{- include "outpost.probeTiming" (dict "probe" $values.readinessProbe "period" 5) | nindent 4 }}
  securityContext:
    {{- merge (dict) ($values.securityContext | default dict) (include "outpost.containerSecurity" $top | fromYaml) | toYaml | nindent 4 }}
  resources:
    {{- toYaml $a.resources | nindent 4 }}
  volumeMounts:
    - {name: {{ .stateVolume }}, mountPath: /var/lib/outpost-agent}
    - {name: agent-tmp, mountPath: /tmp}
    {{- if $a.token }}
    - {name: join, mountPath: /etc/outpost/join, readOnly: true}
    {{- else }}
    - {name: agent-tls, mountPath: /etc/outpost/tls, readOnly: true}
    {{- end }}
    {{- if $values.agents.secretsDir.secretName }}
    - {name: secrets, mountPath: /etc/outpost/secrets, readOnly: true}
    {{- end }}
    {{- if $values.agents.extraCaCerts.secretName }}
    - {name: extra-ca, mountPath: /etc/outpost/extra-ca, readOnly: true}
    {{- end }}
    {{- with $a.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* The agent container's volumes, except its state volume (which depends on the workload). */}}
{{- define "outpost.agentVolumes" -}}
{{- $a := include "outpost.agentValues" . | fromYaml -}}
- name: agent-tmp
  emptyDir: {}
{{- if $a.token }}
- name: join
  secret:
    secretName: {{ $a.joinSecret }}
    items:
      - {key: {{ .Values.agents.joinToken.secretKey }}, path: token}
{{- else }}
- name: agent-tls
  secret:
    secretName: {{ .Values.agents.certificatesSecretName }}
{{- end }}
{{- if .Values.agents.secretsDir.secretName }}
- name: secrets
  secret:
    secretName: {{ .Values.agents.secretsDir.secretName }}
{{- end }}
{{- if .Values.agents.extraCaCerts.secretName }}
- name: extra-ca
  secret:
    secretName: {{ .Values.agents.extraCaCerts.secretName }}
    items:
      - {key: {{ .Values.agents.extraCaCerts.key }}, path: ca.crt}
{{- end }}
{{- with $a.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}
