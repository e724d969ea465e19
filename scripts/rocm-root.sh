#!/bin/sh
# Make (once) a Debian unstable root with ROCm's HIP compiler (hipcc, clang and the device
# libraries of ROCm 6.x; only Debian unstable has ROCm 6.1+, which ggml's HIP backend needs)
# and no GPU: the first-run HIP compile of a pyfile is tested in it with chroot. Cached under
# the dev cache, keyed by what produced it; prints the root's path on stdout. Needs root
# (debootstrap, chroot) and the Debian mirror. ~1.5 GB, a few minutes.
#   scripts/rocm-root.sh
set -eu
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=hipcc,libamdhip64-dev,rocminfo,python3
key=$(printf 'sid|minbase|%s|%s' "$packages" "$mirror" | sha256sum | cut -c1-12)
root=${XDG_CACHE_HOME:-$HOME/.cache}/pyfile-dev/debian-sid-rocm-$key
if [ -x "$root/usr/bin/hipcc" ] && [ -f "$root/.pyfile-root-done" ]; then
    echo "$root"
    exit 0
fi
if ! dpkg -s debootstrap >/dev/null 2>&1; then
    echo "pyfile: installing debootstrap" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
tmp="$root.tmp"
rm -rf "$tmp"
mkdir -p "$(dirname "$root")"
echo "pyfile: making a Debian unstable root with ROCm's hipcc (~1.5 GB; once)" >&2
debootstrap --variant=minbase --include="$packages" sid "$tmp" "$mirror" >"$tmp.log" 2>&1 || {
    tail -5 "$tmp.log" >&2
    echo "pyfile: debootstrap failed (log: $tmp.log)" >&2
    exit 1
}
rm -f "$tmp.log"
touch "$tmp/.pyfile-root-done"
mv "$tmp" "$root"
echo "$root"
