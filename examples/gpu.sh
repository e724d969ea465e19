#!/bin/sh
# Build a CUDA variant of the engine (needs nvcc 13; ~15 min per GPU architecture on 2 cores)
# and pack it into a pyfile that still runs on machines without a GPU.
set -eu
model=${1:?usage: examples/gpu.sh MODEL.gguf [OUT.pyfile]}
out=${2:-model-cuda.pyfile}
dir=${XDG_CACHE_HOME:-$HOME/.cache}/pyfile-dev/variants/cuda
CUDA_ARCHS=${CUDA_ARCHS:-"80;86;89;90"} scripts/build-variant.sh cuda "$dir"
pyfile build "$model" -o "$out" --backend "cuda=$dir"
echo "built $out: ./$out --gpu auto picks the GPU where one is usable"
