#!/bin/sh
# Make (once) a minimal Debian 11 "bullseye" root: glibc 2.31, its own python3.9, nothing
# else. The portability tests run pyfiles inside it with chroot. Cached under the dev cache,
# keyed by what produced it. Prints the root's path on stdout. Needs root (debootstrap,
# chroot) and the Debian mirror.
set -eu
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
key=$(printf 'bullseye|minbase|python3|%s' "$mirror" | sha256sum | cut -c1-12)
root=${PYFILE_DEBIAN11_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/pyfile-dev/debian11-$key}
if [ -x "$root/usr/bin/python3" ]; then
    echo "$root"
    exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    echo "pyfile: installing debootstrap" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
tmp="$root.tmp"
rm -rf "$tmp"
mkdir -p "$(dirname "$root")"
echo "pyfile: making a Debian 11 root with debootstrap (~2 min, once)" >&2
debootstrap --variant=minbase --include=python3 bullseye "$tmp" "$mirror" >"$tmp.log" 2>&1 || {
    tail -5 "$tmp.log" >&2
    echo "pyfile: debootstrap failed (log: $tmp.log)" >&2
    exit 1
}
rm -f "$tmp.log"
mv "$tmp" "$root"
echo "$root"
