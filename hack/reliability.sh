#!/usr/bin/env bash
# `make reliability`: the fault, bad-input and security suites at the issue's sizes
# (PREMIUM_RELIABILITY=1), one test at a time, then a table of every case with its result and
# figures (target/reliability/results.tsv). Operator-only faults use namespaces of the shared
# local cluster (started here if needed, and stopped again if it was not running before);
# faults that hit the API server or etcd start clusters of their own under
# target/cluster-<name> (PREMIUM_CLUSTER_DIR) and bring them down when done.
#
#   PREMIUM_FAULT_SEED=N   seed of the SIGKILL moments (default 20261125)
#   PREMIUM_RELIABILITY=0  the light rounds `make test` runs, with the table
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

export PREMIUM_RELIABILITY="${PREMIUM_RELIABILITY:-1}"
SUITES=(security_isolation reliability_bad_input reliability_faults)
SUITES+=(reliability_malformed)
# One feature must never hurt another: budget, input, teardown, drift, error handling.
SUITES+=(isolation_budget isolation_input isolation_teardown isolation_drift isolation_errors)
# Behaviour the core's unit tests cover, on the cluster (issue 16 item 6).
SUITES+=(behaviour_lifecycle)
RESULTS="${REPO_ROOT}/target/reliability/results-$(date +%Y%m%dT%H%M%S)-$$.tsv"
export PREMIUM_RESULTS_FILE="$RESULTS"

was_up=0
cluster_healthy && was_up=1
cleanup() {
  local d pid
  # A test killed halfway may leave its own cluster (target/cluster-<name>-<test pid>): bring
  # down those whose test process is gone. Never the shared one.
  for d in "${REPO_ROOT}"/target/cluster-*-[0-9]*; do
    [[ -d $d ]] || continue
    pid=${d##*-}
    kill -0 "$pid" 2>/dev/null && continue
    PREMIUM_CLUSTER_DIR="$d" "${REPO_ROOT}/hack/cluster-down.sh" >/dev/null 2>&1 || true
  done
  if [[ $was_up == 0 ]]; then "${REPO_ROOT}/hack/cluster-down.sh" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"${REPO_ROOT}/hack/cluster-up.sh" >/dev/null
export KUBECONFIG="${CLUSTER_DIR}/kubeconfig"
mkdir -p "$(dirname "$RESULTS")"
rm -f "$RESULTS"

log "==> building the tests"
cargo test --no-run "${SUITES[@]/#/--test=}" >/dev/null 2>&1 || cargo test --no-run "${SUITES[@]/#/--test=}"

status=0
durations=()
for suite in "${SUITES[@]}"; do
  log "==> cargo test --test ${suite} (PREMIUM_RELIABILITY=${PREMIUM_RELIABILITY})"
  start=$SECONDS
  if cargo test --test "$suite" -- --test-threads=1 2>&1 | grep -v '^{"timestamp"'; then
    durations+=("${suite}: passed in $((SECONDS - start))s")
  else
    status=1
    durations+=("${suite}: FAILED after $((SECONDS - start))s")
  fi
done

printf '\n%s\n' "Reliability, bad input and isolation (PREMIUM_RELIABILITY=${PREMIUM_RELIABILITY}, seed ${PREMIUM_FAULT_SEED:-20261125})"
{
  printf 'AREA\tCASE\tRESULT\tFIGURES\n'
  [[ -f $RESULTS ]] && sort -s -t $'\t' -k1,1 "$RESULTS"
} | column -t -s $'\t'
printf '\n'
printf '%s\n' "${durations[@]}"
((status == 0)) || printf '\nsome suites FAILED: rows missing from the table are the failed cases; see the output above\n'
exit "$status"
