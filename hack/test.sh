#!/usr/bin/env bash
# The project's full check (`make test`): formatting, clippy, then every test
# target against a real local cluster, which is brought down afterwards even
# when tests fail. Exits with the tests' status.
#
#   KEEP_CLUSTER=1     leave the cluster running afterwards (a cluster that
#                      was already running before is always left running)
#   CARGO_TARGET_DIR   respected as usual (the cluster state stays in
#                      <repo>/target/cluster either way)
#   extra arguments    passed to `cargo test`, e.g. hack/test.sh -- --nocapture
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

step() { log "==> $*"; }

step "cargo fmt --all -- --check"
cargo fmt --all -- --check
step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

# The alert and dashboard tests run promtool and Prometheus (Debian's prometheus package).
step "hack/install-promtool.sh"
"${REPO_ROOT}/hack/install-promtool.sh"

# A cluster someone started before (make cluster-up) is theirs: leave it up.
was_up=0
cluster_healthy && was_up=1

cluster_down() {
  if [[ ${KEEP_CLUSTER:-0} == 1 || $was_up == 1 ]]; then
    log "leaving the cluster up (KUBECONFIG=${CLUSTER_DIR}/kubeconfig); stop it with make cluster-down"
  else
    "${REPO_ROOT}/hack/cluster-down.sh" || log "warning: cluster-down failed"
  fi
}
trap cluster_down EXIT
trap 'exit 130' INT TERM

step "hack/cluster-up.sh"
"${REPO_ROOT}/hack/cluster-up.sh" >/dev/null

export KUBECONFIG="${CLUSTER_DIR}/kubeconfig"
step "cargo test --all-targets (KUBECONFIG=${KUBECONFIG})"
status=0
cargo test --all-targets "$@" || status=$?
if ((status == 0)); then
  step "cargo test --doc"
  cargo test --doc || status=$?
fi
exit "$status"
