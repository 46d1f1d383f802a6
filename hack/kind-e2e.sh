#!/usr/bin/env bash
# End to end on a throw-away kind cluster (needs Docker, kind, kubectl, helm; `make kind-e2e`):
#   create the cluster, build both images (CPU torch), bake the example model into the server
#   image, load them, install the chart, apply examples/quickstart-cpu.yaml, wait for Ready,
#   send real inference requests through a port-forward, roll a canary to promotion, run the
#   cluster end-to-end pytest suite against the same cluster, tear down.
# Settings (env): KIND_CLUSTER (modelship-e2e), KEEP_CLUSTER=1 keeps it afterwards,
# PYTHON (.venv/bin/python), SKIP_BUILD=1 reuses images already built, TORCH_INDEX_URL.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CLUSTER=${KIND_CLUSTER:-modelship-e2e}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
TAG=e2e
OPERATOR_IMAGE=ghcr.io/modelship/operator:$TAG
# The cluster pytest suite starts its own operator with MODELSHIP_SERVER_IMAGE=ghcr.io/modelship/server:e2e.
SERVER_IMAGE=ghcr.io/modelship/server:$TAG
SERVER_BASE=ghcr.io/modelship/server:$TAG-base
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
SYSTEM_NS=modelship-system
NS=ml
PF_PID=""

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'kind-e2e: %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || die "$tool is required (this target needs a Docker-capable machine)"
done
docker info >/dev/null 2>&1 || die "no Docker engine is reachable"
[ -x "$PYTHON" ] || die "no Python at $PYTHON (run make install, or set PYTHON)"

WORK=$(mktemp -d)
KUBECONFIG_FILE=$WORK/kubeconfig

cleanup() {
  local rc=$?
  if [ -n "$PF_PID" ]; then kill "$PF_PID" 2>/dev/null || true; fi
  if [ $rc -ne 0 ] && [ -f "$KUBECONFIG_FILE" ]; then
    log "failed (exit $rc): operator logs and ModelDeployments"
    kubectl --kubeconfig "$KUBECONFIG_FILE" -n "$SYSTEM_NS" logs deploy/modelship-operator --tail=200 || true
    kubectl --kubeconfig "$KUBECONFIG_FILE" get mdep,deploy,pods,svc -A -l app.kubernetes.io/name=modelship || true
  fi
  if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
    log "keeping cluster $CLUSTER (kubeconfig: $KUBECONFIG_FILE)"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    rm -rf "$WORK"
  fi
  exit $rc
}
trap cleanup EXIT

k() { kubectl --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# Wait (bounded) until a jsonpath of the ModelDeployment equals a value.
wait_mdep() {
  local path=$1 want=$2 timeout=$3 got=""
  local deadline=$((SECONDS + timeout))
  while [ $SECONDS -lt $deadline ]; do
    got=$(k -n "$NS" get mdep digits -o "jsonpath={$path}" 2>/dev/null || true)
    [ "$got" = "$want" ] && return 0
    sleep 2
  done
  die "mdep/digits $path is '$got', wanted '$want' after ${timeout}s"
}

log "example model"
MODEL_DIR=$WORK/model
"$PYTHON" examples/build_model.py --out "$MODEL_DIR"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "images"
  docker build -f Dockerfile.operator -t "$OPERATOR_IMAGE" .
  docker build -f Dockerfile.server --build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL" --build-arg EXTRAS=server \
    -t "$SERVER_BASE" .
fi
# The example model is baked into the image the quick start points at (file:///models/digits/model.pt).
docker build -f hack/Dockerfile.model --build-arg BASE="$SERVER_BASE" -t "$SERVER_IMAGE" "$MODEL_DIR"

log "kind cluster $CLUSTER"
kind create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG_FILE" --wait 180s
kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$SERVER_IMAGE"

log "helm install (operator watches namespace $NS)"
k create namespace "$NS"
helm --kubeconfig "$KUBECONFIG_FILE" upgrade --install modelship charts/modelship \
  --namespace "$SYSTEM_NS" --create-namespace --wait --timeout 5m \
  --set operator.image.tag="$TAG" --set operator.image.pullPolicy=Never \
  --set server.image.tag="$TAG" \
  --set "watchNamespaces={$NS}" --set operator.resyncSeconds=5 --set operator.logFormat=text
k wait --for=condition=Established crd/modeldeployments.modelship.dev --timeout=60s

log "quick start: examples/quickstart-cpu.yaml"
# kind nodes have little CPU to spare: the example as it is, with smaller requests (changed
# before the first apply: resources shape the pods, so a later patch would start a rollout).
"$PYTHON" -c 'import sys, yaml
md = yaml.safe_load(open("examples/quickstart-cpu.yaml"))
md["spec"]["server"]["resources"] = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
yaml.safe_dump(md, sys.stdout)' | k apply -f -
k -n "$NS" wait mdep/digits --for=condition=Ready --timeout=300s
wait_mdep .status.stable.version 1.0.0 60

log "inference through a port-forward"
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
k -n "$NS" port-forward svc/digits "$PORT:8080" >"$WORK/port-forward.log" 2>&1 &
PF_PID=$!
URL=http://127.0.0.1:$PORT
"$PYTHON" hack/infer.py --url "$URL" --data "$MODEL_DIR/heldout.npz" --requests 20 --expect-version 1.0.0

log "canary rollout of version 1.0.1 to promotion"
kill "$PF_PID" 2>/dev/null || true
PF_PID=""
# Traffic for the canary analysis, from inside the cluster through the Service, so that it
# spreads over both revisions (a port-forward pins a single pod).
k -n "$NS" run load --image="$SERVER_IMAGE" --restart=Never --image-pull-policy=Never --command -- \
  python -c 'import json, time, urllib.request as u
body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}).encode()
end = time.time() + 300
while time.time() < end:
    try:
        u.urlopen(u.Request("http://digits:8080/v2/models/digits/infer", data=body,
                            headers={"content-type": "application/json"}), timeout=5).read()
    except Exception as exc:
        print(exc, flush=True)
    time.sleep(0.05)'
k -n "$NS" wait pod/load --for=condition=Ready --timeout=120s
# A short rollout: 50% for 40s while the analysis checks the canary every 10s, then promotion.
k -n "$NS" patch mdep digits --type merge -p '{"spec": {
  "model": {"version": "1.0.1"},
  "rollout": {"traffic": "replicas", "steps": [{"setWeight": 50}, {"pause": {"duration": "40s"}}],
              "analysis": {"interval": "10s", "minRequests": 5, "failureLimit": 2, "maxErrorRate": 0.05, "maxLatencyP99Ms": 2000}}}}'
wait_mdep .status.canary.version 1.0.1 180
wait_mdep .status.stable.version 1.0.1 300
wait_mdep .status.canary.version "" 60
k -n "$NS" delete pod load --wait=false

PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
k -n "$NS" port-forward svc/digits "$PORT:8080" >"$WORK/port-forward.log" 2>&1 &
PF_PID=$!
"$PYTHON" hack/infer.py --url "http://127.0.0.1:$PORT" --data "$MODEL_DIR/heldout.npz" --requests 20 --expect-version 1.0.1
k -n "$NS" get mdep digits -o wide

log "the cluster end-to-end suite (the same tests that run against any kubeconfig)"
KUBECONFIG=$KUBECONFIG_FILE MODELSHIP_EXAMPLE_MODEL=$MODEL_DIR \
  "$PYTHON" -m pytest --cluster tests/operator/test_e2e.py tests/operator/test_e2e_rollout.py -v

log "kind e2e passed"
