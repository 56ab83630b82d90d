#!/usr/bin/env bash
# Builds the images of the local Swarm (deploy/swarm/swarm.sh) without any container registry:
#   rp9/swarm-node:<tag>   a Swarm node: Debian's docker.io on a debootstrap bookworm rootfs,
#                          rp9-node as its entrypoint, daemon.json, imported as one layer
#   rp9/swarm-probe:<tag>  busybox (Debian's busybox-static, ~2 MB): the tasks `swarm.sh verify`
#                          runs (an HTTP server, nslookup, wget, nc)
#
#   build.sh [node]     build the node image unless it exists; prints its name last
#   build.sh tag        print the node image's name and build nothing
#   build.sh probe      build the probe image unless it exists; prints its name last
#   build.sh rootfs     only prepare the node's cached rootfs (no Docker needed)
#
# A tag is a hash of its image's inputs, so a changed input builds a new image and an unchanged
# one is never rebuilt. The rootfs is cached in RP9_CACHE_DIR, keyed by its package list.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${RP9_CACHE_DIR:-/var/cache/rp9}
name=${RP9_SWARM_NODE_IMAGE:-rp9/swarm-node}
probe_name=${RP9_SWARM_PROBE_IMAGE:-rp9/swarm-probe}
packages=docker.io,iptables,iproute2,procps,ca-certificates,tini
rootfs="$cache/rootfs-swarm-node-$(printf %s "$packages" | md5sum | cut -c1-8)"

log() { printf '[swarm-node-image] %s\n' "$*" >&2; }
die() { printf '[swarm-node-image] error: %s\n' "$*" >&2; exit 1; }

tag=$(cat "$here/build.sh" "$here/rp9-node" "$here/daemon.json" <(echo "$packages") \
  | sha256sum | cut -c1-12)
image="$name:$tag"

prepare_rootfs() {
  [ -f "$rootfs/.complete" ] && return 0
  [ "$(id -u)" = 0 ] || die "run as root (debootstrap)"
  command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
  local tmp="$rootfs.tmp.$$" started=$SECONDS
  log "debootstrap bookworm ($packages) into $rootfs"
  rm -rf "$tmp"
  # debootstrap's policy-rc.d keeps docker.io's postinst from starting a daemon in the chroot.
  debootstrap --variant=minbase --include="$packages" \
    bookworm "$tmp" http://deb.debian.org/debian >"$cache/debootstrap-swarm-node.log" 2>&1 \
    || { tail -20 "$cache/debootstrap-swarm-node.log" >&2; rm -rf "$tmp"; exit 1; }
  rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/* \
    "$tmp"/usr/share/doc/* "$tmp"/usr/share/man/*
  touch "$tmp/.complete"
  if [ -f "$rootfs/.complete" ]; then rm -rf "$tmp"; else rm -rf "$rootfs" && mv "$tmp" "$rootfs"; fi
  log "rootfs ready in $((SECONDS - started)) s ($(du -sh "$rootfs" | cut -f1))"
}

# The busybox-static package, downloaded once into the cache.
busybox_deb() {
  local dir="$cache/busybox-static" debs
  debs=("$dir"/busybox-static_*.deb)
  if [ ! -f "${debs[-1]}" ]; then
    log "apt-get download busybox-static"
    mkdir -p "$dir"
    (cd "$dir" && apt-get download -qq busybox-static 2>/dev/null) || die "apt-get download busybox-static failed"
    debs=("$dir"/busybox-static_*.deb)
  fi
  echo "${debs[-1]}"
}

build_probe() {
  local deb probe_tag probe build
  deb=$(busybox_deb)
  probe_tag=$(cat "$here/build.sh" "$deb" | sha256sum | cut -c1-12)
  probe="$probe_name:$probe_tag"
  if docker image inspect "$probe" >/dev/null 2>&1; then
    log "image $probe already built"
    echo "$probe"
    return 0
  fi
  build=$(mktemp -d "$cache/build-swarm-probe.XXXXXX")
  dpkg-deb -x "$deb" "$build/pkg"
  mkdir -p "$build/root/bin" "$build/root/etc" "$build/root/tmp" "$build/root/www"
  chmod 1777 "$build/root/tmp"
  install -m 0755 "$build/pkg/bin/busybox" "$build/root/bin/busybox"
  local applet
  for applet in $("$build/root/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$build/root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000::/tmp:/bin/sh\n' >"$build/root/etc/passwd"
  printf 'root:x:0:\nnode:x:1000:\n' >"$build/root/etc/group"
  echo ok >"$build/root/www/index.html"
  log "importing $probe"
  tar --numeric-owner -C "$build/root" -c . | docker import \
    --change 'ENV PATH=/bin' \
    --change "LABEL io.rp9.swarm-probe-tag=$probe_tag" \
    --change 'CMD ["sh"]' \
    - "$probe" >/dev/null
  rm -rf "$build"
  echo "$probe"
}

build_node() {
  if docker image inspect "$image" >/dev/null 2>&1; then
    log "image $image already built"
    echo "$image"
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "run as root (debootstrap)"
  mkdir -p "$cache"
  exec 9>"$cache/swarm-node-build.lock"
  flock 9
  if docker image inspect "$image" >/dev/null 2>&1; then
    log "image $image built meanwhile"
    echo "$image"
    return 0
  fi
  local started=$SECONDS build="$cache/build-swarm-node-$tag"
  prepare_rootfs
  log "assembling the rootfs in $build"
  rm -rf "$build"
  # Hard links are safe: only new files are added below, nothing is written in place.
  cp -al "$rootfs" "$build"
  rm -f "$build/.complete"
  install -D -m 0755 "$here/rp9-node" "$build/usr/local/bin/rp9-node"
  install -D -m 0644 "$here/daemon.json" "$build/etc/docker/daemon.json"
  mkdir -p "$build/run/rp9"
  [ -x "$build/usr/sbin/dockerd" ] || die "docker.io is not in the rootfs"
  log "importing $image"
  tar --numeric-owner -C "$build" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL io.rp9.swarm-node-tag=$tag" \
    --change 'ENTRYPOINT ["tini", "--", "/usr/local/bin/rp9-node"]' \
    - "$image" >/dev/null
  rm -rf "$build"
  # Images of older inputs serve nothing any more (one a node still runs stays).
  docker images "$name" --format '{{.Repository}}:{{.Tag}}' | grep -vxF "$image" \
    | xargs -r docker image rm >/dev/null 2>&1 || true
  log "built $image in $((SECONDS - started)) s"
  echo "$image"
}

case "${1:-node}" in
  node) build_node ;;
  tag) echo "$image" ;;
  probe) build_probe ;;
  rootfs) mkdir -p "$cache" && prepare_rootfs ;;
  *) die "usage: build.sh [node|tag|probe|rootfs]" ;;
esac
