#!/usr/bin/env bash
# Installs Prometheus and promtool from Debian's `prometheus` package, which the chart's alert
# and dashboard tests (tests/prometheus_rules.rs) run for real. Does nothing when promtool is
# already on PATH. Needs root (or sudo) and apt-get: a Debian or Ubuntu machine, as CI is.
# The package's own service is not started (policy-rc.d refuses it during the install); the
# tests start their own Prometheus on a free port when they need one.
#
# Usage: hack/install-promtool.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
  exit 0
fi
command -v apt-get >/dev/null ||
  die "promtool is missing and this machine has no apt-get; install Prometheus 2.x (promtool and prometheus on PATH) by hand"

sudo=()
if ((EUID != 0)); then
  command -v sudo >/dev/null || die "installing the prometheus package needs root (or sudo)"
  sudo=(sudo)
fi

# A policy-rc.d that refuses every service start keeps the package from starting its daemon
# on machines where invoke-rc.d would; an existing one is left alone.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
  "${sudo[@]}" chmod +x "$policy"
  own_policy=1
fi
cleanup() { if ((own_policy)); then "${sudo[@]}" rm -f "$policy"; fi; }
trap cleanup EXIT

log "installing Debian's prometheus package (promtool, prometheus) ..."
export DEBIAN_FRONTEND=noninteractive
if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends prometheus >/dev/null; then
  "${sudo[@]}" apt-get update -q >/dev/null
  "${sudo[@]}" apt-get install -y -q --no-install-recommends prometheus >/dev/null
fi
command -v promtool >/dev/null || die "the prometheus package installed no promtool"
log "installed $(promtool --version 2>&1 | head -n1)"
