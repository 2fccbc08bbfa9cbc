#!/usr/bin/env bash
# Makes a minimal Debian bookworm base image, `sluice-base:bookworm`, from Debian's own packages
# (debootstrap --variant=minbase), for machines that cannot pull debian:bookworm-slim from a
# registry. The runtime stage of the Dockerfile uses it with --build-arg RUNTIME_IMAGE=sluice-base:bookworm.
#
#   deploy/base-image.sh [--force] [--tag TAG] [--suite SUITE] [--mirror URL]
#
# Needs root (debootstrap chroots) and a Docker Engine. Installs debootstrap with apt-get when it
# is missing. Does nothing when the image already exists, unless --force.
set -euo pipefail

TAG=${SLUICE_BASE_IMAGE:-sluice-base:bookworm}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
FORCE=0

while [ $# -gt 0 ]; do
  case "$1" in
    --force) FORCE=1 ;;
    --tag) TAG=$2; shift ;;
    --suite) SUITE=$2; shift ;;
    --mirror) MIRROR=$2; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "base-image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

if [ "$FORCE" = 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base-image.sh: $TAG already exists ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.1f MB", $1/1e6}')); --force rebuilds it"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "base-image.sh: debootstrap needs root" >&2
  exit 1
fi

start=$(date +%s)

if ! command -v debootstrap >/dev/null 2>&1; then
  echo "base-image.sh: installing debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

ROOTFS=$(mktemp -d /tmp/sluice-rootfs.XXXXXX)
cleanup() {
  # debootstrap may leave /proc or /sys mounted in the chroot when it fails half-way.
  for m in proc sys dev/pts dev; do
    if mountpoint -q "$ROOTFS/$m" 2>/dev/null; then umount -l "$ROOTFS/$m" || true; fi
  done
  rm -rf --one-file-system "$ROOTFS"
}
trap cleanup EXIT

echo "base-image.sh: debootstrap --variant=minbase $SUITE from $MIRROR"
debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || {
  tail -n 30 "$ROOTFS.log" >&2
  rm -f "$ROOTFS.log"
  exit 1
}
rm -f "$ROOTFS.log"

# The image's apt sources: the suite, its updates and the security archive, as debian:bookworm has.
cat >"$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF

# Trim what a server image never reads (the same things debian:*-slim leaves out), and keep them
# out when packages are installed later.
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/01-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
cat >"$ROOTFS/etc/apt/apt.conf.d/01-slim" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
EOF
find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$ROOTFS"/usr/share/{man,groff,info,lintian,linda}/* "$ROOTFS"/var/cache/man
find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
  "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/var/lib/dpkg/*-old "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* \
  "$ROOTFS"/var/tmp/* "$ROOTFS"/etc/machine-id
: >"$ROOTFS/etc/hostname"

# An image, not a machine: no apt daily timers, no services to start.
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
chmod 755 "$ROOTFS/usr/sbin/policy-rc.d"

tar --numeric-owner -C "$ROOTFS" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["bash"]' \
  - "$TAG" >/dev/null

size=$(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.1f MB", $1/1e6}')
echo "base-image.sh: built $TAG ($size) in $(( $(date +%s) - start )) s"
