#!/usr/bin/env bash
# Builds an image for another platform than this host's, without a registry: `docker load` of a hand-made archive
# whose config says linux/arm64 (linux/amd64 on an arm64 host) and whose command is an ELF header for that
# machine. Docker starts it; the kernel refuses the binary ("exec format error"), as with a real image pulled for
# the wrong platform.
#
#   scripts/build-foreign-image.sh [tag]   (default tag: aenv-test/foreign-arch:local)
set -euo pipefail
tag="${1:-aenv-test/foreign-arch:local}"
case "$(uname -m)" in
  aarch64|arm64) arch=amd64; machine='\x3e\x00' ;;  # EM_X86_64
  *) arch=arm64; machine='\xb7\x00' ;;               # EM_AARCH64
esac
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/rootfs" "$dir/image"
# A 64-bit little-endian ELF header of an executable for that machine (64 bytes), then padding.
printf '\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00'"$machine"'\x01\x00\x00\x00' > "$dir/rootfs/app"
head -c 108 /dev/zero >> "$dir/rootfs/app"
chmod +x "$dir/rootfs/app"
tar -C "$dir/rootfs" -cf "$dir/image/layer.tar" app
diff_id="sha256:$(sha256sum "$dir/image/layer.tar" | cut -d' ' -f1)"
printf '{"architecture":"%s","os":"linux","config":{"Cmd":["/app"]},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
  "$arch" "$diff_id" > "$dir/config.json"
config="$(sha256sum "$dir/config.json" | cut -d' ' -f1).json"
mv "$dir/config.json" "$dir/image/$config"
printf '[{"Config":"%s","RepoTags":["%s"],"Layers":["layer.tar"]}]' "$config" "$tag" > "$dir/image/manifest.json"
tar -C "$dir/image" -c . | docker load -q >/dev/null
echo "$tag"
