#!/usr/bin/env bash
# Build a local Debian bookworm base image with Debian's python3 (3.11), for machines that cannot pull
# from a registry (CI here). The Dockerfiles take it through --build-arg BASE_IMAGE=<name>.
#   containers/base/build-debootstrap-base.sh [IMAGE_NAME] [MIRROR]
# Needs root, debootstrap and a running Docker engine. Skips the work when the image already exists
# (set FORCE=1 to rebuild).
set -euo pipefail
name=${1:-earthmon-base:bookworm}
mirror=${2:-${DEBIAN_MIRROR:-http://deb.debian.org/debian}}

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$name" >/dev/null 2>&1; then
    echo "base image $name exists (FORCE=1 rebuilds)"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }

root=$(mktemp -d /tmp/earthmon-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
# minbase + what both images need at run time: Python 3.11 with venv, the public CA set (Debian's
# ca-certificates: HTTPS to S3 and STAC APIs), nothing else. No compilers: wheels come from the wheelhouse.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror"
# Trim what an image never needs.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
# debootstrap copies the build host's resolv.conf and hostname: an image must not carry them.
: >"$root/etc/resolv.conf"
rm -f "$root/etc/hostname"
printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb http://deb.debian.org/debian-security bookworm-security main\n' \
    "$mirror" "$mirror" >"$root/etc/apt/sources.list"
tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$name"
docker run --rm --network host "$name" python3 -c 'import sys, venv, ssl; print("base python", sys.version.split()[0])'
