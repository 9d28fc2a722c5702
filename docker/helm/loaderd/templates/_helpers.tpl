{{/* Names and labels. */}}
{{- define "loaderd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "loaderd.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "loaderd.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "loaderd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "worker"). */}}
{{- define "loaderd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loaderd.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "loaderd.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Paths inside the daemon containers. */}}
{{- define "loaderd.socketPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.socket.hostPath) .Values.socket.name -}}
{{- end -}}

{{- define "loaderd.ssdDir" -}}/var/cache/loaderd{{- end -}}

{{/* The host directory shared with Bidirectional propagation: the FUSE mount point's parent. */}}
{{- define "loaderd.fuseHostDir" -}}
{{- $dir := dir (trimSuffix "/" .Values.fuse.mountPoint) -}}
{{- if or (eq $dir "/") (not (isAbs .Values.fuse.mountPoint)) -}}
{{- fail "fuse.mountPoint must be an absolute path below a directory of its own, e.g. /mnt/loaderd/data" -}}
{{- end -}}
{{- $dir -}}
{{- end -}}

{{/* Cluster: the token Secret and the etcd endpoints. */}}
{{- define "loaderd.tokenSecretName" -}}
{{- default (printf "%s-cluster-token" (include "loaderd.fullname" .)) .Values.cluster.existingSecret -}}
{{- end -}}

{{- define "loaderd.tokenSecretKey" -}}
{{- if .Values.cluster.existingSecret -}}{{ .Values.cluster.existingSecretKey }}{{- else -}}token{{- end -}}
{{- end -}}

{{- define "loaderd.etcdBundled" -}}
{{- if and .Values.cluster.enabled .Values.etcd.enabled (not .Values.etcd.externalEndpoints) -}}true{{- end -}}
{{- end -}}

{{- define "loaderd.etcdName" -}}
{{- printf "%s-etcd" (include "loaderd.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* etcd endpoints as a JSON list (empty when the cluster uses no etcd). */}}
{{- define "loaderd.etcdEndpoints" -}}
{{- $eps := list -}}
{{- if .Values.cluster.enabled -}}
{{- if .Values.etcd.externalEndpoints -}}
{{- $eps = .Values.etcd.externalEndpoints -}}
{{- else if .Values.etcd.enabled -}}
{{- $name := include "loaderd.etcdName" . -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $eps = append $eps (printf "http://%s-%d.%s-headless.%s.svc:%d" $name $i $name $.Release.Namespace (int $.Values.etcd.clientPort)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $eps -}}
{{- end -}}

{{/*
Byte counts. "loaderd.bytes" parses a size as the daemon does (an integer, or a number with
B, K/KiB, M/MiB, G/GiB, T/TiB (powers of 1024) or KB/MB/GB/TB (powers of 1000)).
*/}}
{{- define "loaderd.bytes" -}}
{{- if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) -}}
{{- int64 . -}}
{{- else -}}
{{- $s := trim (toString .) -}}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $s -}}
{{- $unit := lower (trim (trimPrefix $num $s)) -}}
{{- $units := dict "" 1 "b" 1 "k" 1024 "kib" 1024 "m" 1048576 "mib" 1048576 "g" 1073741824 "gib" 1073741824 "t" 1099511627776 "tib" 1099511627776 "kb" 1000 "mb" 1000000 "gb" 1000000000 "tb" 1000000000000 -}}
{{- if or (not $num) (not (hasKey $units $unit)) -}}
{{- fail (printf "%q is not a size such as 4MiB" $s) -}}
{{- end -}}
{{- mulf (float64 $num) (get $units $unit) | int64 -}}
{{- end -}}
{{- end -}}

{{/* A byte count as a Kubernetes quantity in Mi, rounded up. */}}
{{- define "loaderd.mebibytes" -}}
{{- $b := int64 . -}}
{{- printf "%dMi" (div (add $b 1048575) 1048576) -}}
{{- end -}}

{{/*
Memory of a daemon container: (dict "root" $ "resources" ... "memory" tierBytes "rings" ringBytes
"overhead" size). Memory the user set wins; otherwise request = tier + in-flight fetches +
metadata + overhead, limit = request + rings.
*/}}
{{- define "loaderd.resources" -}}
{{- $c := .root.Values.config -}}
{{- $req := add (int64 .memory) (include "loaderd.bytes" $c.cache.ufs.max_inflight_bytes) (include "loaderd.bytes" $c.cache.metadata.max_bytes) (include "loaderd.bytes" .overhead) -}}
{{- $res := deepCopy (default dict .resources) -}}
{{- $requests := default dict $res.requests -}}
{{- $limits := default dict $res.limits -}}
{{- if not (hasKey $requests "memory") -}}
{{- $_ := set $requests "memory" (include "loaderd.mebibytes" $req) -}}
{{- end -}}
{{- if not (hasKey $limits "memory") -}}
{{- $_ := set $limits "memory" (include "loaderd.mebibytes" (add $req (int64 .rings))) -}}
{{- end -}}
{{- $_ := set $res "requests" $requests -}}
{{- $_ := set $res "limits" $limits -}}
{{- toYaml $res -}}
{{- end -}}

{{/* TOML values. Strings go through toJson: a JSON string is a TOML basic string. */}}
{{- define "loaderd.toml.str" -}}{{ toString . | toJson }}{{- end -}}

{{- define "loaderd.toml.int" -}}{{ int64 . }}{{- end -}}

{{- define "loaderd.toml.bool" -}}
{{- if kindIs "bool" . -}}{{ . }}{{- else -}}{{ fail (printf "expected true or false, not %v" .) }}{{- end -}}
{{- end -}}

{{- define "loaderd.toml.float" -}}
{{- $s := toString . -}}
{{- if regexMatch "^-?[0-9]+$" $s -}}{{ $s }}.0{{- else -}}{{ $s }}{{- end -}}
{{- end -}}

{{/* Sizes and durations: a string with a unit, or a plain number (bytes, seconds). */}}
{{- define "loaderd.toml.quantity" -}}
{{- if kindIs "string" . -}}{{ toJson . }}{{- else -}}{{ int64 . }}{{- end -}}
{{- end -}}

{{- define "loaderd.toml.watermarks" -}}
{{- $w := default dict . -}}
{ high = {{ include "loaderd.toml.float" (default 0.95 $w.high) }}, low = {{ include "loaderd.toml.float" (default 0.8 $w.low) }} }
{{- end -}}

{{/*
loaderd.toml of the worker: (dict "root" $ "instance" "worker"). Every key the daemon has is
written out; node-specific ones (node_id, advertise_addr, token_file) come from the LOADERD_*
environment of the pod. The FUSE front reads the same file (its [fuse] and server sockets).
*/}}
{{- define "loaderd.config" -}}
{{- $v := .root.Values -}}
{{- $c := $v.config -}}
# loaderd.toml of the {{ .instance }} daemon, rendered by the loaderd Helm chart.
# node_id, advertise_addr, etcd endpoints and token_file also come from LOADERD_* variables.
{{- if not $c.mount }}
mount = []
{{- end }}

[server]
socket = {{ include "loaderd.socketPath" .root | toJson }}
{{- with $c.server.socket_group }}
socket_group = {{ include "loaderd.toml.str" . }}
{{- end }}
{{- with $c.server.tcp_addr }}
{{- if not $c.server.tcp_token_file }}
{{- fail "config.server.tcp_addr needs config.server.tcp_token_file: the TCP API serves only clients with its token" }}
{{- end }}
tcp_addr = {{ include "loaderd.toml.str" . }}
{{- end }}
{{- with $c.server.tcp_token_file }}
tcp_token_file = {{ include "loaderd.toml.str" . }}
{{- end }}
{{- with $c.server.tcp_admin_token_file }}
tcp_admin_token_file = {{ include "loaderd.toml.str" . }}
{{- end }}
{{- with $c.server.admin_group }}
admin_group = {{ include "loaderd.toml.str" . }}
{{- end }}
metrics_addr = "0.0.0.0:{{ $v.metrics.port | int }}"
readahead_blocks = {{ include "loaderd.toml.int" $c.server.readahead_blocks }}
load_parallelism = {{ include "loaderd.toml.int" $c.server.load_parallelism }}
log_level = {{ include "loaderd.toml.str" $c.server.log_level }}
shm_reads = {{ include "loaderd.toml.bool" $c.server.shm_reads }}
{{- if $c.server.shm_socket }}
shm_socket = {{ include "loaderd.toml.str" $c.server.shm_socket }}
{{- end }}
shm_max_leased = {{ include "loaderd.toml.quantity" $c.server.shm_max_leased }}
metrics_max_connections = {{ include "loaderd.toml.int" $c.server.metrics_max_connections }}
metrics_header_timeout = {{ include "loaderd.toml.quantity" $c.server.metrics_header_timeout }}
metrics_connection_timeout = {{ include "loaderd.toml.quantity" $c.server.metrics_connection_timeout }}
grpc_max_connections = {{ include "loaderd.toml.int" $c.server.grpc_max_connections }}
grpc_handshake_timeout = {{ include "loaderd.toml.quantity" $c.server.grpc_handshake_timeout }}
grpc_keepalive_interval = {{ include "loaderd.toml.quantity" $c.server.grpc_keepalive_interval }}
grpc_keepalive_timeout = {{ include "loaderd.toml.quantity" $c.server.grpc_keepalive_timeout }}
shm_max_leased_fraction = {{ include "loaderd.toml.float" $c.server.shm_max_leased_fraction }}
shm_max_connections = {{ include "loaderd.toml.int" $c.server.shm_max_connections }}
shm_max_connections_per_process = {{ include "loaderd.toml.int" $c.server.shm_max_connections_per_process }}

[cache]
block_size = {{ include "loaderd.toml.quantity" $c.cache.block_size }}
eviction = {{ include "loaderd.toml.str" $c.cache.eviction }}

[cache.memory]
capacity = {{ include "loaderd.toml.quantity" $c.cache.memory.capacity }}
watermarks = {{ include "loaderd.toml.watermarks" $c.cache.memory.watermarks }}
{{- if $v.ssd.enabled }}

[cache.ssd]
dir = {{ include "loaderd.ssdDir" .root | toJson }}
capacity = {{ include "loaderd.toml.quantity" $c.cache.ssd.capacity }}
watermarks = {{ include "loaderd.toml.watermarks" $c.cache.ssd.watermarks }}
{{- end }}

[cache.metadata]
ttl = {{ include "loaderd.toml.quantity" $c.cache.metadata.ttl }}
max_bytes = {{ include "loaderd.toml.quantity" $c.cache.metadata.max_bytes }}
manifest = {{ include "loaderd.toml.bool" $c.cache.metadata.manifest }}

[cache.ufs]
timeout = {{ include "loaderd.toml.quantity" $c.cache.ufs.timeout }}
retries = {{ include "loaderd.toml.int" $c.cache.ufs.retries }}
initial_backoff = {{ include "loaderd.toml.quantity" $c.cache.ufs.initial_backoff }}
max_backoff = {{ include "loaderd.toml.quantity" $c.cache.ufs.max_backoff }}
max_inflight_bytes = {{ include "loaderd.toml.quantity" $c.cache.ufs.max_inflight_bytes }}
mount_reserved_bytes = {{ include "loaderd.toml.quantity" $c.cache.ufs.mount_reserved_bytes }}
max_bandwidth = {{ include "loaderd.toml.quantity" $c.cache.ufs.max_bandwidth }}

[fuse]
# mount_point: unset; the FUSE DaemonSet's front (loaderd fuse) gets the mount point.
entry_timeout = {{ include "loaderd.toml.quantity" $c.fuse.entry_timeout }}
attr_timeout = {{ include "loaderd.toml.quantity" $c.fuse.attr_timeout }}
threads = {{ include "loaderd.toml.int" $c.fuse.threads }}
max_read = {{ include "loaderd.toml.quantity" $c.fuse.max_read }}
allow_other = {{ include "loaderd.toml.bool" $c.fuse.allow_other }}
default_permissions = {{ include "loaderd.toml.bool" $c.fuse.default_permissions }}
keep_cache = {{ include "loaderd.toml.bool" $c.fuse.keep_cache }}
object_mode = {{ include "loaderd.toml.int" $c.fuse.object_mode }}
worker_wait = {{ include "loaderd.toml.quantity" $c.fuse.worker_wait }}

[mounts]
allowed_roots = {{ default list $c.mounts.allowed_roots | toJson }}
allowed_endpoints = {{ default list $c.mounts.allowed_endpoints | toJson }}

[pipeline]
depth = {{ include "loaderd.toml.int" $c.pipeline.depth }}
workers = {{ include "loaderd.toml.int" $c.pipeline.workers }}
max_client_bytes = {{ include "loaderd.toml.quantity" $c.pipeline.max_client_bytes }}
max_total_bytes = {{ include "loaderd.toml.quantity" $c.pipeline.max_total_bytes }}
max_clients = {{ include "loaderd.toml.int" $c.pipeline.max_clients }}
max_pixels = {{ include "loaderd.toml.int" $c.pipeline.max_pixels }}
on_error = {{ include "loaderd.toml.str" $c.pipeline.on_error }}
max_depth = {{ include "loaderd.toml.int" $c.pipeline.max_depth }}
max_batch_size = {{ include "loaderd.toml.int" $c.pipeline.max_batch_size }}
max_workers = {{ include "loaderd.toml.int" $c.pipeline.max_workers }}
max_total_workers = {{ include "loaderd.toml.int" $c.pipeline.max_total_workers }}
max_image_size = {{ include "loaderd.toml.int" $c.pipeline.max_image_size }}
max_device_bytes = {{ include "loaderd.toml.quantity" $c.pipeline.max_device_bytes }}

[prefetch]
enabled = {{ include "loaderd.toml.bool" $c.prefetch.enabled }}
max_bytes_per_loader = {{ include "loaderd.toml.quantity" $c.prefetch.max_bytes_per_loader }}
max_bytes = {{ include "loaderd.toml.quantity" $c.prefetch.max_bytes }}
concurrency = {{ include "loaderd.toml.int" $c.prefetch.concurrency }}

[gpu]
mode = {{ include "loaderd.toml.str" $c.gpu.mode }}

[cluster]
{{- if $v.cluster.enabled }}
listen_addr = "0.0.0.0:{{ $v.worker.peerPort | int }}"
{{- end }}
members = [
{{- range $i, $m := $c.cluster.members }}{{ if $i }}, {{ end }}{ id = {{ include "loaderd.toml.str" $m.id }}, addr = {{ include "loaderd.toml.str" $m.addr }} }{{ end -}}
]
etcd_endpoints = {{ include "loaderd.etcdEndpoints" .root }}
etcd_prefix = {{ include "loaderd.toml.str" $c.cluster.etcd_prefix }}
lease_ttl = {{ include "loaderd.toml.quantity" $c.cluster.lease_ttl }}
replication = {{ include "loaderd.toml.int" $c.cluster.replication }}
peer_timeout = {{ include "loaderd.toml.quantity" $c.cluster.peer_timeout }}
suspect_time = {{ include "loaderd.toml.quantity" $c.cluster.suspect_time }}

[cluster.schedules]
refresh = {{ include "loaderd.toml.quantity" $c.cluster.schedules.refresh }}
expiry = {{ include "loaderd.toml.quantity" $c.cluster.schedules.expiry }}
max_per_peer = {{ include "loaderd.toml.int" $c.cluster.schedules.max_per_peer }}
max_total = {{ include "loaderd.toml.int" $c.cluster.schedules.max_total }}
max_bytes = {{ include "loaderd.toml.quantity" $c.cluster.schedules.max_bytes }}
build_concurrency = {{ include "loaderd.toml.int" $c.cluster.schedules.build_concurrency }}
{{- range $i, $m := $c.mount }}
{{- if not (and $m.path $m.uri) }}
{{- fail (printf "config.mount[%d] needs path and uri" $i) }}
{{- end }}

[[mount]]
path = {{ include "loaderd.toml.str" $m.path }}
uri = {{ include "loaderd.toml.str" $m.uri }}
{{- $pairs := list }}
{{- range $k, $val := $m.options }}
{{- if regexMatch "(?i)secret|token|password" $k }}
{{- fail (printf "config.mount[%d].options.%s: credentials do not belong in the ConfigMap; use s3.existingSecret" $i $k) }}
{{- end }}
{{- $pairs = append $pairs (printf "%s = %s" (toJson $k) (include "loaderd.toml.str" $val)) }}
{{- end }}
options = { {{- join ", " $pairs -}} }
{{- end }}
{{ end -}}

{{/*
Environment of the worker: (dict "root" $ "instance" "worker"). The node id and the advertise
address are per node; the token is a file from the Secret.
*/}}
{{- define "loaderd.env" -}}
{{- $v := .root.Values -}}
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: LOADERD_NODE_ID
  value: "$(NODE_NAME)"
{{- if $v.cluster.enabled }}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: {{ ternary "status.hostIP" "status.podIP" $v.hostNetwork }}
- name: LOADERD_ADVERTISE_ADDR
  value: "$(POD_IP):{{ $v.worker.peerPort | int }}"
{{- $eps := include "loaderd.etcdEndpoints" .root | fromJsonArray }}
{{- if $eps }}
- name: LOADERD_ETCD_ENDPOINTS
  value: {{ join "," $eps | quote }}
{{- end }}
- name: LOADERD_CLUSTER_TOKEN_FILE
  value: /etc/loaderd-token/{{ include "loaderd.tokenSecretKey" .root }}
{{- end }}
{{- with $v.s3.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $v.s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $v.s3.secretAccessKeyKey }}
{{- end }}
{{- end -}}

{{/* Probes on /healthz of the metrics listener. */}}
{{- define "loaderd.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 5
  failureThreshold: 120
readinessProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
{{- end -}}

{{/* Pod annotations of a daemon: (dict "root" $ "port" metricsPort "extra" podAnnotations). */}}
{{- define "loaderd.podAnnotations" -}}
checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
{{- if .root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | int | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Scheduling shared by the daemons and the example Job. */}}
{{- define "loaderd.scheduling" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Volumes both daemons mount: config, token, /dev/shm and /tmp. */}}
{{- define "loaderd.commonVolumes" -}}
- name: config
  configMap:
    name: {{ include "loaderd.fullname" . }}
{{- if .Values.cluster.enabled }}
- name: cluster-token
  secret:
    secretName: {{ include "loaderd.tokenSecretName" . }}
    defaultMode: 0440
{{- end }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.worker.devShmSizeLimit }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "loaderd.commonMounts" -}}
- name: config
  mountPath: /etc/loaderd
  readOnly: true
{{- if .Values.cluster.enabled }}
- name: cluster-token
  mountPath: /etc/loaderd-token
  readOnly: true
{{- end }}
- name: dshm
  mountPath: /dev/shm
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* The SSD tier's volume: (dict "root" $ "instance" "worker"|"fuse" "capacity" size). */}}
{{- define "loaderd.ssdVolume" -}}
{{- $v := .root.Values -}}
{{- if eq $v.ssd.volume "hostPath" }}
- name: ssd
  hostPath:
    path: {{ $v.ssd.hostPath }}
    type: DirectoryOrCreate
{{- else if eq $v.ssd.volume "localPV" }}
- name: ssd
  ephemeral:
    volumeClaimTemplate:
      metadata:
        labels:
          {{- include "loaderd.selectorLabels" (dict "root" .root "component" .instance) | nindent 10 }}
      spec:
        accessModes: ["ReadWriteOnce"]
        {{- with $v.ssd.localPV.storageClassName }}
        storageClassName: {{ . }}
        {{- end }}
        resources:
          requests:
            storage: {{ $v.ssd.localPV.size | default (include "loaderd.mebibytes" (mulf (include "loaderd.bytes" .capacity) 1.1 | int64)) }}
{{- else }}
{{- fail (printf "ssd.volume must be hostPath or localPV, not %q" $v.ssd.volume) }}
{{- end }}
{{- end -}}
