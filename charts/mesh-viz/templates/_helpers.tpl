{{- define "mesh-viz.tag" -}}{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}
