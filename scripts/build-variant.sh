#!/bin/sh
# Build a GPU variant of the engine from the llama.cpp source that llama-cpp-python 0.3.36
# vendors, so that it matches the installed libggml-base exactly (ggml checks the backend
# API version when it loads a backend).
#
#   scripts/build-variant.sh cuda OUTDIR    # libggml-cuda.so (needs nvcc; cuBLAS comes from
#                                           # the registry's nvidia-cublas wheel)
#   scripts/build-variant.sh rocm OUTDIR    # libggml-hip.so (needs hipcc/ROCm; not on our CI)
#
# Environment: CUDA_ARCHS (default "75;80;86;89;90"), JOBS (default nproc).
# A CUDA variant for one architecture takes ~26 min on 2 cores; each more adds roughly that.
set -eu
kind=${1:?usage: build-variant.sh cuda|rocm OUTDIR}
out=${2:?usage: build-variant.sh cuda|rocm OUTDIR}
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/pyfile-dev
jobs=${JOBS:-$(nproc)}
py=${PYTHON:-python3}
mkdir -p "$cache/sdist" "$out"
src="$cache/sdist/llama_cpp_python-$version"
if [ ! -d "$src/vendor/llama.cpp/ggml" ]; then
    "$py" -m pip download --quiet --no-deps --no-binary :all: -d "$cache/sdist" \
        "llama-cpp-python==$version"
    tar -xzf "$cache/sdist/llama_cpp_python-$version.tar.gz" -C "$cache/sdist"
fi
llama="$src/vendor/llama.cpp"
build="$cache/build-$kind-$version"
common="-DGGML_BACKEND_DL=ON -DGGML_NATIVE=OFF -DGGML_CPU=OFF -DBUILD_SHARED_LIBS=ON
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release"
case $kind in
cuda)
    archs=${CUDA_ARCHS:-75;80;86;89;90}
    blas="$cache/cublas"
    if [ ! -f "$blas/nvidia/cu13/lib/libcublas.so.13" ]; then
        mkdir -p "$blas"
        "$py" -m pip download --quiet --no-deps -d "$blas" nvidia-cublas==13.0.2.14
        "$py" -m zipfile -e "$blas"/nvidia_cublas-13.0.2.14-*.whl "$blas"
    fi
    lib="$blas/nvidia/cu13/lib"
    # The wheel ships only versioned sonames; give the linker the plain names.
    ln -sf libcublas.so.13 "$lib/libcublas.so"
    ln -sf libcublasLt.so.13 "$lib/libcublasLt.so"
    # shellcheck disable=SC2086
    cmake -S "$llama" -B "$build" $common -DGGML_CUDA=ON -DGGML_CUDA_NO_VMM=ON \
        -DGGML_CUDA_NCCL=OFF "-DCMAKE_CUDA_ARCHITECTURES=$archs" \
        "-DCUDA_cublas_LIBRARY=$lib/libcublas.so" "-DCUDA_cublasLt_LIBRARY=$lib/libcublasLt.so" \
        "-DCMAKE_CUDA_FLAGS=-I$blas/nvidia/cu13/include" \
        "-DCMAKE_CXX_FLAGS=-I$blas/nvidia/cu13/include" >&2
    cmake --build "$build" --target ggml-cuda -j "$jobs" >&2
    so=$(find "$build" -name 'libggml-cuda.so' | head -n 1)
    ;;
rocm)
    command -v hipcc >/dev/null 2>&1 || { echo "build-variant: hipcc not found (install ROCm)" >&2; exit 1; }
    # shellcheck disable=SC2086
    cmake -S "$llama" -B "$build" $common -DGGML_HIP=ON \
        "-DAMDGPU_TARGETS=${AMDGPU_TARGETS:-gfx90a;gfx942;gfx1030;gfx1100}" \
        -DCMAKE_HIP_COMPILER="$(hipconfig -l)/clang" >&2
    cmake --build "$build" --target ggml-hip -j "$jobs" >&2
    so=$(find "$build" -name 'libggml-hip.so' | head -n 1)
    ;;
*) echo "build-variant: unknown kind $kind (cuda or rocm)" >&2; exit 2 ;;
esac
cp "$so" "$out/"
strip --strip-unneeded "$out/$(basename "$so")"
# What the variant needs at run time; `pyfile build --backend KIND=DIR` packs this with it.
case $kind in
cuda) archs_json=$(printf '%s' "$archs" | tr ';' '\n' | sed 's/.*/"&"/' | paste -sd, -)
      needs='"libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13"' ;;
rocm) archs_json=$(printf '%s' "${AMDGPU_TARGETS:-gfx90a;gfx942;gfx1030;gfx1100}" | tr ';' '\n' | sed 's/.*/"&"/' | paste -sd, -)
      needs='"libamdhip64.so.6", "librocblas.so.4", "libhipblas.so.2"' ;;
esac
printf '{"kind": "%s", "engine": "llama-cpp-python %s", "archs": [%s], "needs": [%s]}\n' \
    "$kind" "$version" "$archs_json" "$needs" > "$out/variant.json"
echo "$out/$(basename "$so")"
