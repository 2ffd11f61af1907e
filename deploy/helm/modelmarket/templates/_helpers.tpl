{{/* Names, labels and the rules every template shares. */}}

{{- define "modelmarket.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "modelmarket.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "modelmarket.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "modelmarket.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "modelmarket.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "modelmarket.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: call with (dict "root" $ "component" "gateway"). */}}
{{- define "modelmarket.selector" -}}
app.kubernetes.io/name: {{ include "modelmarket.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "modelmarket.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "modelmarket.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "modelmarket.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
"true" when the state lives in shared engines (PostgreSQL, NATS JetStream, S3): only then may several pods serve
one platform. With any of them embedded, the state is files in one pod's home.
*/}}
{{- define "modelmarket.scaleOut" -}}
{{- if and .Values.database.external .Values.bus.url .Values.blobs.url -}}true{{- end -}}
{{- end -}}

{{/* Refuse values that cannot work, naming the value and what to do. */}}
{{- define "modelmarket.validate" -}}
{{- $scaleOut := include "modelmarket.scaleOut" . -}}
{{- if and (not $scaleOut) (or .Values.gateway.autoscaling.enabled (gt (int .Values.gateway.replicas) 1)) -}}
{{- fail "gateway.replicas > 1 and gateway.autoscaling.enabled need the scale-out shape: set database.external, bus.url and blobs.url (embedded, each pod would have its own database, event log and artifacts)" -}}
{{- end -}}
{{- if and $scaleOut (not .Values.secrets.auditKey.name) -}}
{{- fail "secrets.auditKey.name is required in the scale-out shape: every gateway and the metering consumer sign the store's audit checkpoints, and must do so with one key (a Secret holding audit-checkpoints.ed25519.pem)" -}}
{{- end -}}
{{- if and .Values.gateway.autoscaling.enabled (gt (int .Values.gateway.autoscaling.minReplicas) (int .Values.gateway.autoscaling.maxReplicas)) -}}
{{- fail "gateway.autoscaling.minReplicas must not exceed gateway.autoscaling.maxReplicas" -}}
{{- end -}}
{{- if or (lt (int .Values.bus.partitions) 1) (gt (int .Values.bus.partitions) 64) -}}
{{- fail "bus.partitions must be 1..64 (MODELMARKET_BUS_PARTITIONS)" -}}
{{- end -}}
{{- if and .Values.bus.url (not (hasPrefix "nats://" .Values.bus.url)) -}}
{{- fail "bus.url must be nats://HOST:PORT (NATS JetStream), or empty for the embedded log" -}}
{{- end -}}
{{- if and .Values.blobs.url (not (hasPrefix "s3://" .Values.blobs.url)) -}}
{{- fail "blobs.url must be s3://BUCKET[/PREFIX], or empty for files in the home" -}}
{{- end -}}
{{- if and .Values.bus.url (contains "@" .Values.bus.url) -}}
{{- fail "bus.url holds credentials: put the URL in the Secret (secrets.busUrlKey) and set bus.urlFromSecret: true" -}}
{{- end -}}
{{- range $name, $value := .Values.settings -}}
{{- if not (hasPrefix "MODELMARKET_" $name) -}}
{{- fail (printf "settings.%s: only MODELMARKET_* settings go in the ConfigMap" $name) -}}
{{- end -}}
{{- if has $name (list "MODELMARKET_DATABASE_URL" "MODELMARKET_BUS_URL") -}}
{{- fail (printf "settings.%s: a URL with credentials belongs in the Secret (secrets.name), never in values" $name) -}}
{{- end -}}
{{- if has $name (list "MODELMARKET_HOME" "MODELMARKET_HOST" "MODELMARKET_PORT" "MODELMARKET_GATEWAY_ID" "MODELMARKET_BUS_NAMESPACE" "MODELMARKET_BUS_PARTITIONS" "MODELMARKET_LIMIT_LEASE_FRACTION" "MODELMARKET_BLOB_URL" "MODELMARKET_S3_ENDPOINT" "MODELMARKET_S3_REGION") -}}
{{- fail (printf "settings.%s is set by the chart: use its own value (home.path, gateway.port, bus.*, blobs.*)" $name) -}}
{{- end -}}
{{- end -}}
{{- range .Values.runnerPool.models -}}
{{- if not (regexMatch "^[a-z0-9][a-z0-9-]{0,30}$" (toString .name)) -}}
{{- fail (printf "runnerPool.models[].name %q: lowercase letters, digits and dashes, at most 31" (toString .name)) -}}
{{- end -}}
{{- if not .ref -}}
{{- fail (printf "runnerPool.models[%s].ref is required (NAME[@VERSION|@ALIAS])" .name) -}}
{{- end -}}
{{- end -}}
{{- if not (has .Values.mesh.mode (list "envoy" "istio" "none")) -}}
{{- fail "mesh.mode must be envoy, istio or none" -}}
{{- end -}}
{{- end -}}

{{/* The environment every platform container gets: the ConfigMap, then the Secret's references. */}}
{{- define "modelmarket.env" -}}
- name: MODELMARKET_GATEWAY_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- if .Values.database.external }}
- name: MODELMARKET_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.name }}
      key: {{ .Values.secrets.databaseUrlKey }}
{{- end }}
{{- if .Values.bus.urlFromSecret }}
- name: MODELMARKET_BUS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.name }}
      key: {{ .Values.secrets.busUrlKey }}
{{- end }}
{{- if and .Values.blobs.url .Values.blobs.credentialsFromSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.name }}
      key: {{ .Values.secrets.awsAccessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.name }}
      key: {{ .Values.secrets.awsSecretAccessKeyKey }}
{{- end }}
{{- end -}}

{{/* The home and /tmp volumes of a platform pod. */}}
{{- define "modelmarket.volumes" -}}
- name: home
{{- if include "modelmarket.scaleOut" . }}
  emptyDir:
    sizeLimit: {{ .Values.home.sizeLimit }}
{{- else }}
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-home" (include "modelmarket.fullname" .)) .Values.home.persistence.existingClaim }}
{{- end }}
- name: tmp
  emptyDir:
    {{- with .Values.tmp.medium }}
    medium: {{ . }}
    {{- end }}
    sizeLimit: {{ .Values.tmp.sizeLimit }}
{{- if .Values.secrets.auditKey.name }}
- name: audit-key
  secret:
    secretName: {{ .Values.secrets.auditKey.name }}
    defaultMode: 0400
    items:
      - key: {{ .Values.secrets.auditKey.key }}
        path: audit-checkpoints.ed25519.pem
{{- end }}
{{- end -}}

{{- define "modelmarket.volumeMounts" -}}
- name: home
  mountPath: {{ .Values.home.path }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/*
The audit key, copied from the Secret into HOME/keys: the platform reads it only as a regular file owned by its
own user with mode 0600 (never through a link), and a Secret volume gives links owned by root.
*/}}
{{- define "modelmarket.auditKeyInit" -}}
{{- if .Values.secrets.auditKey.name }}
- name: audit-key
  image: {{ include "modelmarket.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - sh
    - -c
    - umask 077 && mkdir -p "$MODELMARKET_HOME/keys" && cat /run/secrets/audit/audit-checkpoints.ed25519.pem > "$MODELMARKET_HOME/keys/audit-checkpoints.ed25519.pem"
  env:
    - name: MODELMARKET_HOME
      value: {{ .Values.home.path | quote }}
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - name: home
      mountPath: {{ .Values.home.path }}
    - name: audit-key
      mountPath: /run/secrets/audit
      readOnly: true
{{- end }}
{{- end -}}
