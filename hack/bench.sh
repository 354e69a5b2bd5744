#!/usr/bin/env bash
# `make bench`: the convergence benchmark (benches/convergence.rs) on the local control
# plane. Starts the cluster if it is not up (and leaves it up), builds the operator in release
# mode, runs sizes 100 and 1000 and writes target/bench/results.json.
#
#   hack/bench.sh                      sizes 100 and 1000
#   hack/bench.sh --large              also 10,000 (when the nodes are too small, the bench adds a
#                                      KWOK node, kwok-bench-room, with the room that is short;
#                                      at 10,000 only the gated baseline runs: --all-baselines)
#   hack/bench.sh --sizes 100 --steady-seconds 10
#   hack/bench.sh --sizes 10000 --no-change   10,000 without the spec change to every feature
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

"${REPO_ROOT}/hack/cluster-up.sh" >/dev/null
export KUBECONFIG="${CLUSTER_DIR}/kubeconfig"
# A release build from cold takes about a quarter of an hour on 2 cores: like .ci/run, the build
# goes to a cache outside the clone unless CARGO_TARGET_DIR says otherwise.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/premium-operator/cargo-target}"
# The bench profile is the release profile: the operator binary it starts is a release build.
exec cargo bench --bench convergence -- "$@"
