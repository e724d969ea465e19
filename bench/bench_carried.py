"""Start-up of a file that carries its interpreter, on a machine with pyenv's shims on PATH.

    python bench/bench_carried.py MODEL.gguf [--runs 10]

1. First run: `./model.pyfile --version` on an empty cache (the interpreter is cut out of
   the file, checked against its SHA-256 and unpacked) against the same command once it
   is unpacked; then the first `-p Hi -n 1` (the runtime's packages unpacked and compiled,
   the CPU variant probed).
2. Launch overhead: wall time of `./model.pyfile -p Hi -n 1` (warm cache) against
   `python raw_engine.py MODEL.gguf VARIANT Hi 1` (plain llama-cpp-python in this venv,
   loading the same CPU variant), both with pyenv's shims first on PATH as on a machine
   that uses pyenv. Runs are interleaved; best and median compared (goal <= 1.10x).
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
from common import timed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--runs", type=int, default=10)
    a = ap.parse_args()
    pyenv = os.path.expanduser("~/.pyenv")
    path = os.pathsep.join([os.path.join(pyenv, "shims"), os.path.join(pyenv, "bin"),
                            "/usr/local/bin", "/usr/bin", "/bin"])
    with tempfile.TemporaryDirectory() as d:
        pf = os.path.join(d, "model.pyfile")
        r = subprocess.run([sys.executable, "-m", "pyfile", "build", a.model, "-o", pf],
                           capture_output=True, text=True)
        if r.returncode or "no carried interpreter" in r.stderr:
            raise SystemExit(f"build failed or carries no interpreter: {r.stderr}")
        env = {"PATH": path, "HOME": d, "LANG": "C.UTF-8",
               "PYFILE_CACHE_DIR": os.path.join(d, "cache")}
        unpack = []
        for i in range(3):
            env["PYFILE_CACHE_DIR"] = os.path.join(d, f"cache{i}")
            cold = timed([pf, "--version"], env)[0]
            warm = min(timed([pf, "--version"], env)[0] for _ in range(3))
            unpack.append((cold, warm))
        first, r = timed([pf, "-p", "Hi", "-n", "1"], env)  # runtime unpack + probe
        variant = re.search(r"backend cpu \((\S+) variant", r.stderr).group(1)
        raw = [sys.executable, os.path.join(HERE, "raw_engine.py"), a.model, variant,
               "Hi", "1"]
        launch = {"raw engine": [], "pyfile": []}
        for _ in range(a.runs):
            launch["raw engine"].append(timed(raw, env)[0])
            launch["pyfile"].append(timed([pf, "-p", "Hi", "-n", "1"], env)[0])
        size = os.path.getsize(pf)
    cold = statistics.median(c for c, _ in unpack)
    warm = statistics.median(w for _, w in unpack)
    print(f"CPU variant            {variant}")
    print(f"first --version        {cold * 1000:.0f} ms (unpack the interpreter), warm "
          f"{warm * 1000:.0f} ms: unpacking costs {(cold - warm) * 1000:.0f} ms "
          f"(median of 3 empty caches)")
    print(f"first -p Hi -n 1       {first * 1000:.0f} ms (the runtime unpacked and compiled, "
          f"the CPU variant probed)")
    best_raw, med_raw = min(launch["raw engine"]), statistics.median(launch["raw engine"])
    print(f"launch -p Hi -n 1      best     median   (of {a.runs}, interleaved, pyenv shims "
          f"first on PATH)")
    for kind, xs in launch.items():
        best, med = min(xs), statistics.median(xs)
        ratio = "" if kind == "raw engine" else \
            f"   {best / best_raw:.2f}x best, {med / med_raw:.2f}x median"
        print(f"  {kind:<20} {best * 1000:>5.0f} ms  {med * 1000:>5.0f} ms{ratio}")
    print("  goal <= 1.10x")
    print(f"file size              {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
