#!/usr/bin/env bash
# `make demo`: the whole job end to end on the local control plane.
# Brings the cluster up (building it if needed), installs the CRDs, starts the operator,
# applies examples/, shows the features moving through their phases as a live table, and
# prints the start-up timeline. Leaves the cluster and the operator running; `make demo-down`
# stops everything.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

DEMO_DIR="${REPO_ROOT}/target/demo"
NAMESPACE="${DEMO_NAMESPACE:-portal}"
TIMEOUT="${DEMO_TIMEOUT:-180}"
mkdir -p "$DEMO_DIR"

log "==> local control plane"
"${REPO_ROOT}/hack/cluster-up.sh" >/dev/null
export KUBECONFIG="${CLUSTER_DIR}/kubeconfig"
KUBECTL="$(tool_path kubectl)"
[[ -x $KUBECTL ]] || KUBECTL=kubectl

log "==> building the operator"
cargo build --quiet --bin premium-operator
BIN="${CARGO_TARGET_DIR:-${REPO_ROOT}/target}/debug/premium-operator"

log "==> installing the CRDs"
"$KUBECTL" apply --server-side --force-conflicts -f crds/ >/dev/null
"$KUBECTL" wait --for=condition=Established crd/premiumfeatures.premium.dev crd/premiumpolicies.premium.dev --timeout=60s >/dev/null

if [[ -f ${DEMO_DIR}/operator.pid ]] && kill -0 "$(cat "${DEMO_DIR}/operator.pid")" 2>/dev/null; then
  log "==> the operator is already running (pid $(cat "${DEMO_DIR}/operator.pid"))"
else
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  log "==> starting the operator (metrics on 127.0.0.1:${port}, log in ${DEMO_DIR}/operator.log)"
  # Scoped to the demo namespace, so a shared cluster's other namespaces are left alone.
  nohup "$BIN" run --namespace "$NAMESPACE" --metrics-address "127.0.0.1:${port}" >"${DEMO_DIR}/operator.log" 2>&1 &
  echo $! >"${DEMO_DIR}/operator.pid"
  echo "$port" >"${DEMO_DIR}/metrics.port"
fi

log "==> applying examples/"
"$KUBECTL" apply -f examples/ >/dev/null

# Watch until every feature is Ready, printing the table whenever it changes and recording
# when each step was first seen (milliseconds, local clock).
python3 - "$KUBECTL" "$NAMESPACE" "$TIMEOUT" <<'PY'
import json, subprocess, sys, time
kubectl, ns, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
t0 = time.time()
seen = {}          # (name, event) -> seconds since start
last_table = None

def cond(st, ty):
    for c in st.get("conditions", []):
        if c.get("type") == ty:
            return c
    return {}

def mark(name, event):
    seen.setdefault((name, event), time.time() - t0)

while True:
    out = subprocess.run([kubectl, "get", "premiumfeatures", "-n", ns, "-o", "json"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr.strip(), file=sys.stderr)
        sys.exit(1)
    items = json.loads(out.stdout)["items"]
    rows = []
    for f in sorted(items, key=lambda f: (f.get("status", {}).get("startupLevel", 99), f["metadata"]["name"])):
        name = f["metadata"]["name"]
        st = f.get("status", {})
        phase = st.get("phase", "-")
        if cond(st, "DependenciesReady").get("status") == "True":
            mark(name, "deps")
        if st.get("replicas", 0) and st.get("replicas", 0) > 0:
            mark(name, "scaled")
        if cond(st, "Ready").get("status") == "True":
            mark(name, "ready")
        blocked = ",".join(b["name"] for b in st.get("blockedBy", [])) or "-"
        rows.append((name, phase, f'{st.get("readyReplicas", 0)}/{st.get("replicas", 0)}',
                     str(st.get("startupLevel", "-")), blocked))
    table = "\n".join(f"  {r[0]:<16} {r[1]:<24} {r[2]:<6} {r[3]:<6} {r[4]}" for r in rows)
    if table != last_table:
        print(f"[{time.time() - t0:6.2f}s]  {'NAME':<16} {'PHASE':<24} {'READY':<6} {'LEVEL':<6} BLOCKED-BY")
        print(table, flush=True)
        last_table = table
    if items and all(cond(f.get("status", {}), "Ready").get("status") == "True" for f in items):
        break
    if time.time() - t0 > timeout:
        print(f"not every feature was Ready after {timeout:.0f}s; see target/demo/operator.log", file=sys.stderr)
        sys.exit(1)
    time.sleep(0.2)

print("\nStart-up timeline (seconds after apply, as observed by this script):")
print(f"  {'FEATURE':<16} {'LEVEL':<6} {'DEPS READY':>10} {'SCALED UP':>10} {'READY':>10}")
for f in sorted(items, key=lambda f: (f["status"].get("startupLevel", 99), f["metadata"]["name"])):
    n = f["metadata"]["name"]
    fmt = lambda e: f'{seen[(n, e)]:10.2f}' if (n, e) in seen else f'{"-":>10}'
    print(f"  {n:<16} {str(f['status'].get('startupLevel', '-')):<6} {fmt('deps')} {fmt('scaled')} {fmt('ready')}")
PY

# catalog's capacity is split between its callers once they run: wait (bounded) until its
# status counts each with its replicas, then show the split.
for _ in $(seq 1 50); do
  counted=$("$KUBECTL" get pf catalog -n "$NAMESPACE" -o jsonpath='{range .status.capacity.callers[*]}{.replicas}{" "}{end}' 2>/dev/null || true)
  [[ -n $counted && ! " $counted" =~ " 0 " ]] && break
  sleep 0.2
done
log "==> catalog's capacity, shared by its callers (kubectl premium why catalog)"
"$BIN" why catalog -n "$NAMESPACE"

cat <<MSG

Every example feature is Ready. The cluster and the operator keep running; explore with:

  export KUBECONFIG=${KUBECONFIG}
  kubectl get premium -n ${NAMESPACE}
  kubectl describe pf aika -n ${NAMESPACE}
  ${BIN} why aika -n ${NAMESPACE}      # also: its share of catalog's capacity
  kubectl get deploy,svc,cm,hpa -n ${NAMESPACE}
  ${BIN} graph examples/ --format text
  curl -s 127.0.0.1:$(cat "${DEMO_DIR}/metrics.port" 2>/dev/null || echo 8080)/metrics | grep ^premium_

Operator log: ${DEMO_DIR}/operator.log. Stop everything with: make demo-down
MSG
