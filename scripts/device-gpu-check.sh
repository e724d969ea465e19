#!/bin/sh
# The GPU check for a lent NVIDIA machine (README "GPUs"): what a default file does there.
#
#   here:    scripts/device-gpu-check.sh stage            # .gpucheck/N/: the file in <= 56 MiB parts
#   device:  scripts/device-gpu-check.sh keep .gpucheck/1 # carry [".gpucheck/1"]; one call per
#            ...                                          # part but the last, back to back (the
#                                                         # machine stays warm 30 s after a call)
#   device:  scripts/device-gpu-check.sh run .gpucheck/N  # the last part; log in $OUT/gpu-check.log
#
# `stage` builds SmolLM2 for x86-64 with the GPU parts a default file has (the prebuilt CUDA
# variant and ggml's GPU sources) and splits it, one part per folder so that each call carries
# one (the 64 MiB limit); it prints the calls. The device needs nothing from us but the file:
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
    echo "staged $n parts; device calls, back to back:"
    i=0
    for p in "$stage_dir"/part.*; do
        i=$((i + 1))
        mkdir "$stage_dir/$i" && mv "$p" "$stage_dir/$i/"
        verb=keep; [ "$i" -eq "$n" ] && verb=run
        echo "  command: scripts/device-gpu-check.sh $verb .gpucheck/$i   carry: [\".gpucheck/$i\"]"
    done
    exit 0
    ;;
keep)
    mkdir -p "$STASH" && cp "$here/${2:?which part folder}"/part.* "$STASH"/ && ls -la "$STASH"
    exit 0
    ;;
run) ;;
*) echo "usage: $0 stage | keep .gpucheck/N | run .gpucheck/N" >&2; exit 2 ;;
esac

OUT=${OUT:-/tmp/out}
W=${WORK:-/tmp/gpucheck}
mkdir -p "$W" "$OUT" "$STASH"
cp "$here/${2:?which part folder}"/part.* "$STASH"/ || exit 1
cat "$STASH"/part.* > "$W/smol.pyfile" && chmod +x "$W/smol.pyfile"
export PYFILE_CACHE_DIR="$W/cache"
P="$W/smol.pyfile"
PARIS='The capital of France is'
LONG=$(for _ in $(seq 1 40); do printf 'The quick brown fox jumps over the lazy dog. '; done)
tm() { s=$(date +%s%N); "$@"; e=$(date +%s%N); echo "[elapsed $(( (e - s) / 1000000 )) ms]" >&2; }
speed() {  # NAME ARGS: prompt and generation tokens/s of one backend (-v: the engine's timings)
    name=$1; shift
    "$P" "$@" -p "$LONG" --temp 0 -n 256 -v 2>&1 \
        | grep -E "^pyfile: backend|prompt eval time|[^t] eval time" | tee "$W/speed-$name.txt"
}
ratio() {  # A B: A's tokens/s over B's, prompt and generation
    python3 - "$W/speed-$1.txt" "$W/speed-$2.txt" "$1" "$2" <<'PY'
import re, sys
def rates(path):
    text = open(path).read()
    get = lambda kind: float(re.search(kind + r" time =.*?([\d.]+) tokens per second", text).group(1))
    return get("prompt eval"), get(r"\s eval")
try:
    (pa, ga), (pb, gb) = rates(sys.argv[1]), rates(sys.argv[2])
    print(f"{sys.argv[3]} / {sys.argv[4]}: prompt {pa:.0f}/{pb:.0f} tok/s = {pa / pb:.2f}x, "
          f"generation {ga:.0f}/{gb:.0f} tok/s = {ga / gb:.2f}x")
except (AttributeError, OSError, ZeroDivisionError) as e:
    print(f"{sys.argv[3]} / {sys.argv[4]}: no ratio ({e})")
PY
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
tm "$P" -p "$PARIS" --temp 0 -n 32 > "$W/gpu.txt" 2> "$W/gpu.err"; cat "$W/gpu.err" "$W/gpu.txt"; echo
tm "$P" -p "$PARIS" --temp 0 -n 32 2>&1
"$P" --gpu cpu -p "$PARIS" --temp 0 -n 32 > "$W/cpu.txt" 2> "$W/cpu.err"; cat "$W/cpu.err" "$W/cpu.txt"; echo
grep -q "^pyfile: backend cuda .*all layers offloaded\|^pyfile: backend cuda .*\([0-9]*\)/\1 layers" "$W/gpu.err" \
    && echo "CUDA chosen, every layer offloaded: yes" || echo "CUDA chosen, every layer offloaded: NO"
if cmp -s "$W/gpu.txt" "$W/cpu.txt"; then echo "greedy text, CUDA vs CPU: equal (32 tokens)"
else echo "greedy text, CUDA vs CPU: DIFFERENT"; fi
echo "== 3. speed: prebuilt CUDA variant"; speed prebuilt
echo "== 3. speed: CPU"; speed cpu --gpu cpu
echo "== 3. anchor: --recompile (ggml's CUDA backend with cuBLAS, native code for this GPU)"
tm "$P" --recompile -p "$PARIS" --temp 0 -n 8 2>&1 | grep -E "^pyfile|elapsed"
speed cublas
ratio prebuilt cublas; ratio prebuilt cpu; ratio cublas cpu
echo "== -ngl 10, CUDA_VISIBLE_DEVICES=-1 (auto and --gpu nvidia)"
"$P" -ngl 10 -p "$PARIS" --temp 0 -n 8 2>&1
CUDA_VISIBLE_DEVICES=-1 "$P" -p "$PARIS" --temp 0 -n 8 2>&1
CUDA_VISIBLE_DEVICES=-1 "$P" --gpu nvidia -p "$PARIS" -n 8 2>&1; echo "rc=$?"
echo "== verdicts"; cat "$W/cache/verdicts.json"
} 2>&1 | tee "$OUT/gpu-check.log"
