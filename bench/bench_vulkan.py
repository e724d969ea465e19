"""What the Vulkan variant costs and does, against the same file without it, in one run.

    python bench/bench_vulkan.py MODEL.gguf [--tokens 16] [--runs 3]

1. Size: a default build (packs the published Vulkan variant) against `--no-gpu-variants`.
2. Start-up on a machine with no GPU (`--gpu auto`, verdicts cached): both files, medians;
   the Vulkan finder does not even start its probe without a GPU device node.
3. Generation on Mesa's software Vulkan device (lavapipe; PYFILE_ALLOW_SOFTWARE_GPU=1)
   against the CPU backend: llama.cpp's eval timing, medians. On a real GPU the ratio is
   the point of the variant; on lavapipe it only shows the path works end to end.
"""

import argparse
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import eval_rate, timed, venv_env  # noqa: E402


def run(cmd, extra=None):
    return timed(cmd, {**venv_env(), **(extra or {})})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        cache = {"PYFILE_CACHE_DIR": os.path.join(d, "cache")}
        with_vk, without = os.path.join(d, "vk.pyfile"), os.path.join(d, "plain.pyfile")
        _, b = run([sys.executable, "-m", "pyfile", "build", a.model, "-o", with_vk])
        if "carries no Vulkan variant" in b.stderr:
            raise SystemExit("no Vulkan variant is published: run `make setup`")
        run([sys.executable, "-m", "pyfile", "build", a.model, "-o", without,
             "--no-gpu-variants"])
        size_vk, size_plain = os.path.getsize(with_vk), os.path.getsize(without)
        for pf in (with_vk, without):  # first runs: probes, unpacking
            run([pf, "-p", "Hi", "-n", "1"], cache)
        start_vk, start_plain = [], []
        for _ in range(a.runs):
            start_vk.append(run([with_vk, "-p", "Hi", "-n", "1"], cache)[0])
            start_plain.append(run([without, "-p", "Hi", "-n", "1"], cache)[0])
        soft = {**cache, "PYFILE_ALLOW_SOFTWARE_GPU": "1"}
        _, first = run([with_vk, "--gpu", "vulkan", "-p", "Hi", "-n", "1"], soft)
        line = first.stderr.strip().splitlines()[-1]
        prompt = ["-p", "Once upon a time", "--temp", "0", "-n", str(a.tokens), "-v"]
        rate_vk, rate_cpu = [], []
        for _ in range(a.runs):
            rate_vk.append(eval_rate(run([with_vk, "--gpu", "vulkan", *prompt], soft)[1].stderr))
            rate_cpu.append(eval_rate(run([with_vk, "--gpu", "cpu", *prompt], cache)[1].stderr))
    sv, sp = statistics.median(start_vk), statistics.median(start_plain)
    gv, gc = statistics.median(rate_vk), statistics.median(rate_cpu)
    print(f"file, default build        {size_vk / 1e6:.2f} MB")
    print(f"file, --no-gpu-variants    {size_plain / 1e6:.2f} MB")
    print(f"Vulkan variant adds        {(size_vk - size_plain) / 1e6:.2f} MB")
    print(f"start-up, with variant     {sv * 1000:.0f} ms  "
          f"(median of {a.runs}, --gpu auto, no GPU)")
    print(f"start-up, without          {sp * 1000:.0f} ms")
    print(f"start-up ratio             {sv / sp:.2f}x")
    print(f"{line}")
    print(f"generation, lavapipe       {gv:.2f} tok/s  (median of {a.runs}, {a.tokens} tokens)")
    print(f"generation, CPU backend    {gc:.2f} tok/s")
    print(f"lavapipe / CPU             {gv / gc:.3f}x")


if __name__ == "__main__":
    main()
