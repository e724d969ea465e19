#!/bin/sh
# Build a GPU variant of the engine from the llama.cpp source that llama-cpp-python 0.3.36
# vendors, so that it matches the engine's libggml-base exactly (ggml checks the backend API
# version when it loads a backend).
#
#   scripts/build-variant.sh vulkan [OUTDIR]  # libggml-vulkan.so: zig (glibc 2.28 target),
#                                             # Debian 13's Vulkan headers, glslc; ~5 min
#   scripts/build-variant.sh cuda [OUTDIR]    # libggml-cuda.so needing only the NVIDIA driver
#                                             # and glibc 2.31: nvcc 13 in a Debian 11 root;
#                                             # `make gpu`; PTX-only 75: ~40 min, each real
#                                             # architecture roughly as much again
#   scripts/build-variant.sh rocm [OUTDIR]    # ggml's GPU sources and pyfile's BLAS, which a
#                                             # file compiles with the user's hipcc on first
#                                             # use (nothing compiled here; ~1 s)
#
# Every variant is built once into a folder keyed by what produced it
# (~/.cache/pyfile-dev/variant-KIND-VERSION-KEY/) and published as
# $PYFILE_VARIANTS/KIND (default ~/.cache/pyfile-dev/variants/KIND, a symlink), where
# `pyfile build` finds it and packs it by default. With OUTDIR the variant is copied there too.
# Prints the folder holding the variant (the library or sources, and variant.json) on stdout.
#
# Environment: CUDA_ARCHS (CMake's list; default: machine code for sm_75, 80, 86, 89, 90 and
# 120, PTX of compute_90 for newer GPUs), CUDA_HOME, JOBS (default nproc), PYTHON.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
usage="usage: build-variant.sh vulkan|cuda|rocm [OUTDIR]"
kind=${1:?$usage}
out=${2:-}
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/pyfile-dev
variants=${PYFILE_VARIANTS:-$cache/variants}
tools="$cache/tools"
jobs=${JOBS:-$(nproc)}
py=${PYTHON:-python3}          # a Python with pyfile installed (make setup passes the venv's)
vk_deb=1.4.309.0-1            # Debian 13's Vulkan headers and loader (12's are too old)
spirv_deb=1.6.1+1.4.309.0-1   # Debian 13's SPIR-V headers (ggml-vulkan's CMake wants them)
# CUDA: machine code for the GPUs most people have (Turing, Ampere, Ada, Hopper, Blackwell
# consumer) and PTX of compute_90 that the driver compiles for anything newer (B200, GB10...).
cuda_archs_full="75-real;80-real;86-real;89-real;90-real;120-real;90-virtual"

say() { echo "build-variant: $*" >&2; }
die() { say "$*"; exit 1; }

case $kind in vulkan|cuda|rocm) ;; *) say "unknown kind $kind ($usage)"; exit 2 ;; esac

# The engine's compiler and the glibc every pyfile promises come from pyfile itself (one
# place for each), and so does the ELF reader that checks what a library needs.
"$py" -c 'import pyfile.engines' 2>/dev/null || die "$py cannot import pyfile (set PYTHON)"
zig_version=$("$py" -c 'from pyfile.engines import ZIG_VERSION; print(ZIG_VERSION)')
glibc_max=$("$py" -c 'from pyfile.engines import PROMISED_GLIBC as v; print(".".join(map(str, v)))')

mkdir -p "$cache/sdist" "$tools"
src="$cache/sdist/llama_cpp_python-$version"
if [ ! -d "$src/vendor/llama.cpp/ggml" ]; then
    "$py" -m pip download --quiet --no-deps --no-binary :all: -d "$cache/sdist" \
        "llama-cpp-python==$version"
    tar -xzf "$cache/sdist/llama_cpp_python-$version.tar.gz" -C "$cache/sdist"
fi
llama="$src/vendor/llama.cpp"
common="-DGGML_BACKEND_DL=ON -DGGML_NATIVE=OFF -DGGML_CPU=OFF -DBUILD_SHARED_LIBS=ON
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release
        -DCMAKE_SKIP_RPATH=ON"  # no build paths in the library: libggml-base is loaded already

# zig from the package index, behind one-line wrappers CMake can take as compilers
# (`pyfile engine toolchain`, the engine's own): it links against glibc 2.28's symbols
# whatever the builder's glibc is.
zig_tools() {
    zdir=$("$py" -m pyfile engine toolchain) || die "cannot set up zig (pyfile engine toolchain)"
}

# Debian 13's Vulkan headers, SPIR-V headers and loader (to link against), unpacked into a
# folder through a private apt list: nothing is installed on the builder.
vulkan_sdk() {
    vdir="$tools/vulkan-$vk_deb"
    if [ ! -f "$vdir/usr/include/vulkan/vulkan.hpp" ]; then
        command -v apt-get >/dev/null 2>&1 || die "fetching Debian 13's Vulkan headers needs apt-get"
        say "fetching Debian 13's Vulkan headers $vk_deb into $vdir"
        rm -rf "$vdir.tmp"
        mkdir -p "$vdir.tmp/apt/lists/partial" "$vdir.tmp/apt/cache/archives/partial" "$vdir.tmp/debs"
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
            > "$vdir.tmp/apt/sources.list"
        set -- -o "Dir::Etc::SourceList=$vdir.tmp/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null \
            -o "Dir::State::Lists=$vdir.tmp/apt/lists" -o "Dir::Cache=$vdir.tmp/apt/cache" \
            -o APT::Sandbox::User=root
        apt-get "$@" update -qq >&2
        (cd "$vdir.tmp/debs" && apt-get "$@" download -qq "libvulkan-dev=$vk_deb" \
            "libvulkan1=$vk_deb" "spirv-headers=$spirv_deb" >&2)
        for deb in "$vdir.tmp"/debs/*.deb; do dpkg -x "$deb" "$vdir.tmp"; done
        rm -rf "$vdir.tmp/apt" "$vdir.tmp/debs" "$vdir"
        mv "$vdir.tmp" "$vdir"
    fi
    if ! command -v glslc >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            say "installing glslc"
            apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq glslc >&2
        else
            die "glslc not found (Debian/Ubuntu: apt-get install glslc)"
        fi
    fi
    glslc_version=$(glslc --version 2>/dev/null | head -n 1)
}

# The CUDA toolkit nvcc belongs to: $PATH's nvcc (often a wrapper), else /usr/local/cuda*.
cuda_toolkit() {
    for n in $(command -v nvcc) /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
        [ -x "$n" ] || continue
        top=$("$n" --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)
        [ -n "$top" ] && [ -x "$top/bin/nvcc" ] && { (cd "$top" && pwd -P); return 0; }
    done
    return 1
}

# The newest GLIBC_ symbol version a library needs (pyfile's ELF reader).
newest_glibc() {
    "$py" -c 'import sys; from pyfile import elf; v = elf.read_file_needs(sys.argv[1]).newest("GLIBC"); print(elf.version_text(v) if v else "")' "$1"
}

case $kind in
vulkan)
    zig_tools
    vulkan_sdk
    lib=libggml-vulkan.so
    # shellcheck disable=SC2086
    flags="$common -DGGML_VULKAN=ON -DGGML_OPENMP=OFF"
    key=$(printf '%s|%s|%s|%s|%s|%s' "$version" "$flags" "$zig_version" "$vk_deb" "$spirv_deb" \
          "$glslc_version" | sha256sum | cut -c1-16)
    needs='"libvulkan.so.1"'
    archs_json=
    ;;
cuda)
    lib=libggml-cuda.so
    archs=${CUDA_ARCHS:-$cuda_archs_full}
    cuda_home=${CUDA_HOME:-$(cuda_toolkit)} || die "nvcc not found (install the CUDA toolkit, or set CUDA_HOME)"
    nvcc="$cuda_home/bin/nvcc"
    [ -x "$nvcc" ] || die "no nvcc in $cuda_home/bin (set CUDA_HOME to a CUDA toolkit)"
    # Compiled inside a Debian 11 root (gcc 10, glibc 2.31) with the toolkit mounted: the
    # module then needs glibc 2.31 at most, whatever the builder runs.
    groot=$("$here/scripts/debian11-root.sh" amd64 gcc) || die "cannot make the Debian 11 build root"
    # No VMM: no libcuda.so.1 link (the static runtime loads the driver when CUDA starts, so
    # the module loads everywhere). MMQ for every quantized product: the small BLAS in
    # native/cuda-blas carries only the float/half ones.
    flags="$common -DGGML_CUDA=ON -DGGML_CUDA_NO_VMM=ON -DGGML_CUDA_NCCL=OFF
           -DGGML_CUDA_FORCE_MMQ=ON -DGGML_CUDA_GRAPHS=ON"
    key=$(printf '%s|%s|%s|%s|%s|%s' "$version" "$flags" "$archs" "$("$nvcc" --version | tail -n 1)" \
          "$(cat "$here"/native/cuda-blas/*.* | sha256sum)" "$groot" | sha256sum | cut -c1-16)
    needs=  # the NVIDIA driver only: no CUDA runtime, no cuBLAS
    archs_json=$(printf '%s' "$archs" | tr ';' '\n' | sed 's/.*/"&"/' | paste -sd, -)
    # The CUDA version the driver must support: the toolkit's (runtime and PTX).
    extra=$(printf ', "cuda": "%s"' "$("$nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')")
    ;;
rocm)
    # Sources: what ggml's HIP backend compiles (compile.py picks the units), its headers,
    # and pyfile's BLAS with its HIP names.
    lib=ggml/src/ggml-cuda/ggml-cuda.cu
    needs=
    archs_json=
    extra=', "compile": "ggml-cuda"'
    key=$( (cd "$llama" && find ggml/include ggml/src/*.h ggml/src/ggml-cuda -type f | sort | xargs cat;
            cd "$here/native/cuda-blas" && find . -type f | sort | xargs cat) | sha256sum | cut -c1-16)
    ;;
esac
extra=${extra:-}

done_dir="$cache/variant-$kind-$version-$key"
build="$cache/build-$kind-$version-$key"
if [ ! -f "$done_dir/$lib" ]; then
    case $kind in
    vulkan)
        say "compiling the Vulkan variant (~5 min on 2 cores; log: $build.log)"
        # shellcheck disable=SC2086
        cmake -S "$llama" -B "$build" -G "Unix Makefiles" $flags \
            "-DCMAKE_C_COMPILER=$zdir/zig-cc" "-DCMAKE_CXX_COMPILER=$zdir/zig-c++" \
            "-DCMAKE_AR=$zdir/zig-ar" "-DCMAKE_RANLIB=$zdir/zig-ranlib" \
            "-DVulkan_INCLUDE_DIR=$vdir/usr/include" \
            "-DVulkan_LIBRARY=$vdir/usr/lib/x86_64-linux-gnu/libvulkan.so.1" \
            "-DCMAKE_PREFIX_PATH=$vdir/usr" \
            "-DVulkan_GLSLC_EXECUTABLE=$(command -v glslc)" > "$build.log" 2>&1 \
            || die "cmake failed (see $build.log)"
        cmake --build "$build" --target ggml-vulkan -j "$jobs" >> "$build.log" 2>&1 \
            || die "the build failed (see $build.log)"
        ;;
    cuda)
        say "compiling the CUDA variant for $archs in $groot (~26 min per architecture on 2 cores; log: $build.log)"
        # The toolkit, the sources and the build folder appear at their own paths in the root.
        mounted=
        unmount() { for m in $mounted; do umount "$m" 2>/dev/null; done; mounted=; }
        trap unmount EXIT
        trap 'unmount; exit 130' INT
        trap 'unmount; exit 143' TERM
        mkdir -p "$build"
        for d in "$cuda_home" "$src" "$here/native" "$build"; do
            mkdir -p "$groot$d"
            mount --bind "$d" "$groot$d" || die "cannot mount $d into $groot (needs root)"
            mounted="$groot$d $mounted"
        done
        # shellcheck disable=SC2086
        chroot "$groot" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/tmp \
            cmake -S "$here/native/cuda-blas" -B "$build" -G "Unix Makefiles" $flags \
            "-DGGML_SOURCE_DIR=$llama/ggml" "-DCMAKE_CUDA_COMPILER=$nvcc" \
            "-DCUDAToolkit_ROOT=$cuda_home" "-DCMAKE_CUDA_ARCHITECTURES=$archs" > "$build.log" 2>&1 \
            || die "cmake failed (see $build.log)"
        chroot "$groot" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/tmp \
            cmake --build "$build" --target ggml-cuda -j "$jobs" >> "$build.log" 2>&1 \
            || die "the build failed (see $build.log)"
        unmount
        ;;
    rocm)
        rm -rf "$done_dir.tmp"
        mkdir -p "$done_dir.tmp/blas"
        (cd "$llama" && find ggml/include ggml/src/*.h ggml/src/ggml-cuda -type f \
            \( -name '*.h' -o -name '*.cuh' -o -name '*.cu' \) | tar -cf - -T -) \
            | tar -xf - -C "$done_dir.tmp" || die "cannot copy ggml's sources"
        cp -r "$here/native/cuda-blas/blas.cu" "$here/native/cuda-blas/cublas_v2.h" \
            "$here/native/cuda-blas/hip" "$done_dir.tmp/blas/"
        rm -rf "$done_dir"
        mv "$done_dir.tmp" "$done_dir"
        ;;
    esac
    if [ "$kind" != rocm ]; then
        so=$(find "$build" -name "$lib" | head -n 1)
        [ -n "$so" ] || die "the build produced no $lib (see $build)"
        rm -rf "$done_dir.tmp"
        mkdir -p "$done_dir.tmp"
        cp "$so" "$done_dir.tmp/$lib"
        strip --strip-unneeded "$done_dir.tmp/$lib"
        rm -rf "$done_dir"
        mv "$done_dir.tmp" "$done_dir"
    fi
fi
# What the variant needs at run time (`pyfile build` packs this file with it), written on
# every run from the library itself.
glibc=none
if [ "$kind" != rocm ]; then
    glibc=$(newest_glibc "$done_dir/$lib")
    if [ "$(printf '%s\n%s\n' "$glibc" "$glibc_max" | sort -V | tail -n 1)" != "$glibc_max" ]; then
        die "$lib needs GLIBC_$glibc, newer than the $glibc_max every pyfile promises"
    fi
fi
printf '{"kind": "%s", "engine": "llama-cpp-python %s", "archs": [%s], "needs": [%s], "glibc": "%s"%s}\n' \
    "$kind" "$version" "$archs_json" "$needs" "$glibc" "$extra" > "$done_dir/.variant.json.tmp"
mv "$done_dir/.variant.json.tmp" "$done_dir/variant.json"
# Publish: $variants/KIND points at the newest build of this kind (an atomic symlink swap).
mkdir -p "$variants"
ln -sfn "$done_dir" "$variants/.$kind.tmp"
mv -T "$variants/.$kind.tmp" "$variants/$kind"
if [ -n "$out" ]; then
    mkdir -p "$out"
    if [ "$(cd "$out" && pwd -P)" != "$(cd "$done_dir" && pwd -P)" ]; then
        cp -r "$done_dir/." "$out/"
    fi
    echo "$out"
else
    echo "$variants/$kind"
fi
