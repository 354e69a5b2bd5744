#!/usr/bin/env bash
# Start a real local Kubernetes control plane for tests and the demo:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and KWOK with
# fake Nodes, all on 127.0.0.1 with ports picked at start.
#
#   target/cluster/kubeconfig   admin kubeconfig (system:masters)
#   target/cluster/logs/        one log per component
#   target/cluster/pids/        one pid file per component
#   target/cluster/cluster.env  the ports in use
#   target/cluster/cmd/         each component's command line (for restarts)
#
# PREMIUM_CLUSTER_DIR=target/cluster-faults (any directory) starts an
# independent second cluster with its own state, ports and lock; the same
# variable points hack/cluster-down.sh and hack/cluster-faults.sh at it.
#
# Returns once /readyz is ok, every Node is Ready and the default
# ServiceAccount exists. A second call while the cluster is healthy does
# nothing. Stop it with hack/cluster-down.sh.
#
# Knobs (environment):
#   CLUSTER_UP_TIMEOUT   seconds to wait for each component (default 120)
#   PREMIUM_KWOK_NODES   number of fake Nodes (default 1: kwok-node-0, ...)
#   PREMIUM_NODE_CPU / PREMIUM_NODE_MEMORY / PREMIUM_NODE_PODS
#                        capacity of each fake Node (default 128 / 512Gi / 5000)
#   PREMIUM_APISERVER_ARGS extra kube-apiserver flags, space-separated (e.g.
#                        --watch-cache=false, or an audit log for fault tests)
#   PREMIUM_CONTROLLERS  kube-controller-manager --controllers (default '*'); a test
#                        that scales Deployments itself runs without the HPA controller:
#                        '*,-horizontal-pod-autoscaler-controller'
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TIMEOUT=${CLUSTER_UP_TIMEOUT:-120}
NODES=${PREMIUM_KWOK_NODES:-1}
NODE_CPU=${PREMIUM_NODE_CPU:-128}
NODE_MEMORY=${PREMIUM_NODE_MEMORY:-512Gi}
NODE_PODS=${PREMIUM_NODE_PODS:-5000}
SERVICE_CIDR=10.96.0.0/16
SERVICE_API_IP=10.96.0.1 # first address of SERVICE_CIDR: the `kubernetes` Service
POD_CIDR=10.244.0.0/16   # KWOK hands pod IPs out of this range

PKI="${CLUSTER_DIR}/pki"
LOGS="${CLUSTER_DIR}/logs"
PIDS="${CLUSTER_DIR}/pids"
KUBECONFIG_ADMIN="${CLUSTER_DIR}/kubeconfig"

for cmd in openssl curl flock ss base64; do
  command -v "$cmd" >/dev/null || die "$cmd is required but not on PATH"
done

"${REPO_ROOT}/hack/build-tools.sh"
KUBECTL=$(tool_path kubectl)

mkdir -p "${REPO_ROOT}/target"
# Serialize concurrent callers (e.g. two test runs); the lock outlives the
# state directory, which cluster-down removes.
mkdir -p "$(dirname "$CLUSTER_LOCK")"
exec 9>"$CLUSTER_LOCK"
flock 9

# --- health ------------------------------------------------------------------

if cluster_healthy; then
  log "cluster already running on https://127.0.0.1:${APISERVER_PORT}; nothing to do"
  printf 'export KUBECONFIG=%s\n' "$KUBECONFIG_ADMIN"
  exit 0
fi

# --- failure handling ----------------------------------------------------------

UP_DONE=0
on_exit() {
  local status=$?
  if ((UP_DONE == 0)); then
    stop_all_components
    printf 'cluster-up failed; processes stopped, logs kept in %s\n' "$LOGS" >&2
  fi
  exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT TERM
# Anything that fails without a message of its own still says where.
set -o errtrace
trap 'printf "error: cluster-up.sh line %s: \`%s\` failed\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

# fail COMPONENT MESSAGE: say what went wrong and show the component's log.
fail() {
  local component=$1
  shift
  printf '\nerror: %s\n' "$*" >&2
  if [[ -s ${LOGS}/${component}.log ]]; then
    printf -- '--- last 40 lines of %s ---\n' "${LOGS}/${component}.log" >&2
    tail -n 40 "${LOGS}/${component}.log" >&2
    printf -- '---\n' >&2
  fi
  if [[ $component == kube-apiserver ]]; then
    # Which readiness checks fail, if the server answers at all.
    curl -s --max-time 2 --cacert "${PKI}/ca.crt" --cert "${PKI}/admin.crt" --key "${PKI}/admin.key" \
      "https://127.0.0.1:${APISERVER_PORT}/readyz?verbose" 2>/dev/null | grep -F '[-]' >&2 || true
  fi
  exit 1
}

# wait_until COMPONENT WHAT COMMAND...: poll COMMAND until it succeeds; fail
# fast when COMPONENT's process has died, or after TIMEOUT seconds.
wait_until() {
  local component=$1 what=$2 deadline=$((SECONDS + TIMEOUT))
  shift 2
  until "$@"; do
    if ! pid_is_ours "${PIDS}/${component}.pid"; then
      fail "$component" "${component} exited while waiting for ${what}"
    fi
    if ((SECONDS >= deadline)); then
      fail "$component" "timed out after ${TIMEOUT}s waiting for ${what}"
    fi
    sleep 0.2
  done
}

# --- fresh state ---------------------------------------------------------------

# Whatever is left of an earlier, unhealthy cluster goes first.
stop_all_components
rm -rf "$CLUSTER_DIR"
mkdir -p "$PKI" "$LOGS" "$PIDS" "${CLUSTER_DIR}/cmd"

# --- ports ---------------------------------------------------------------------

# free_ports N: N distinct ports nobody uses, chosen below the kernel's
# ephemeral range so an outgoing connection cannot take one before we bind it.
free_ports() {
  local n=$1 low high port picked=() tries=0
  read -r low _ </proc/sys/net/ipv4/ip_local_port_range
  high=$((low - 1))
  ((high > 12000)) || high=60999 low=32768
  while ((${#picked[@]} < n)); do
    ((tries++ < 1000)) || die "could not find ${n} free ports"
    port=$((10000 + RANDOM % (high - 10000)))
    [[ " ${picked[*]} " == *" ${port} "* ]] && continue
    [[ -z $(ss -Hatn "( sport = :${port} )" 2>/dev/null) ]] || continue
    picked+=("$port")
  done
  echo "${picked[@]}"
}

ports=$(free_ports 5)
read -r ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT SCHEDULER_PORT <<<"$ports"
cat >"${CLUSTER_DIR}/cluster.env" <<EOF
# Ports of the running local cluster (written by hack/cluster-up.sh).
ETCD_PORT=${ETCD_PORT}
ETCD_PEER_PORT=${ETCD_PEER_PORT}
APISERVER_PORT=${APISERVER_PORT}
KCM_PORT=${KCM_PORT}
SCHEDULER_PORT=${SCHEDULER_PORT}
EOF

# --- certificates ----------------------------------------------------------------

log "generating certificates"
openssl_quiet() { openssl "$@" >/dev/null 2>>"${LOGS}/openssl.log" || fail openssl "openssl $1 failed"; }

# new_ca NAME COMMON_NAME
new_ca() {
  openssl_quiet genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "${PKI}/$1.key"
  openssl_quiet req -x509 -new -key "${PKI}/$1.key" -sha256 -days 3650 -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -addext "subjectKeyIdentifier=hash" \
    -out "${PKI}/$1.crt"
}
new_ca ca premium-operator-local-ca
# The aggregation layer's CA, as kubeadm sets it up: kube-apiserver presents
# front-proxy-client to aggregated API servers, and the controller-manager and
# scheduler read this CA from kube-system/extension-apiserver-authentication.
new_ca front-proxy-ca premium-operator-local-front-proxy-ca

# issue NAME SUBJECT EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES] [CA]
issue() {
  local name=$1 subject=$2 eku=$3 san=${4:-} ca=${5:-ca} ext="${PKI}/${1}.ext"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature"
    echo "extendedKeyUsage=${eku}"
    echo "authorityKeyIdentifier=keyid"
    [[ -z $san ]] || echo "subjectAltName=${san}"
  } >"$ext"
  openssl_quiet genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "${PKI}/${name}.key"
  openssl_quiet req -new -key "${PKI}/${name}.key" -subj "$subject" -out "${PKI}/${name}.csr"
  openssl_quiet x509 -req -in "${PKI}/${name}.csr" -CA "${PKI}/${ca}.crt" -CAkey "${PKI}/${ca}.key" -CAcreateserial \
    -sha256 -days 365 -extfile "$ext" -out "${PKI}/${name}.crt"
  rm -f "${PKI}/${name}.csr" "$ext"
}

issue apiserver "/CN=kube-apiserver" serverAuth \
  "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:${SERVICE_API_IP}"
issue admin "/O=system:masters/CN=premium-admin" clientAuth
issue kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
issue kube-scheduler "/CN=system:kube-scheduler" clientAuth
issue kwok "/O=system:masters/CN=kwok-controller" clientAuth
issue front-proxy-client "/CN=front-proxy-client" clientAuth "" front-proxy-ca
# Service-account tokens: the API server signs them, the token controller too.
openssl_quiet genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "${PKI}/sa.key"
openssl_quiet pkey -in "${PKI}/sa.key" -pubout -out "${PKI}/sa.pub"
chmod 600 "${PKI}"/*.key

# write_kubeconfig FILE CERT_NAME: a kubeconfig with everything embedded, so it
# can be copied anywhere.
write_kubeconfig() {
  local file=$1 name=$2
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: premium-local
  cluster:
    server: https://127.0.0.1:${APISERVER_PORT}
    certificate-authority-data: $(base64 -w0 <"${PKI}/ca.crt")
users:
- name: ${name}
  user:
    client-certificate-data: $(base64 -w0 <"${PKI}/${name}.crt")
    client-key-data: $(base64 -w0 <"${PKI}/${name}.key")
contexts:
- name: premium-local
  context:
    cluster: premium-local
    user: ${name}
    namespace: default
current-context: premium-local
EOF
  chmod 600 "$file"
}
for who in kube-controller-manager kube-scheduler kwok; do
  write_kubeconfig "${CLUSTER_DIR}/${who}.kubeconfig" "$who"
done
# The admin kubeconfig is written last, once the cluster is ready: its
# presence means "usable".

# --- processes -------------------------------------------------------------------

# start NAME COMMAND...: record COMMAND in cmd/NAME, then launch it (lib.sh):
# detached, log to logs/NAME.log, pid to pids/NAME.pid.
start() {
  local name=$1
  shift
  log "starting ${name}"
  printf '%s\0' "$@" >"${CLUSTER_DIR}/cmd/${name}"
  launch_component "$name"
}

# --unsafe-no-fsync: a throwaway test store; fsync would dominate on slow disks.
start etcd "$(tool_path etcd)" \
  --name=premium-local \
  --data-dir="${CLUSTER_DIR}/etcd" \
  --listen-client-urls="http://127.0.0.1:${ETCD_PORT}" \
  --advertise-client-urls="http://127.0.0.1:${ETCD_PORT}" \
  --listen-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
  --initial-advertise-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
  --initial-cluster="premium-local=http://127.0.0.1:${ETCD_PEER_PORT}" \
  --unsafe-no-fsync=true \
  --log-level=warn
etcd_healthy() { curl -sf --max-time 2 "http://127.0.0.1:${ETCD_PORT}/health" 2>/dev/null | grep -q '"health":"true"'; }
wait_until etcd "etcd /health on 127.0.0.1:${ETCD_PORT}" etcd_healthy

read -r -a APISERVER_EXTRA_ARGS <<<"${PREMIUM_APISERVER_ARGS:-}"
# Admission plugins are the defaults (PodSecurity, ServiceAccount, ... are on).
# --endpoint-reconciler-type=none: the advertise address is loopback, which an
#   Endpoints object may not hold; the `kubernetes` Service still exists.
# --allow-privileged=true: as on real clusters, PodSecurity admission (not
#   the server-wide switch) decides who may run privileged pods.
start kube-apiserver "$(tool_path kube-apiserver)" \
  --etcd-servers="http://127.0.0.1:${ETCD_PORT}" \
  --bind-address=127.0.0.1 \
  --advertise-address=127.0.0.1 \
  --secure-port="${APISERVER_PORT}" \
  --tls-cert-file="${PKI}/apiserver.crt" \
  --tls-private-key-file="${PKI}/apiserver.key" \
  --client-ca-file="${PKI}/ca.crt" \
  --authorization-mode=Node,RBAC \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="${PKI}/sa.pub" \
  --service-account-signing-key-file="${PKI}/sa.key" \
  --service-cluster-ip-range="${SERVICE_CIDR}" \
  --endpoint-reconciler-type=none \
  --requestheader-client-ca-file="${PKI}/front-proxy-ca.crt" \
  --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User \
  --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="${PKI}/front-proxy-client.crt" \
  --proxy-client-key-file="${PKI}/front-proxy-client.key" \
  --allow-privileged=true \
  --profiling=false \
  "${APISERVER_EXTRA_ARGS[@]}"
wait_until kube-apiserver "kube-apiserver /readyz on 127.0.0.1:${APISERVER_PORT}" apiserver_ready

# --flex-volume-plugin-dir: otherwise it creates /usr/libexec/kubernetes/...
# --leader-elect=false: a single instance; a restart need not wait out a lease.
start kube-controller-manager "$(tool_path kube-controller-manager)" \
  --kubeconfig="${CLUSTER_DIR}/kube-controller-manager.kubeconfig" \
  --authentication-kubeconfig="${CLUSTER_DIR}/kube-controller-manager.kubeconfig" \
  --authorization-kubeconfig="${CLUSTER_DIR}/kube-controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 \
  --secure-port="${KCM_PORT}" \
  --controllers="${PREMIUM_CONTROLLERS:-*}" \
  --use-service-account-credentials=true \
  --root-ca-file="${PKI}/ca.crt" \
  --service-account-private-key-file="${PKI}/sa.key" \
  --cluster-signing-cert-file="${PKI}/ca.crt" \
  --cluster-signing-key-file="${PKI}/ca.key" \
  --service-cluster-ip-range="${SERVICE_CIDR}" \
  --leader-elect=false \
  --kube-api-qps=200 \
  --kube-api-burst=400 \
  --flex-volume-plugin-dir="${CLUSTER_DIR}/flexvolume" \
  --profiling=false

cat >"${CLUSTER_DIR}/kube-scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: ${CLUSTER_DIR}/kube-scheduler.kubeconfig
  qps: 200
  burst: 400
leaderElection:
  leaderElect: false
EOF
start kube-scheduler "$(tool_path kube-scheduler)" \
  --config="${CLUSTER_DIR}/kube-scheduler.yaml" \
  --authentication-kubeconfig="${CLUSTER_DIR}/kube-scheduler.kubeconfig" \
  --authorization-kubeconfig="${CLUSTER_DIR}/kube-scheduler.kubeconfig" \
  --bind-address=127.0.0.1 \
  --secure-port="${SCHEDULER_PORT}" \
  --profiling=false

# No --node-port/--server-address: KWOK then serves nothing (no exec/logs
# endpoints), so it opens no port at all.
# --node-lease-duration-seconds: without it (0, the default when no
#   KwokConfiguration is given) KWOK renews no Lease, the node lifecycle
#   controller marks the node NotReady every ~50 s and KWOK flips it back,
#   tainting it unschedulable for seconds at a time.
start kwok "$(tool_path kwok)" \
  --kubeconfig="${CLUSTER_DIR}/kwok.kubeconfig" \
  --config="${REPO_ROOT}/hack/kwok/stages.yaml" \
  --manage-all-nodes=false \
  --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --cidr="${POD_CIDR}" \
  --node-ip=127.0.0.1 \
  --node-lease-duration-seconds=40

healthz() { curl -skf --max-time 2 "https://127.0.0.1:$1/healthz" >/dev/null 2>&1; }
wait_until kube-controller-manager "kube-controller-manager /healthz on 127.0.0.1:${KCM_PORT}" healthz "$KCM_PORT"
wait_until kube-scheduler "kube-scheduler /healthz on 127.0.0.1:${SCHEDULER_PORT}" healthz "$SCHEDULER_PORT"

# --- fake nodes ------------------------------------------------------------------

# --cache-dir: keep kubectl's discovery cache out of ~/.kube.
k() { "$KUBECTL" --kubeconfig="${CLUSTER_DIR}/kwok.kubeconfig" --cache-dir="${CLUSTER_DIR}/kubectl-cache" "$@"; }

node_names=()
for ((i = 0; i < NODES; i++)); do node_names+=("kwok-node-${i}"); done
for node in "${node_names[@]}"; do
  cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: ${node}
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: ${node}
    kubernetes.io/os: linux
    node-role.kubernetes.io/agent: ""
    type: kwok
spec: {}
status:
  allocatable: {cpu: "${NODE_CPU}", memory: "${NODE_MEMORY}", pods: "${NODE_PODS}"}
  capacity: {cpu: "${NODE_CPU}", memory: "${NODE_MEMORY}", pods: "${NODE_PODS}"}
EOF
done >"${CLUSTER_DIR}/nodes.yaml"
k apply -f "${CLUSTER_DIR}/nodes.yaml" >>"${LOGS}/kubectl.log" 2>&1 ||
  fail kubectl "could not create the fake nodes"

# Ready, and no taint left from before KWOK marked it Ready (the scheduler
# would otherwise keep pods Pending for a few seconds).
nodes_ready() {
  local node out
  for node in "${node_names[@]}"; do
    out=$(k get node "$node" -o jsonpath='{range .status.conditions[?(@.type=="Ready")]}{.status}{end}|{.spec.taints}' 2>/dev/null) || return 1
    [[ $out == "True|" ]] || return 1
  done
}
wait_until kwok "nodes ${node_names[*]} to be Ready and untainted" nodes_ready

# ServiceAccount admission refuses pods until the namespace's default
# ServiceAccount exists; the serviceaccount controller creates it.
default_sa_exists() { k get serviceaccount default --namespace default >/dev/null 2>&1; }
wait_until kube-controller-manager "ServiceAccount default/default" default_sa_exists

write_kubeconfig "${KUBECONFIG_ADMIN}.tmp" admin
mv -f "${KUBECONFIG_ADMIN}.tmp" "$KUBECONFIG_ADMIN"

UP_DONE=1
log "cluster ready: kube-apiserver https://127.0.0.1:${APISERVER_PORT}, ${#node_names[@]} node(s)"
printf 'export KUBECONFIG=%s\n' "$KUBECONFIG_ADMIN"
