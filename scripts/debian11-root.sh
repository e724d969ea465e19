#!/bin/sh
# Make (once) a minimal Debian 11 "bullseye" root: glibc 2.31 and nothing else. The
# portability tests run pyfiles inside it with chroot. Cached under the dev cache, keyed by
# what produced it. Prints the root's path on stdout. Needs root (debootstrap, chroot) and
# the Debian mirror.
#   scripts/debian11-root.sh [ARCH] [python|nopython|gcc]
# ARCH: amd64 (default) or arm64 (run through qemu-user-static and binfmt, installed and
# enabled here when missing). python (default): with its own python3.9; nopython: minbase
# without any Python (what a slim container image is).
set -eu
arch=${1:-amd64}
flavour=${2:-python}
case $arch in amd64|arm64) ;; *) echo "pyfile: ARCH must be amd64 or arm64, not $arch" >&2; exit 2 ;; esac
case $flavour in python|nopython|gcc) ;; *) echo "pyfile: the flavour must be python, nopython or gcc, not $flavour" >&2; exit 2 ;; esac
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [ "$arch/$flavour" = amd64/python ]; then  # the key the first root was made with
    key=$(printf 'bullseye|minbase|python3|%s' "$mirror" | sha256sum | cut -c1-12)
    root=${PYFILE_DEBIAN11_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/pyfile-dev/debian11-$key}
else
    key=$(printf 'bullseye|minbase|%s|%s|%s' "$arch" "$flavour" "$mirror" | sha256sum | cut -c1-12)
    root=${XDG_CACHE_HOME:-$HOME/.cache}/pyfile-dev/debian11-$arch-$flavour-$key
fi
if [ -x "$root/bin/sh" ] && [ -f "$root/.pyfile-root-done" ]; then
    echo "$root"
    exit 0
fi
if [ "$arch/$flavour" = amd64/python ] && [ -x "$root/usr/bin/python3" ]; then
    echo "$root"  # made by this script before it marked finished roots
    exit 0
fi
need=debootstrap
[ "$arch" = amd64 ] || need="debootstrap qemu-user-static binfmt-support"
for pkg in $need; do
    if ! dpkg -s "$pkg" >/dev/null 2>&1; then
        echo "pyfile: installing $need" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
        break
    fi
done
if [ "$arch" = arm64 ]; then
    # Foreign binaries in the root run through qemu-aarch64 via binfmt_misc.
    [ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 >/dev/null
fi
include=
[ "$flavour" = python ] && include=--include=python3
[ "$flavour" = gcc ] && include=--include=g++,make,cmake
tmp="$root.tmp"
rm -rf "$tmp"
mkdir -p "$(dirname "$root")"
echo "pyfile: making a Debian 11 $arch root ($flavour) with debootstrap (~2 min, ~10 min for arm64; once)" >&2
debootstrap --arch="$arch" --variant=minbase $include bullseye "$tmp" "$mirror" >"$tmp.log" 2>&1 || {
    tail -5 "$tmp.log" >&2
    echo "pyfile: debootstrap failed (log: $tmp.log)" >&2
    exit 1
}
rm -f "$tmp.log"
if [ "$flavour" = nopython ] && [ -n "$(ls "$tmp"/usr/bin/python* 2>/dev/null)" ]; then
    echo "pyfile: the nopython root has a Python ($tmp/usr/bin)" >&2
    exit 1
fi
touch "$tmp/.pyfile-root-done"
mv "$tmp" "$root"
echo "$root"
