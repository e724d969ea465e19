"""Images and several models, each against its anchor in the same run.

1. Image prompt vs its text anchor: the colour-probe projector (tests/ggufgen.py) with
   SmolLM2; the time to answer a chat whose user message holds an image vs the same chat
   with the image's word in its place (same pieces), over the server, n rounds interleaved;
   and the same image again (a prompt-cache hit).
2. Model swap vs a warm request: a file with SmolLM2 and the generator's small llama served
   with --models-max 1; a request to the other model (unload + load + answer) vs the same
   request to the model already loaded. RSS with one and two models loaded (--models-max 0).

usage: python bench/bench_vision_router.py MODEL.gguf [--rounds N]
"""

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import proc_mib, venv_env  # noqa: E402
from ggufgen import colour_png, write_colour_projector, write_small_llama  # noqa: E402

QUESTION = "Which colour is named between the tags? Answer with one word."


def post(url, path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=300) as r:
        out = json.loads(r.read())
    return time.perf_counter() - t, out


def serve(pyfile, *args):
    from pyfile.runtime import ready
    proc, where = ready.start([pyfile, "--server", "--port", "0", "--nobrowser", *args],
                              env=venv_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    if where is None:
        raise SystemExit(f"{pyfile}: the server did not start")
    return proc, where["url"]


def build(out, *inputs):
    r = subprocess.run([sys.executable, "-m", "pyfile", "build", *inputs, "-o", out],
                       capture_output=True, text=True, env=venv_env())
    if r.returncode:
        raise SystemExit(r.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="bench-vision-")
    proj = write_colour_projector(os.path.join(d, "mmproj-colours.gguf"), a.model)
    seeing = os.path.join(d, "seeing.pyfile")
    build(seeing, a.model, "--mmproj", proj)
    proc, url = serve(seeing, "-np", "1", "-c", "2048")
    try:
        b64 = base64.b64encode(colour_png("red")).decode()
        image = [{"type": "text", "text": QUESTION},
                 {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}}]
        words = [{"type": "text", "text": QUESTION + "\n red"}]
        img_t, word_t, hit_t = [], [], []
        for i in range(a.rounds):
            # A new system prompt each round: nothing of the prompt is in the cache.
            sys_msg = {"role": "system", "content": f"Round {i}. Be brief."}
            t, r = post(url, "v1/chat/completions", {"max_tokens": 1, "temperature": 0,
                                                      "messages": [sys_msg, {"role": "user",
                                                                             "content": image}]})
            img_t.append(t)
            t, _ = post(url, "v1/chat/completions", {"max_tokens": 1, "temperature": 0,
                                                      "messages": [sys_msg, {"role": "user",
                                                                             "content": image}]})
            hit_t.append(t)
            sys_msg = {"role": "system", "content": f"Round {i}. Be short."}
            t, _ = post(url, "v1/chat/completions", {"max_tokens": 1, "temperature": 0,
                                                      "messages": [sys_msg, {"role": "user",
                                                                             "content": words}]})
            word_t.append(t)
        mi, mw, mh = (statistics.median(x) * 1000 for x in (img_t, word_t, hit_t))
        print(f"image prompt (1 token image, fresh): median {mi:.1f} ms; its text anchor "
              f"(the word instead): {mw:.1f} ms; ratio {mi / mw:.2f}x; the same image again "
              f"(cache hit): {mh:.1f} ms ({mh / mw:.2f}x the anchor); {a.rounds} rounds")
    finally:
        proc.terminate()
        proc.wait()

    small = write_small_llama(os.path.join(d, "small-llama.gguf"), a.model)
    two = os.path.join(d, "two.pyfile")
    build(two, a.model, small)
    smol_id = os.path.basename(a.model)[:-5]
    proc, url = serve(two, "--models-max", "1", "-np", "1", "-c", "1024")
    try:
        body = {"max_tokens": 1, "temperature": 0, "messages": [{"role": "user",
                                                                 "content": "Hi"}]}
        post(url, "v1/chat/completions", {**body, "model": smol_id})
        swaps, warm = [], []
        for _ in range(a.rounds):
            for model in ("small-llama", smol_id):
                t, _ = post(url, "v1/chat/completions", {**body, "model": model})
                swaps.append(t)
                t, _ = post(url, "v1/chat/completions", {**body, "model": model})
                warm.append(t)
        ms, mw = statistics.median(swaps) * 1000, statistics.median(warm) * 1000
        print(f"model swap (--models-max 1: unload, load, 1 token): median {ms:.0f} ms "
              f"[{min(swaps) * 1000:.0f}-{max(swaps) * 1000:.0f}]; the same request warm: "
              f"{mw:.0f} ms; ratio {ms / mw:.1f}x; {2 * a.rounds} swaps")
    finally:
        proc.terminate()
        proc.wait()
    proc, url = serve(two, "--models-max", "0", "-np", "1", "-c", "1024")
    try:
        post(url, "v1/chat/completions", {**body, "model": smol_id})
        one = proc_mib(proc.pid, "VmRSS")
        post(url, "v1/chat/completions", {**body, "model": "small-llama"})
        both = proc_mib(proc.pid, "VmRSS")
        print(f"RSS: SmolLM2 loaded {one:.0f} MiB; SmolLM2 and small-llama loaded "
              f"{both:.0f} MiB (+{both - one:.0f} MiB for an 8 MB model and its 1024-token "
              f"context)")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
