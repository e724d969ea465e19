#!/bin/sh
# The GPU check for a lent NVIDIA machine (README "GPUs"): what a default file does there.
#
#   here:    scripts/device-gpu-check.sh stage        # .gpucheck/: the file in <= 56 MiB parts
#   device:  scripts/device-gpu-check.sh keep         # one call per part but the last, with
#                                                     # carry [".gpucheck"], back to back
#                                                     # (the machine stays warm 30 s)
#   device:  scripts/device-gpu-check.sh run          # the last part; log in $OUT/gpu-check.log
#
# `stage` builds SmolLM2 for x86-64 with the GPU parts a default file has (the prebuilt CUDA
# variant and ggml's GPU sources) and splits it, numbering the parts so that each `keep` call
# carries the next one (`stage` prints which). The device needs nothing from us but the file:
# its own nvcc builds the BLAS check and the --recompile (cuBLAS) variant, its python3 has numpy.
# `run` checks:
#   1. pyfile's BLAS (native/cuda-blas) against numpy on random shapes, every type and call form
#   2. the default file picks CUDA with every layer offloaded; its greedy text against the CPU's
#   3. prompt and generation tokens/s: the prebuilt variant (pyfile's BLAS, PTX compiled by the
#      driver), the CPU, and the anchor: ggml's CUDA backend with cuBLAS, compiled natively for
#      this GPU by the file's own --recompile path (llama.cpp's CUDA build, minus VMM) — its
#      compile time on this machine is measured too
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
stage_dir=$here/.gpucheck
STASH=${STASH:-/tmp/gpucheck-stash}
PART=$((56 * 1024 * 1024))

case ${1:-} in
stage)
    py=${PYTHON:-$here/.venv/bin/python}
    model=$("$here/scripts/fetch-model.sh" "$py") || exit 1
    rm -rf "$stage_dir" && mkdir -p "$stage_dir"
    grep -qx '/.gpucheck/' "$here/.git/info/exclude" 2>/dev/null || echo '/.gpucheck/' >> "$here/.git/info/exclude"
    "$py" -m pyfile build "$model" -o "$stage_dir/smol.pyfile" --arch x86_64 \
        --gpu-variants cuda,rocm || exit 1
    (cd "$stage_dir" && split -b "$PART" -d -a 1 smol.pyfile part. && rm smol.pyfile)
    n=$(ls "$stage_dir"/part.* | wc -l)
    echo "staged $n parts in $stage_dir; device calls, back to back, each with carry [\".gpucheck\"]:"
    i=0
    for p in "$stage_dir"/part.*; do
        i=$((i + 1))
        if [ "$i" -lt "$n" ]; then echo "  $i: scripts/device-gpu-check.sh keep   (after: only ${p##*/} in .gpucheck)"
        else echo "  $i: scripts/device-gpu-check.sh run    (after: only ${p##*/} in .gpucheck)"; fi
    done
    echo "(between calls, remove the parts already sent: each call carries at most 64 MiB)"
    exit 0
    ;;
keep)
    mkdir -p "$STASH" && cp "$stage_dir"/part.* "$STASH"/ && ls -la "$STASH"
    exit 0
    ;;
run) ;;
*) echo "usage: $0 stage|keep|run" >&2; exit 2 ;;
esac

OUT=${OUT:-/tmp/out}
W=${WORK:-/tmp/gpucheck}
mkdir -p "$W" "$OUT" "$STASH"
cp "$stage_dir"/part.* "$STASH"/ 2>/dev/null
cat "$STASH"/part.* > "$W/smol.pyfile" && chmod +x "$W/smol.pyfile"
export PYFILE_CACHE_DIR="$W/cache"
P="$W/smol.pyfile"
PARIS='The capital of France is'
LONG=$(for _ in $(seq 1 40); do printf 'The quick brown fox jumps over the lazy dog. '; done)
tm() { s=$(date +%s%N); "$@"; e=$(date +%s%N); echo "[elapsed $(( (e - s) / 1000000 )) ms]"; }
speed() {  # prompt and generation tokens/s of one backend (-v prints the engine's timings)
    "$P" "$@" -p "$LONG" --temp 0 -n 256 -v 2>&1 | grep -E "^pyfile: backend|prompt eval time|[^t] eval time"
}
{
echo "== machine"; nvidia-smi -L 2>&1; nvidia-smi --query-gpu=driver_version --format=csv,noheader
grep -m1 "model name" /proc/cpuinfo; nproc; command -v nvcc && nvcc --version | tail -n 2
ls -la "$P"
echo "== 1. BLAS against numpy"
nvcc -shared -Xcompiler -fPIC -O2 -arch=native -I "$here/native/cuda-blas" \
    "$here/native/cuda-blas/blas.cu" "$here/native/cuda-blas/check/blas-check.cu" \
    -o "$W/libblascheck.so" 2>&1 | tail -n 5
python3 "$here/native/cuda-blas/check/check.py" "$W/libblascheck.so" --cases 60
echo "== 2. default file: first run (probes), then cached verdicts"
tm "$P" -p "$PARIS" --temp 0 -n 32 > "$W/gpu.txt" 2> "$W/gpu.err"; cat "$W/gpu.err" "$W/gpu.txt"
tm "$P" -p "$PARIS" --temp 0 -n 32 2>&1
"$P" --gpu cpu -p "$PARIS" --temp 0 -n 32 > "$W/cpu.txt" 2> "$W/cpu.err"; cat "$W/cpu.err" "$W/cpu.txt"
if cmp -s "$W/gpu.txt" "$W/cpu.txt"; then echo "greedy text, CUDA vs CPU: equal (32 tokens)"
else echo "greedy text, CUDA vs CPU: DIFFERENT"; fi
echo "== 3. speed: prebuilt CUDA variant"; speed
echo "== 3. speed: CPU"; speed --gpu cpu
echo "== 3. anchor: --recompile (ggml's CUDA backend with cuBLAS, native code for this GPU)"
tm "$P" --recompile -p "$PARIS" --temp 0 -n 8 2>&1 | grep -E "^pyfile|elapsed"
speed
echo "== -ngl 10, CUDA_VISIBLE_DEVICES=-1 (auto and --gpu nvidia)"
"$P" -ngl 10 -p "$PARIS" --temp 0 -n 8 2>&1
CUDA_VISIBLE_DEVICES=-1 "$P" -p "$PARIS" --temp 0 -n 8 2>&1
CUDA_VISIBLE_DEVICES=-1 "$P" --gpu nvidia -p "$PARIS" -n 8 2>&1; echo "rc=$?"
echo "== verdicts"; cat "$W/cache/verdicts.json"
} 2>&1 | tee "$OUT/gpu-check.log"
