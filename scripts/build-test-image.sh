#!/usr/bin/env bash
# Builds the local test environment image without a registry: a busybox-static root filesystem imported with
# `docker import`. Like AEnvironment images it answers GET /health on port 8081; set AENV_HEALTH_DELAY (seconds)
# to make it start answering late. Any command given to the container replaces that default.
#
#   scripts/build-test-image.sh [tag] [expose]   (default tag: aenv-test/sandbox:local; expose: 8081)
#
# An empty `expose` builds an image that declares no port, as many users' images do (`docker import` adds none).
set -euo pipefail
tag="${1:-aenv-test/sandbox:local}"
expose="${2-8081}"
busybox=""
for candidate in /bin/busybox /usr/bin/busybox "$(command -v busybox || true)"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ]; then busybox="$candidate"; break; fi
done
if [ -z "$busybox" ]; then
  echo "build-test-image: busybox not found; install it with: apt-get install -y busybox-static" >&2
  exit 1
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,etc,tmp,www,proc,sys,dev}
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
printf '{"success":true,"code":0,"data":{"status":"success","message":"MCP server is healthy","details":{"tool_count":0}}}' > "$root/www/health"
cat > "$root/bin/aenv-entrypoint" <<'SH'
#!/bin/sh
# Answer GET /health on 8081, after AENV_HEALTH_DELAY seconds.
sleep "${AENV_HEALTH_DELAY:-0}"
exec httpd -f -p 8081 -h /www
SH
chmod +x "$root/bin/aenv-entrypoint"
changes=(-c 'CMD ["/bin/aenv-entrypoint"]' -c 'ENV PATH=/bin')
if [ -n "$expose" ]; then changes+=(-c "EXPOSE $expose"); fi
tar -C "$root" -c . | docker import "${changes[@]}" - "$tag" >/dev/null
if ! docker run --rm --network none "$tag" true >/dev/null 2>&1; then
  docker rmi "$tag" >/dev/null 2>&1 || true
  echo "build-test-image: $busybox does not run in an empty image (not statically linked?); install busybox-static" >&2
  exit 1
fi
echo "$tag"
