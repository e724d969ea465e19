#!/bin/sh
# Build llama-cpp-python portably into a wheelhouse keyed by version + CMake flags.
#
# Why: pip's own wheel cache ignores CMAKE_ARGS, so a wheel built once with other flags
# (for example a -march=native build that dies with SIGILL on AMX hosts) would be reused
# silently. We key the wheelhouse by the exact flags instead and build with --no-cache-dir.
#
# Usage: scripts/build-engine.sh PYTHON   -> prints the wheelhouse folder on stdout
set -eu
py=${1:?usage: build-engine.sh PYTHON}
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
flags=${PYFILE_ENGINE_CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_RPC=ON -DLLAMA_CURL=OFF"}
pytag=$("$py" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
key=$(printf '%s|%s|%s' "$version" "$flags" "$pytag" | sha256sum | cut -c1-16)
house=${PYFILE_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/pyfile-dev/engine-$version-$pytag-$key}
if ls "$house"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "$house"
    exit 0
fi
mkdir -p "$house.tmp"
echo "pyfile: compiling llama-cpp-python $version (portable CPU variants; ~12 min on 2 cores)" >&2
echo "pyfile: CMAKE_ARGS=$flags" >&2
CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
    "$py" -m pip wheel --no-deps --no-cache-dir --no-binary llama-cpp-python \
    -w "$house.tmp" "llama-cpp-python==$version" >&2
rm -rf "$house"
mv "$house.tmp" "$house"
echo "$house"
