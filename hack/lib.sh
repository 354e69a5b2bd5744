# shellcheck shell=bash
# Shared helpers for the hack/ scripts. Source it; it does not run anything.
#
# Tool versions live here, in one place: hack/build-tools.sh builds them,
# hack/cluster-up.sh runs them, docs/local-cluster.md explains them.

ETCD_VERSION=v3.6.16
KUBE_VERSION=v1.36.3
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0
# sigs.k8s.io/cli-utils, whose kstatus library hack/tools/kstatus wraps (tests/kstatus_health.rs).
KSTATUS_VERSION=v0.37.2

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Built tools live outside the repo, keyed by version, so every worktree and
# every `cargo clean` shares one build.
PREMIUM_CACHE="${PREMIUM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/premium-operator}"
# The cluster's state directory (pki, logs, pids, kubeconfig, etcd data).
# PREMIUM_CLUSTER_DIR picks another one, e.g. target/cluster-faults, for an
# independent second cluster (relative paths are taken from the repo root).
# Ports are chosen free at start, so two clusters never collide.
CLUSTER_DIR="${PREMIUM_CLUSTER_DIR:-target/cluster}"
[[ $CLUSTER_DIR == /* ]] || CLUSTER_DIR="${REPO_ROOT}/${CLUSTER_DIR}"
CLUSTER_DIR="${CLUSTER_DIR%/}"
# Serializes cluster-up/cluster-down callers of one state directory; it lives
# beside the directory, which cluster-down removes (target/cluster.lock for
# the default one).
CLUSTER_LOCK="${CLUSTER_DIR}.lock"

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# tool_version NAME -> the version the tool is built at.
tool_version() {
  case "$1" in
    etcd) echo "$ETCD_VERSION" ;;
    kube-apiserver | kube-controller-manager | kube-scheduler | kubectl) echo "$KUBE_VERSION" ;;
    kwok) echo "$KWOK_VERSION" ;;
    helm) echo "$HELM_VERSION" ;;
    kstatus) echo "$KSTATUS_VERSION" ;;
    *) die "unknown tool: $1" ;;
  esac
}

# tool_path NAME -> where the built binary lives (it may not exist yet).
tool_path() {
  echo "${PREMIUM_CACHE}/bin/$1-$(tool_version "$1")/$1"
}

ALL_TOOLS=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm kstatus)

# pid_is_ours PIDFILE -> true when the pid in PIDFILE is alive and its command
# line mentions a path inside our cluster directory (guards against a recycled
# pid, and target/cluster never matches target/cluster-faults).
pid_is_ours() {
  local pidfile=$1 pid
  [[ -f $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "${CLUSTER_DIR}/"
}

# stop_pidfile PIDFILE [GRACE_SECONDS]: TERM, wait, then KILL; only our own pid.
stop_pidfile() {
  local pidfile=$1 grace=${2:-10} pid i
  if pid_is_ours "$pidfile"; then
    pid=$(<"$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
      [[ -e /proc/$pid ]] || break
      # A zombie child of ours counts as gone.
      [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]] && break
      sleep 0.1
    done
    if [[ -e /proc/$pid ]] && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; then
      log "$(basename "$pidfile" .pid) (pid $pid) ignored TERM for ${grace}s; sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
      # KILL is delivered asynchronously: wait until the process is gone, or a successor
      # started at once finds its port and data directory still held (etcd then never
      # comes up, and nor does the API server).
      for ((i = 0; i < 50; i++)); do
        [[ -e /proc/$pid ]] || break
        [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]] && break
        sleep 0.1
      done
    fi
  fi
  rm -f "$pidfile"
}

# apiserver_ready: /readyz answers ok (needs APISERVER_PORT and the pki).
apiserver_ready() {
  local pki="${CLUSTER_DIR}/pki"
  curl -sf --max-time 2 --cacert "${pki}/ca.crt" --cert "${pki}/admin.crt" --key "${pki}/admin.key" \
    "https://127.0.0.1:${APISERVER_PORT}/readyz" >/dev/null 2>&1
}

# cluster_healthy: every component we started is alive, the admin kubeconfig
# exists and the API server is ready. Sets the *_PORT variables.
cluster_healthy() {
  local c
  [[ -f ${CLUSTER_DIR}/cluster.env && -f ${CLUSTER_DIR}/kubeconfig ]] || return 1
  for c in "${COMPONENTS[@]}"; do pid_is_ours "${CLUSTER_DIR}/pids/${c}.pid" || return 1; done
  # shellcheck source=/dev/null
  source "${CLUSTER_DIR}/cluster.env"
  apiserver_ready
}

# The components in start order; they are stopped in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

# stop_all_components: stop every component whose pid file we wrote.
stop_all_components() {
  local i
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    stop_pidfile "${CLUSTER_DIR}/pids/${COMPONENTS[i]}.pid"
  done
}

# launch_component NAME: start the command recorded in cmd/NAME by cluster-up
# (detached from the terminal, appending to logs/NAME.log, pid to
# pids/NAME.pid). fd 9 (the cluster lock) is not inherited.
launch_component() {
  local name=$1 args=()
  [[ -f ${CLUSTER_DIR}/cmd/${name} ]] || die "no recorded command for ${name} in ${CLUSTER_DIR}/cmd"
  mapfile -d '' -t args <"${CLUSTER_DIR}/cmd/${name}"
  setsid "${args[@]}" >>"${CLUSTER_DIR}/logs/${name}.log" 2>&1 </dev/null 9>&- &
  local pid=$! i
  echo "$pid" >"${CLUSTER_DIR}/pids/${name}.pid"
  # Until the child has exec'd, its command line is this script's, and pid_is_ours would call
  # it dead (seen on a loaded machine): wait for the exec (at most 5 s).
  for ((i = 0; i < 100; i++)); do
    pid_is_ours "${CLUSTER_DIR}/pids/${name}.pid" && break
    [[ -e /proc/$pid ]] || break
    sleep 0.05
  done
}
