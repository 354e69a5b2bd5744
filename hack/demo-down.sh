#!/usr/bin/env bash
# `make demo-down`: stops the demo's operator and the local control plane.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
DEMO_DIR="${REPO_ROOT}/target/demo"
if [[ -f ${DEMO_DIR}/operator.pid ]]; then
  pid=$(cat "${DEMO_DIR}/operator.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    log "stopped the operator (pid $pid)"
  fi
  rm -f "${DEMO_DIR}/operator.pid" "${DEMO_DIR}/metrics.port"
fi
"${REPO_ROOT}/hack/cluster-down.sh"
