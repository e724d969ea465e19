#!/bin/sh
# The GPU check run on a lent device machine (see README "Measured on an H100").
# Inputs, staged in $STASH by earlier calls (the device has no registry access):
#   model.part1 model.part2  the SmolLM2 GGUF, split to fit the transfer limit
#   engine.tar.xz            llama_cpp package + CPU variants from our portable build
#   diskcache-*.whl          the one llama-cpp-python dependency the device image lacks
#   cuda.xz variant.json     libggml-cuda.so from scripts/build-variant.sh (sm_90)
set -u
STASH=${STASH:-/tmp/stash}
OUT=${OUT:-/tmp/out}
W=${WORK:-/tmp/gpucheck}
mkdir -p "$W/site" "$W/cuda" "$OUT"
py=$(command -v python3)
"$py" - "$STASH" "$W" <<'PY'
import lzma, shutil, sys, tarfile
stash, work = sys.argv[1], sys.argv[2]
with tarfile.open(f"{stash}/engine.tar.xz") as t:
    t.extractall(f"{work}/site")
with lzma.open(f"{stash}/cuda.xz") as src, open(f"{work}/cuda/libggml-cuda.so", "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
shutil.copy(f"{stash}/variant.json", f"{work}/cuda/variant.json")
with open(f"{work}/smol.gguf", "wb") as out:
    for part in ("model.part1", "model.part2"):
        with open(f"{stash}/{part}", "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
PY
"$py" -m pip install -q --no-index --no-deps --no-compile --target "$W/site" "$STASH"/diskcache-*.whl \
    $(ls "$STASH"/wheels/*.whl 2>/dev/null)  # the server stack, when the image lacks it
export PYTHONPATH="$W/site:$PWD/src" PYFILE_PYTHON="$py" PYFILE_CACHE_DIR="$W/cache"
P="$W/smol.pyfile"
tm() { s=$(date +%s%N); "$@"; e=$(date +%s%N); echo "[elapsed $(( (e - s) / 1000000 )) ms]"; }
PARIS='The capital of France is'
{
echo "== machine"; nvidia-smi -L 2>&1; grep -m1 "model name" /proc/cpuinfo; nproc
"$py" -c "import llama_cpp, sys; print('llama_cpp', llama_cpp.__version__, sys.version.split()[0])"
echo "== build"; "$py" -m pyfile build "$W/smol.gguf" -o "$P" --backend "cuda=$W/cuda" ${PYFILE_BUILD_FLAGS:-} 2>&1
"$py" -m pyfile inspect "$P" | grep -E "variant|members" -A0
echo "== auto (first run: probes)"; tm "$P" -p "$PARIS" --temp 0 -n 16 2>&1
echo "== auto (cached verdicts)"; tm "$P" -p "$PARIS" --temp 0 -n 16 2>&1
echo "== cuda speed"; "$P" -p "Once upon a time" --temp 0 -n 256 -v 2>&1 | grep -E "^pyfile|offloaded|eval time"
echo "== cpu speed"; "$P" --gpu cpu -p "Once upon a time" --temp 0 -n 256 -v 2>&1 | grep -E "^pyfile|eval time"
echo "== -ngl 10"; "$P" -ngl 10 -p "$PARIS" --temp 0 -n 8 2>&1
echo "== CUDA_VISIBLE_DEVICES=-1, auto"; CUDA_VISIBLE_DEVICES=-1 "$P" -p "$PARIS" --temp 0 -n 8 2>&1
echo "== CUDA_VISIBLE_DEVICES=-1, --gpu nvidia"; CUDA_VISIBLE_DEVICES=-1 "$P" --gpu nvidia -p "$PARIS" -n 8 2>&1; echo "rc=$?"
echo "== server on the GPU"
if "$py" -c "import fastapi, uvicorn" 2>/dev/null; then
    "$P" --server --port 8791 --nobrowser --parallel 2 > "$W/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 120); do grep -q "web chat at" "$W/server.log" && break; sleep 0.5; done
    head -2 "$W/server.log"
    "$py" - <<'PY'
import json, time, urllib.request
def post(path, body):
    req = urllib.request.Request("http://127.0.0.1:8791/" + path, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())
print("props backend:", json.load(urllib.request.urlopen("http://127.0.0.1:8791/props"))["backend"])
q = {"messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
     "temperature": 0, "max_tokens": 30}
print("chat:", post("v1/chat/completions", q)["choices"][0]["message"]["content"])
t = time.time(); n = 0
for _ in range(8):
    n += post("v1/completions", {"prompt": "Once upon a time", "max_tokens": 64, "temperature": 0})["usage"]["completion_tokens"]
print("8 sequential completions: %.1f tok/s end to end" % (n / (time.time() - t)))
PY
    kill "$server_pid" 2>/dev/null; wait "$server_pid"
else
    echo "fastapi/uvicorn not on this image: skipped"
fi
echo "== verdicts"; cat "$W/cache/verdicts.json"
echo "== diagnostics"; "$py" -c "from pyfile.runtime.backend.choice import find_runtime_libs as f; print(f('cuda', {}))"
ls -d /usr/local/cuda*/lib64 "$("$py" -c 'import site; print(site.getsitepackages()[0])')"/nvidia/* 2>&1 | head -20
} 2>&1 | tee "$OUT/gpu-check.log"
