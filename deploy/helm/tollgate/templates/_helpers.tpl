{{- define "tollgate.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tollgate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tollgate.labels" -}}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tollgate.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "tollgate.fullname" .) -}}
{{- end -}}

{{- /* The HostDelegations document tollgate reads (--host-delegations); its sha256 rolls the pods. */ -}}
{{- define "tollgate.hostDelegations" -}}
apiVersion: tollgate.dev/v1alpha1
kind: HostDelegations
undelegatedHosts: {{ .Values.undelegatedHosts | default "OldestClaim" }}
delegations:
{{- range .Values.hostDelegations }}
- namespace: {{ .namespace | toJson }}
  hosts:
  {{- range .hosts }}
  - {{ . | toJson }}
  {{- end }}
{{- end }}
{{ end -}}

{{- /* Whether tollgate gets a delegations file: delegations, or a stricter undelegatedHosts. */ -}}
{{- define "tollgate.hasHostDelegations" -}}
{{- if or .Values.hostDelegations (ne (.Values.undelegatedHosts | default "OldestClaim") "OldestClaim") -}}true{{- end -}}
{{- end -}}

{{- /* Whether the HTTP listener serves the envoy family (by default, or for a network). */ -}}
{{- define "tollgate.httpEnvoy" -}}
{{- $envoy := eq (.Values.http.family | default "") "envoy" -}}
{{- range .Values.http.trustedProxies }}{{ if hasSuffix "=envoy" . }}{{ $envoy = true }}{{ end }}{{ end -}}
{{- if $envoy }}true{{ end -}}
{{- end -}}

{{- /* Whether the HTTP listener serves nginx or Traefik on /auth (by default, or for a network). */ -}}
{{- define "tollgate.httpForwardAuth" -}}
{{- $yes := has (.Values.http.family | default "") (list "nginx" "traefik") -}}
{{- range .Values.http.trustedProxies }}{{ if or (hasSuffix "=nginx" .) (hasSuffix "=traefik" .) }}{{ $yes = true }}{{ end }}{{ end -}}
{{- if $yes }}true{{ end -}}
{{- end -}}

{{- define "tollgate.hostDelegationsPath" -}}
/etc/tollgate/host-delegations/delegations.yaml
{{- end -}}

{{- /* `selector` (a label selector string, as kubectl takes it) as LabelSelector
matchExpressions: the webhook's objectSelector, so that a deployment judges the policies it
serves and no others (a sharded deployment that is down blocks only its own shard). */ -}}
{{- define "tollgate.selectorExpressions" -}}
{{- range regexFindAll "[^,(]+(\\([^)]*\\))?" . -1 }}
{{- $term := trim . }}
{{- if regexMatch "^[^\\s=!()]+\\s+(in|notin)\\s*\\(.*\\)$" $term }}
{{- $key := regexReplaceAll "^([^\\s=!()]+)\\s+(in|notin)\\s*\\((.*)\\)$" $term "${1}" }}
{{- $operator := regexReplaceAll "^([^\\s=!()]+)\\s+(in|notin)\\s*\\((.*)\\)$" $term "${2}" }}
{{- $values := list }}
{{- range splitList "," (regexReplaceAll "^([^\\s=!()]+)\\s+(in|notin)\\s*\\((.*)\\)$" $term "${3}") }}
{{- $values = append $values (trim .) }}
{{- end }}
- key: {{ $key | toJson }}
  operator: {{ ternary "In" "NotIn" (eq $operator "in") }}
  values: {{ $values | toJson }}
{{- else if regexMatch "^[^\\s=!()]+\\s*(==|=|!=)\\s*[^\\s=!()]*$" $term }}
{{- $key := regexReplaceAll "^([^\\s=!()]+)\\s*(==|=|!=)\\s*([^\\s=!()]*)$" $term "${1}" }}
{{- $operator := regexReplaceAll "^([^\\s=!()]+)\\s*(==|=|!=)\\s*([^\\s=!()]*)$" $term "${2}" }}
{{- $value := regexReplaceAll "^([^\\s=!()]+)\\s*(==|=|!=)\\s*([^\\s=!()]*)$" $term "${3}" }}
- key: {{ $key | toJson }}
  operator: {{ ternary "NotIn" "In" (eq $operator "!=") }}
  values: [{{ $value | toJson }}]
{{- else if regexMatch "^!\\s*[^\\s=!()]+$" $term }}
- key: {{ trimPrefix "!" $term | trim | toJson }}
  operator: DoesNotExist
{{- else if regexMatch "^[^\\s=!()]+$" $term }}
- key: {{ $term | toJson }}
  operator: Exists
{{- else }}
{{- fail (printf "selector: cannot read %q as a label selector term (key=value, key!=value, key in (a,b), key notin (a,b), key, !key)" $term) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* "true" when the decision log hashes subjects: the key Secret is mounted. */}}
{{- define "tollgate.decisionLogKey" -}}
{{- if and .Values.decisionLog.enabled (hasPrefix "hash" .Values.decisionLog.subject) -}}
true
{{- end -}}
{{- end -}}
