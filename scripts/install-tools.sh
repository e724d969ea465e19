#!/bin/sh
# Install the real tools the tests drive (zip checkers, shells, a browser, and Mesa's software
# Vulkan device with the Vulkan loader for the GPU-path tests) when they are missing.
# Best effort: needs root and apt-get; otherwise it says what to install and goes on.
#   scripts/install-tools.sh [build]   build: only what `make setup` compiles with (the
#   carried CPython's C libraries: autotools for libffi, perl for OpenSSL, tclsh for SQLite)
missing=
tools="unzip:unzip 7z:p7zip-full zsh:zsh busybox:busybox dash:dash tmux:tmux cc:gcc chromium:chromium"
# The carried-interpreter tests: Debian roots (arm64 through qemu and binfmt), objdump for
# every machine.
tools="$tools debootstrap:debootstrap qemu-aarch64-static:qemu-user-static update-binfmts:binfmt-support"
[ "${1:-}" = build ] && tools="make:make perl:perl tclsh:tcl autoreconf:autoconf aclocal:automake libtoolize:libtool"
for pair in $tools; do
    cmd=${pair%%:*}; pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing="$missing $pkg"
done
[ "${1:-}" = build ] || for pkg in libvulkan1 mesa-vulkan-drivers binutils-multiarch; do  # no command to look for
    dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing="$missing $pkg"
done
[ -n "$missing" ] || exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "pyfile: installing test tools:$missing" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
else
    echo "pyfile: please install:$missing (tests that need them will fail)" >&2
fi
