#!/bin/sh
# Build llama.cpp's own `llama-server` once, as the anchor for bench/bench_server.py.
#
# Why: the benchmark compares pyfile's server against llama-server built from the very
# llama.cpp that our engine vendors (llama-cpp-python's sdist, vendor/llama.cpp), with the CPU
# features of the ggml variant that runs on this host, so the comparison is like for like.
# The binary is cached under ~/.cache/pyfile-dev/ keyed by (version, sdist hash, CMake flags):
# a change to any of them builds a new one, nothing is reused silently.
#
# Usage: scripts/build-llama-server.sh      -> prints the path of llama-server on stdout
# Env:   PYFILE_LLAMA_SDIST   the sdist tarball (default: /tmp/zb/sdist/..., else pip download)
#        PYFILE_LLAMA_VARIANT one of x64 haswell skylakex icelake zen4 (default: from /proc/cpuinfo)
# Takes ~15 min on 2 cores; run it under `nice -n 10` in the background.
set -eu
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/pyfile-dev

sdist=${PYFILE_LLAMA_SDIST:-/tmp/zb/sdist/llama_cpp_python-$version.tar.gz}
if [ ! -f "$sdist" ]; then
    mkdir -p "$cache/sdist"
    sdist=$cache/sdist/llama_cpp_python-$version.tar.gz
    if [ ! -f "$sdist" ]; then
        python3 -m pip download --quiet --no-binary :all: --no-deps \
            -d "$cache/sdist" "llama-cpp-python==$version" >&2
    fi
fi

# The variant: the same names and feature sets as ggml's GGML_CPU_ALL_VARIANTS (x86-64).
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
has() { case " $flags " in *" $1 "*) return 0 ;; esac; return 1; }
if [ -z "${PYFILE_LLAMA_VARIANT:-}" ]; then
    if has avx512f && has avx512vbmi && has avx512_vnni && has avx512_bf16; then
        PYFILE_LLAMA_VARIANT=zen4
    elif has avx512f && has avx512vbmi && has avx512_vnni; then
        PYFILE_LLAMA_VARIANT=icelake
    elif has avx512f; then
        PYFILE_LLAMA_VARIANT=skylakex
    elif has avx2 && has fma && has f16c && has bmi2; then
        PYFILE_LLAMA_VARIANT=haswell
    else
        PYFILE_LLAMA_VARIANT=x64
    fi
fi
base="-DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_F16C=ON -DGGML_FMA=ON -DGGML_AVX2=ON -DGGML_BMI2=ON"
case $PYFILE_LLAMA_VARIANT in
    x64)      cpu="-DGGML_SSE42=OFF -DGGML_AVX=OFF -DGGML_F16C=OFF -DGGML_FMA=OFF -DGGML_AVX2=OFF -DGGML_BMI2=OFF" ;;
    haswell)  cpu="$base" ;;
    skylakex) cpu="$base -DGGML_AVX512=ON" ;;
    icelake)  cpu="$base -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON" ;;
    zen4)     cpu="$base -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON" ;;
    *) echo "build-llama-server: unknown variant '$PYFILE_LLAMA_VARIANT' (x64 haswell skylakex icelake zen4)" >&2; exit 2 ;;
esac
cmake_flags="-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF $cpu -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF"
sdist_sum=$(sha256sum "$sdist" | cut -c1-16)
key=$(printf '%s|%s|%s' "$version" "$sdist_sum" "$cmake_flags" | sha256sum | cut -c1-16)
out=$cache/llama-server-$version-$PYFILE_LLAMA_VARIANT-$key
if [ -x "$out/llama-server" ]; then
    echo "$out/llama-server"
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/llama-server-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "build-llama-server: compiling llama-server $version ($PYFILE_LLAMA_VARIANT; ~15 min on 2 cores)" >&2
tar xzf "$sdist" -C "$work"
src=$work/llama_cpp_python-$version/vendor/llama.cpp
# shellcheck disable=SC2086  # the flags are a word list on purpose
cmake -S "$src" -B "$work/build" -G Ninja $cmake_flags >&2
cmake --build "$work/build" --target llama-server -j "${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" >&2
mkdir -p "$out.tmp"
cp "$work/build/bin/llama-server" "$out.tmp/llama-server"
printf '%s\n' "$cmake_flags" >"$out.tmp/cmake-flags.txt"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out/llama-server"
