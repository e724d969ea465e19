#!/bin/sh
# Build a CUDA variant that needs only the NVIDIA driver on the target (needs nvcc on this
# machine; ~26 min per GPU architecture on 2 cores) and pack it into a pyfile that still runs
# on machines without a GPU. The variant is published in ~/.cache/pyfile-dev/variants/cuda,
# so every later `pyfile build` on this machine packs it too (--no-gpu-variants leaves it out).
set -eu
model=${1:?usage: examples/gpu.sh MODEL.gguf [OUT.pyfile]}
out=${2:-model-cuda.pyfile}
CUDA_ARCHS=${CUDA_ARCHS:-"80;86;89;90"} scripts/build-variant.sh cuda >/dev/null
pyfile build "$model" -o "$out"
echo "built $out: ./$out --gpu auto picks the GPU where one is usable"
