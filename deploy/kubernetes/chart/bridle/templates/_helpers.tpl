{{/* Labels every object of the chart carries. */}}
{{- define "bridle.labels" -}}
app.kubernetes.io/name: bridled
app.kubernetes.io/part-of: bridle
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The DaemonSet's selector: stable across upgrades. */}}
{{- define "bridle.selector" -}}
app.kubernetes.io/name: bridled
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "bridle.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/*
The policy files: the examples (files/policies, kept in sync with
policy/examples by `make manifests`) and policies.files, which may replace
an example of the same name. Rendered as a dict name -> content.
*/}}
{{- define "bridle.policies" -}}
{{- $out := dict -}}
{{- if .Values.policies.examples -}}
{{- range $path, $_ := .Files.Glob "files/policies/*.rego" -}}
{{- $_ := set $out (base $path) ($.Files.Get $path) -}}
{{- end -}}
{{- end -}}
{{- range $name, $content := .Values.policies.files -}}
{{- $_ := set $out $name $content -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}
