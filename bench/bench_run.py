"""Run-time speed of a pyfile against the raw engine on the raw GGUF, in the same run.

    python bench/bench_run.py MODEL.gguf [--runs 10] [--tokens 128]

1. Launch overhead: wall time of `./model.pyfile -p Hi -n 1` against `python raw_engine.py
   MODEL.gguf VARIANT Hi 1` (plain llama-cpp-python loading the same CPU variant), runs
   interleaved, medians compared (goal <= 1.15x).
2. Generation speed: llama.cpp's own eval timing (tokens/s) for N greedy tokens, both ways
   (goal >= 0.98x).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import venv_env  # noqa: E402


env = venv_env


def timed(cmd, **kw):
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env(), **kw)
    if r.returncode:
        raise SystemExit(f"failed: {cmd}: {r.stderr}")
    return time.perf_counter() - t, r


def eval_rate(stderr: str) -> float:
    m = re.search(r"^\S*\s+eval time =.*?([\d.]+) tokens per second", stderr, re.M)
    if not m:
        raise SystemExit("no eval timing in the log")
    return float(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=128)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        pf = os.path.join(d, "model.pyfile")
        subprocess.run([sys.executable, "-m", "pyfile", "build", a.model, "-o", pf],
                       check=True, capture_output=True)
        _, first = timed([pf, "-p", "Hi", "-n", "1"])
        variant = re.search(r"backend cpu \((\S+) variant", first.stderr).group(1)
        raw = [sys.executable, os.path.join(HERE, "raw_engine.py"), a.model, variant]
        launch_pf, launch_raw = [], []
        for _ in range(a.runs):
            launch_pf.append(timed([pf, "-p", "Hi", "-n", "1"])[0])
            launch_raw.append(timed(raw + ["Hi", "1"])[0])
        rate_pf, rate_raw = [], []
        prompt = "Once upon a time"
        for _ in range(3):
            rate_pf.append(eval_rate(timed([pf, "-p", prompt, "-n", str(a.tokens), "--temp",
                                            "0", "-v"])[1].stderr))
            rate_raw.append(eval_rate(timed(raw + [prompt, str(a.tokens), "-v"])[1].stderr))
    lp, lr = statistics.median(launch_pf), statistics.median(launch_raw)
    gp, gr = statistics.median(rate_pf), statistics.median(rate_raw)
    print(f"CPU variant            {variant}")
    print(f"launch, raw engine     {lr * 1000:.0f} ms  (median of {a.runs})")
    print(f"launch, pyfile         {lp * 1000:.0f} ms")
    print(f"launch ratio           {lp / lr:.2f}x  (goal <= 1.15)")
    print(f"generation, raw        {gr:.1f} tok/s  (median of 3, {a.tokens} tokens)")
    print(f"generation, pyfile     {gp:.1f} tok/s")
    print(f"generation ratio       {gp / gr:.3f}x  (goal >= 0.98)")


if __name__ == "__main__":
    main()
