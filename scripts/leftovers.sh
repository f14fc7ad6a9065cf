#!/usr/bin/env bash
# Another operator's leftovers on the daemon, as a machine where operators ran before holds them: the test suite
# must pass beside them (scripts/test plants them before the suites and removes them after).
#
#   scripts/leftovers.sh plant FILE    # plants them, writes what it made into FILE (one "kind name" a line)
#   scripts/leftovers.sh remove FILE   # removes exactly what FILE lists (what the sweeps left of it)
#
# What is planted, for a made-up operator id (labelled as aenv objects are):
# - owner networks of the owners the tests use, under the names earlier versions gave them (no operator id) and
#   under the names this version would give a lost store's operator id; one is in use by a running container;
# - a running and a stopped sandbox container, expiring far in the future (no operator may remove them);
# - a snapshot-looking image `aenv-snapshot/...` labelled by that operator;
# - service volumes `aenv-pvc-...` of those owners (old and new names), holding a file.
set -euo pipefail
cd "$(dirname "$0")/.."
action="${1:?plant or remove}"
file="${2:?a file listing the leftovers}"
image="${AENV_LEFTOVER_IMAGE:-aenv-test/sandbox:local}"

if [ "$action" = remove ]; then
  [ -f "$file" ] || exit 0
  # Containers first (they hold networks and volumes), images, then networks and volumes.
  for kind in container image network volume; do
    while read -r k name; do
      [ "$k" = "$kind" ] || continue
      case "$kind" in
        container) docker rm -f "$name" >/dev/null 2>&1 || true ;;
        image) docker rmi "$name" >/dev/null 2>&1 || true ;;
        network) docker network rm "$name" >/dev/null 2>&1 || true ;;
        volume) docker volume rm "$name" >/dev/null 2>&1 || true ;;
      esac
    done < "$file"
  done
  rm -f "$file"
  exit 0
fi

[ "$action" = plant ] || { echo "leftovers.sh: plant or remove" >&2; exit 2; }
: > "$file"
id="leftover-$(date +%s)-$$"
lost="lost-store-$(date +%s)-$$"
far="2999-01-01T00:00:00Z"
common=(--label aenv.io/managed-by=aenv-operator)
# Names as the operator gives them: sha256 of the owner (the scheme before the operator id) and of the
# length-prefixed (operator id, owner) (this scheme); FNV-1a of the owner for volumes.
names() {
  python3 - "$@" <<'PY'
import hashlib, struct, sys
op, owner = sys.argv[1], sys.argv[2]
def parts(*ps):
    h = hashlib.sha256()
    for p in ps:
        b = p.encode(); h.update(struct.pack(">Q", len(b))); h.update(b)
    return h.hexdigest()[:12]
fnv = 0xcbf29ce484222325
for b in owner.encode():
    fnv = ((fnv ^ b) * 0x100000001b3) % (1 << 64)
print("aenv-o-" + hashlib.sha256(owner.encode()).hexdigest()[:12])
print("aenv-o-" + parts(op, owner))
print("aenv-pvc-%016x-data" % fnv)
print("aenv-pvc-%s-%016x-data" % (parts(op), fnv))
PY
}
plant() { echo "$1 $2" >> "$file"; }
first_net=""
for owner in alice bob test ops deploy-owner; do
  mapfile -t n < <(names "$lost" "$owner")
  for net in "${n[0]}" "${n[1]}"; do
    if docker network create --label aenv.io/managed-by=aenv-operator --label "aenv.io/operator-id=$id" \
      --label "aenv.io/network-of=$id" --label "aenv.io/owner=$owner" "$net" >/dev/null 2>&1; then
      plant network "$net"
      first_net="${first_net:-$net}"
    fi
  done
  for vol in "${n[2]}" "${n[3]}"; do
    if docker volume create "${common[@]}" --label "aenv.io/operator-id=$id" --label "aenv.io/volume-of=$id" \
      --label "aenv.io/owner=$owner" "$vol" >/dev/null; then
      plant volume "$vol"
    fi
  done
done
sandbox_labels=("${common[@]}" --label "aenv.io/operator-id=$id" --label aenv.io/namespace=default
  --label aenv.env_name=leftover --label aenv.io/env-version=1 --label aenv.io/owner=alice
  --label "aenv.io/expire-at=$far")
running="$id-run"
docker run -d --name "$running" "${sandbox_labels[@]}" --label "aenv.io/instance=$running" \
  ${first_net:+--network "$first_net"} --mount "type=volume,source=$(names "$lost" alice | sed -n 3p),target=/data" \
  "$image" >/dev/null
plant container "$running"
docker exec "$running" sh -c 'echo leftover > /data/keep' >/dev/null
stopped="$id-stopped"
docker create --name "$stopped" "${sandbox_labels[@]}" --label "aenv.io/instance=$stopped" "$image" >/dev/null
plant container "$stopped"
snapshot="aenv-snapshot/leftover-$id:1"
docker commit --change "LABEL aenv.io/snapshot-by=$id" --change "LABEL aenv.io/snapshot-template=leftover@1" \
  "$stopped" "$snapshot" >/dev/null
plant image "$snapshot"
echo "leftovers.sh: planted $(wc -l < "$file") objects of operator ids $id and $lost" >&2
