#!/usr/bin/env bash
# End-to-end run of Kubernetes mode on a throw-away k3d cluster, for users who have k3d, kubectl, helm and Docker
# with registry access. NOT RUN in this project's CI or by its authors: there is no API server there (the kube
# paths are tested against kmock and tower-test mocks instead; see docs/kubernetes.md).
#
#   scripts/k3d-e2e.sh     # the Kubernetes engine (docker.enabled=false): one Pod per instance, exec and files
#
# It covers the Kubernetes engine only: k3d nodes run containerd, not dockerd, so docker.enabled=true needs a
# Docker daemon reachable from the cluster (docs/kubernetes.md).
#
# Leaves nothing behind unless KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CLUSTER:-aenv-e2e}
NS=${NS:-aenv}
IMAGE=${IMAGE:-aenv-operator:e2e}
SANDBOX_IMAGE=${SANDBOX_IMAGE:-busybox:1.36}
log() { printf 'k3d-e2e: %s\n' "$*" >&2; }
for tool in k3d kubectl helm docker cargo; do
  command -v "$tool" >/dev/null || { log "missing: $tool"; exit 1; }
done

cleanup() {
  if [ "${KEEP:-}" = 1 ]; then log "KEEP=1: cluster $CLUSTER left running"; return; fi
  k3d cluster delete "$CLUSTER" >/dev/null 2>&1 || true
}
trap cleanup EXIT

log "building the operator and its image"
cargo build --release -p aenv-operator
ctx=$(mktemp -d)
cp target/release/aenv-operator "$ctx/"
cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY aenv-operator /usr/local/bin/aenv-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/aenv-operator"]
DOCKERFILE
docker build -q -t "$IMAGE" "$ctx"

log "creating cluster $CLUSTER"
k3d cluster create "$CLUSTER" --wait
k3d image import "$IMAGE" -c "$CLUSTER"
kubectl create namespace "$NS"

log "installing the chart (Kubernetes engine, 2 replicas with leader election)"
helm install aenv charts/aenv-operator -n "$NS" \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE#*:}" --set image.pullPolicy=Never \
  --set docker.enabled=false --set replicaCount=2 --wait --timeout 120s
kubectl -n "$NS" get crd envinstances.aenv.io >/dev/null
kubectl -n "$NS" rollout status deploy/aenv-aenv-operator --timeout=120s

log "kubectl apply of an EnvInstance"
kubectl -n "$NS" apply -f - <<YAML
apiVersion: aenv.io/v1alpha1
kind: EnvInstance
metadata:
  name: e2e-demo
spec:
  envName: e2e-demo
  envVersion: "1.0.0"
  image: $SANDBOX_IMAGE
  args: ["sleep", "3600"]
  ttl: 10m
  resources: {cpu: "0.2", memory: 64Mi}
  readiness: {enabled: false}
YAML
kubectl -n "$NS" wait envinstance/e2e-demo --for=jsonpath='{.status.phase}'=Running --timeout=120s
ip=$(kubectl -n "$NS" get envinstance e2e-demo -o jsonpath='{.status.ip}')
pod_ip=$(kubectl -n "$NS" get pod e2e-demo -o jsonpath='{.status.podIP}')
[ -n "$ip" ] && [ "$ip" = "$pod_ip" ] || { log "status.ip $ip differs from the Pod IP $pod_ip"; exit 1; }
kubectl -n "$NS" get pod e2e-demo -o jsonpath='{.metadata.labels.business/aenv-name}{"\n"}' | grep -qx e2e-demo
kubectl -n "$NS" get pod e2e-demo -o jsonpath='{.metadata.ownerReferences[0].kind}{"\n"}' | grep -qx EnvInstance
kubectl -n "$NS" get lease aenv-aenv-operator -o jsonpath='{.spec.holderIdentity}{"\n"}'
kubectl -n "$NS" get events --field-selector involvedObject.name=e2e-demo

log "the REST API through a port-forward"
kubectl -n "$NS" port-forward svc/aenv-aenv-operator 18080:8080 >/dev/null 2>&1 &
pf=$!
sleep 3
api=http://127.0.0.1:18080/env-instance/e2e-demo
curl -fsS "$api"

log "sandbox operations through the Pod exec API (busybox has the sh and tar they use)"
out=$(curl -fsS "$api/exec" -d '{"command": ["sh", "-c", "echo \"$A\"; pwd; cat; exit 3"], "env": {"A": "from env"}, "workdir": "/tmp", "stdin": "from stdin"}')
echo "$out" | grep -q '"exitCode":3' || { log "exec: $out"; exit 1; }
echo "$out" | grep -q 'from env\\n/tmp\\nfrom stdin' || { log "exec output: $out"; exit 1; }
out=$(curl -fsS "$api/exec" -d '{"command": ["no-such-program"]}')
echo "$out" | grep -q '"exitCode":127' || { log "exec of a missing program: $out"; exit 1; }
out=$(curl -fsS "$api/exec" -d '{"command": ["sh", "-c", "sleep 300 & sleep 300"], "timeout": 2}')
echo "$out" | grep -q '"killed":true' || { log "exec past its timeout: $out"; exit 1; }
left=$(kubectl -n "$NS" exec e2e-demo -- sh -c 'ps -o args | grep -c "^sleep 300" || true')
[ "$left" = 0 ] || { log "$left sleeps survived the timeout's kill"; exit 1; }
head -c 1048576 /dev/urandom > "$ctx/blob"
curl -fsS -X PUT --data-binary @"$ctx/blob" "$api/files?path=/tmp/blob&mode=600" >/dev/null
curl -fsS "$api/files?path=/tmp/blob" -o "$ctx/blob.back"
cmp "$ctx/blob" "$ctx/blob.back" || { log "a 1 MiB file came back different"; exit 1; }
kubectl -n "$NS" exec e2e-demo -- stat -c %a /tmp/blob | grep -qx 600
curl -fsS "$api/files?path=/etc" -o "$ctx/etc.tar" && tar -tf "$ctx/etc.tar" | grep -q '^etc/hostname$'
code=$(curl -s -o /dev/null -w '%{http_code}' "$api/files?path=/no/such/file")
[ "$code" = 404 ] || { log "a missing file answered $code"; exit 1; }
for op in pause snapshot; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$api/$op" -d '{}')
  [ "$code" = 501 ] || { log "$op answered $code, not 501"; exit 1; }
done
kill "$pf"

log "kubectl delete: the finalizer removes the Pod first"
kubectl -n "$NS" delete envinstance e2e-demo --timeout=60s
if kubectl -n "$NS" get pod e2e-demo >/dev/null 2>&1; then
  kubectl -n "$NS" wait pod/e2e-demo --for=delete --timeout=60s
fi
log "passed"
