#!/usr/bin/env bash
# Build the local control plane's binaries from the Go module proxy into a
# cache outside the repo, keyed by version:
#   $PREMIUM_CACHE/bin/<name>-<version>/<name>
# (PREMIUM_CACHE defaults to ${XDG_CACHE_HOME:-~/.cache}/premium-operator).
#
# Does nothing when every binary is already there. Safe to interrupt: each
# build goes to a temporary directory and is renamed into place at the end.
# Go's own GOCACHE/GOMODCACHE stay where Go keeps them.
#
# Also builds hack/tools/kstatus, a small reader of kstatus health (cli-utils) for tests.
#
# Usage: hack/build-tools.sh [--print-paths]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ${1:-} == --print-paths ]]; then
  for t in "${ALL_TOOLS[@]}"; do printf '%s=%s\n' "$t" "$(tool_path "$t")"; done
  exit 0
fi

missing() {
  local t
  for t in "$@"; do [[ -x $(tool_path "$t") ]] || return 0; done
  return 1
}

# Fast path: no go invocation, no lock.
if ! missing "${ALL_TOOLS[@]}"; then
  exit 0
fi

command -v go >/dev/null || die "go is not on PATH; the local cluster is built from Go modules (see docs/local-cluster.md)"

mkdir -p "${PREMIUM_CACHE}/bin" "${PREMIUM_CACHE}/tmp"
# One builder at a time; a second caller waits, then finds the binaries built.
exec 9>"${PREMIUM_CACHE}/build.lock"
flock 9

# Never let go fetch a different toolchain behind our back; the modules pin
# their dependencies in hack/tools/*/go.sum.
export GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:-} -mod=readonly"

# build MODULE_DIR LDFLAGS NAME=PACKAGE... : builds the packages of one tools
# module in a single go invocation (they share compiled packages) and moves
# each binary into its versioned place.
build() {
  local module=$1 ldflags=$2 names=() pkgs=() spec name tmp start
  shift 2
  for spec in "$@"; do
    name=${spec%%=*}
    [[ -x $(tool_path "$name") ]] && continue
    names+=("$name")
    pkgs+=("${spec#*=}")
  done
  ((${#names[@]})) || return 0

  tmp=$(mktemp -d "${PREMIUM_CACHE}/tmp/build.XXXXXX")
  BUILD_TMP=$tmp
  # One package: name the output (go would call go.etcd.io/etcd/server/v3
  # "server"). Several: go names each after its directory.
  local out="${tmp}/"
  ((${#pkgs[@]} == 1)) && out="${tmp}/${names[0]}"
  log "building ${names[*]} (hack/tools/${module}) ..."
  start=$SECONDS
  (cd "${REPO_ROOT}/hack/tools/${module}" &&
    go build -trimpath -ldflags "-s -w ${ldflags}" -o "$out" "${pkgs[@]}") ||
    die "building ${names[*]} failed (module hack/tools/${module})"
  for name in "${names[@]}"; do
    [[ -x ${tmp}/${name} ]] || die "go build did not produce ${name}"
    mkdir -p "$(dirname "$(tool_path "$name")")"
    # Rename within one filesystem: the final path appears whole or not at all.
    mv -f "${tmp}/${name}" "$(tool_path "$name")"
  done
  rm -rf "$tmp"
  BUILD_TMP=
  log "built ${names[*]} in $((SECONDS - start))s"
}

BUILD_TMP=
trap 'if [[ -n $BUILD_TMP ]]; then rm -rf "$BUILD_TMP"; fi' EXIT

kube_ldflags() {
  local v=$KUBE_VERSION major minor date flags="" pkg
  major=${v#v}; major=${major%%.*}
  minor=${v#v"${major}".}; minor=${minor%%.*}
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  # Both packages carry the version: component-base for the servers' /version,
  # client-go for the user agent and kubectl's client version.
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X ${pkg}.gitVersion=${v} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor}"
    flags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${date}"
  done
  echo "$flags"
}

helm_ldflags() {
  local kube_major=${KUBE_VERSION#v} kube_minor
  kube_major=${kube_major%%.*}
  kube_minor=${KUBE_VERSION#v"${kube_major}".}; kube_minor=${kube_minor%%.*}
  echo "-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
    "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=${kube_major} -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${kube_minor}" \
    "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=${kube_major} -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${kube_minor}"
}

total_start=$SECONDS
build etcd "" etcd=go.etcd.io/etcd/server/v3
build kubernetes "$(kube_ldflags)" \
  kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
  kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
  kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
  kubectl=k8s.io/kubernetes/cmd/kubectl
build kwok "" kwok=sigs.k8s.io/kwok/cmd/kwok
build helm "$(helm_ldflags)" helm=helm.sh/helm/v3/cmd/helm
# Not a cluster component: the GitOps tools' own status reader, for tests/kstatus_health.rs.
build kstatus "" kstatus=premium-operator/hack/tools/kstatus
log "tools ready in ${PREMIUM_CACHE}/bin ($((SECONDS - total_start))s)"
