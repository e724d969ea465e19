"""Run-time speed of a pyfile against the raw engine on the raw GGUF, in the same run.

    python bench/bench_run.py MODEL.gguf [--runs 10] [--tokens 128] [--baseline OLD.pyfile]

1. Launch overhead: wall time of `./model.pyfile -p Hi -n 1` (exec to exit) for the default,
   self-contained file (its runtime unpacked in a private cache by an untimed first run, which
   is reported) and for a `--slim` one (the venv's engine), against `python raw_engine.py
   MODEL.gguf VARIANT Hi 1` (plain llama-cpp-python loading the same CPU variant). Runs are
   interleaved; best and median are compared (goal <= 1.15x). ``--baseline`` adds a pyfile
   built from an earlier commit to the same interleaved runs (before/after a change).
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import eval_rate, timed, venv_env  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--baseline", default=None, metavar="PYFILE",
                    help="also time this pyfile (built from an earlier commit) as 'before'")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        env = dict(venv_env(), PYFILE_CACHE_DIR=os.path.join(d, "cache"))
        files = {"self-contained": os.path.join(d, "model.pyfile"),
                 "slim": os.path.join(d, "slim.pyfile")}
        for kind, pf in files.items():
            subprocess.run([sys.executable, "-m", "pyfile", "build", a.model, "-o", pf]
                           + (["--slim"] if kind == "slim" else []), check=True,
                           capture_output=True)
        if a.baseline:  # prebuilt: its runtime is unpacked by an untimed first run too
            files["before"] = a.baseline
            timed([a.baseline, "-p", "Hi", "-n", "1"], env)
        first, r = timed([files["self-contained"], "-p", "Hi", "-n", "1"], env)  # unpack+probe
        variant = re.search(r"backend cpu \((\S+) variant", r.stderr).group(1)
        raw = [sys.executable, os.path.join(HERE, "raw_engine.py"), a.model, variant]
        launch = {"raw engine": [], **{k: [] for k in files}}
        for _ in range(a.runs):
            launch["raw engine"].append(timed(raw + ["Hi", "1"], env)[0])
            for kind, pf in files.items():
                launch[kind].append(timed([pf, "-p", "Hi", "-n", "1"], env)[0])
        rate_pf, rate_raw = [], []
        prompt = "Once upon a time"
        for _ in range(3):
            rate_pf.append(eval_rate(timed([files["self-contained"], "-p", prompt, "-n",
                                            str(a.tokens), "--temp", "0", "-v"], env)[1].stderr))
            rate_raw.append(eval_rate(timed(raw + [prompt, str(a.tokens), "-v"], env)[1].stderr))
    best_raw, med_raw = min(launch["raw engine"]), statistics.median(launch["raw engine"])
    gp, gr = statistics.median(rate_pf), statistics.median(rate_raw)
    print(f"CPU variant            {variant}")
    print(f"first run, self-contained (unpack + probe): {first * 1000:.0f} ms")
    print(f"launch -p Hi -n 1      best     median   (of {a.runs}, interleaved)")
    for kind, xs in launch.items():
        best, med = min(xs), statistics.median(xs)
        ratio = "" if kind == "raw engine" else \
            f"   {best / best_raw:.2f}x best, {med / med_raw:.2f}x median"
        print(f"  {kind:<20} {best * 1000:>5.0f} ms  {med * 1000:>5.0f} ms{ratio}")
    print("  goal <= 1.15x")
    print(f"generation, raw        {gr:.1f} tok/s  (median of 3, {a.tokens} tokens)")
    print(f"generation, pyfile     {gp:.1f} tok/s")
    print(f"generation ratio       {gp / gr:.3f}x  (goal >= 0.98)")


if __name__ == "__main__":
    main()
