{{- define "mpm.labels" -}}
app.kubernetes.io/name: mpm-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: meter-park
{{- end -}}
{{- define "mpm.selector" -}}
app.kubernetes.io/name: mpm-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
