#!/usr/bin/env bash
# Faults for a SECOND local cluster (never the shared default one): restart,
# freeze or thaw one control-plane process by its pid file, or compact etcd.
#
#   PREMIUM_CLUSTER_DIR=target/cluster-faults hack/cluster-faults.sh restart kube-apiserver
#   PREMIUM_CLUSTER_DIR=target/cluster-faults hack/cluster-faults.sh freeze kube-apiserver
#   PREMIUM_CLUSTER_DIR=target/cluster-faults hack/cluster-faults.sh thaw kube-apiserver
#   PREMIUM_CLUSTER_DIR=target/cluster-faults hack/cluster-faults.sh restart etcd
#   PREMIUM_CLUSTER_DIR=target/cluster-faults hack/cluster-faults.sh compact
#   PREMIUM_CLUSTER_DIR=target/cluster-faults hack/cluster-faults.sh wait-ready
#
# restart = TERM (KILL after a grace) and start the command cluster-up
# recorded in cmd/<component>, then wait until the API server is ready again.
# freeze/thaw = SIGSTOP/SIGCONT. compact = etcd compaction at the current
# revision (with --watch-cache=false on the API server, a watch resumed from
# an older resourceVersion then gets 410 Gone). Prints the seconds each step
# took on stdout for the callers' figures.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ ${CLUSTER_DIR} != "${REPO_ROOT}/target/cluster" ]] ||
  die "refusing to inject faults into the shared default cluster (${CLUSTER_DIR}); set PREMIUM_CLUSTER_DIR"
[[ -f ${CLUSTER_DIR}/cluster.env ]] || die "no cluster in ${CLUSTER_DIR}; start it with PREMIUM_CLUSTER_DIR=... hack/cluster-up.sh"
# shellcheck source=/dev/null
source "${CLUSTER_DIR}/cluster.env"

known() { [[ " ${COMPONENTS[*]} " == *" $1 "* ]] || die "unknown component $1 (one of: ${COMPONENTS[*]})"; }

wait_ready() {
  local deadline=$((SECONDS + ${1:-120}))
  until apiserver_ready; do
    ((SECONDS < deadline)) || die "kube-apiserver in ${CLUSTER_DIR} not ready after ${1:-120}s"
    sleep 0.2
  done
}

signal() {
  local sig=$1 name=$2 pidfile="${CLUSTER_DIR}/pids/$2.pid"
  pid_is_ours "$pidfile" || die "$name of ${CLUSTER_DIR} is not running"
  kill "-$sig" "$(<"$pidfile")"
}

start=$(date +%s.%N)
case "${1:-}" in
  restart)
    known "${2:?component}"
    stop_pidfile "${CLUSTER_DIR}/pids/$2.pid" 5
    launch_component "$2"
    wait_ready 120
    ;;
  freeze) known "${2:?component}"; signal STOP "$2" ;;
  thaw) known "${2:?component}"; signal CONT "$2" ;;
  compact)
    rev=$(curl -sf --max-time 5 -X POST "http://127.0.0.1:${ETCD_PORT}/v3/kv/range" -d '{"key":"AA=="}' |
      sed -n 's/.*"revision":"\([0-9]*\)".*/\1/p')
    [[ -n $rev ]] || die "could not read etcd's revision"
    curl -sf --max-time 30 -X POST "http://127.0.0.1:${ETCD_PORT}/v3/kv/compaction" \
      -d "{\"revision\":\"${rev}\",\"physical\":true}" >/dev/null || die "etcd compaction failed"
    log "etcd compacted at revision ${rev}"
    ;;
  wait-ready) wait_ready "${2:-120}" ;;
  *) die "usage: $0 restart|freeze|thaw COMPONENT | compact | wait-ready [SECONDS]" ;;
esac
end=$(date +%s.%N)
awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f\n", b - a }'
