#!/usr/bin/env bash
# Stop the local cluster started by hack/cluster-up.sh: exactly the processes
# whose pids it recorded (TERM, then KILL after a grace period), then remove
# target/cluster. Safe to run when nothing is running.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mkdir -p "${REPO_ROOT}/target"
mkdir -p "$(dirname "$CLUSTER_LOCK")"
exec 9>"$CLUSTER_LOCK"
flock 9

if [[ -d ${CLUSTER_DIR}/pids ]]; then
  log "stopping the local cluster"
  stop_all_components
fi
rm -rf "$CLUSTER_DIR"
log "local cluster down"
