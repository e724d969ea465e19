"""First run (empty cache: unpack this Python's runtime, compile it, probe the CPU) vs a warm
run of the same default-built file, for every pyenv CPython from 3.9 up.

    python bench/bench_firstrun.py FILE.pyfile [--repeat 3]

Each run is `FILE -p Hi -n 1` from exec to exit with an empty HOME; the first-run figure is
the best of --repeat runs, each with a fresh HOME; the warm one the best of as many runs
after it. Prints a table and the ratio first/warm.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def pythons():
    out = []
    for base in sorted((Path.home() / ".pyenv" / "versions").glob("3.*")):
        m = re.match(r"3\.(\d+)\.", base.name)
        if m and int(m.group(1)) >= 9 and (base / "bin" / "python3").exists():
            out.append((f"3.{m.group(1)}", base / "bin" / "python3"))
    return sorted(out, key=lambda p: int(p[0].split(".")[1]))


def once(pyfile: str, python: Path, home: str) -> float:
    env = {"PATH": "/usr/bin:/bin", "HOME": home, "PYFILE_PYTHON": str(python)}
    t = time.perf_counter()
    r = subprocess.run([pyfile, "-p", "Hi", "-n", "1"], env=env, capture_output=True,
                       stdin=subprocess.DEVNULL)
    took = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f"{python}: exit {r.returncode}: {r.stderr.decode()[-300:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("pyfile")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    print(f"{'python':8} {'first run':>10} {'warm':>8} {'first/warm':>11}")
    for version, py in pythons():
        firsts, warms = [], []
        for _ in range(a.repeat):
            home = tempfile.mkdtemp(prefix="pyfile-bench-home-")
            try:
                firsts.append(once(a.pyfile, py, home))
                warms.append(once(a.pyfile, py, home))
            finally:
                shutil.rmtree(home, ignore_errors=True)
        f, w = min(firsts), min(warms)
        print(f"{version:8} {f:9.2f}s {w:7.2f}s {f / w:10.1f}x   "
              f"(first runs {', '.join(f'{x:.2f}' for x in firsts)})")


if __name__ == "__main__":
    main()
