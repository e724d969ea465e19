"""Build speed: `pyfile build` of a ~1 GiB GGUF against `cp` of the same file, same run.

    python bench/bench_build.py [--size-mib 1024] [--repeat 3] [--dir DIR]

Both read from a warm page cache and write to the same folder; each is timed `repeat`
times and the medians are compared. Also times `pyfile verify` and `pyfile args --set`.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def make_gguf(path: str, size_mib: int) -> None:
    import gguf
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("bench")
    rng = np.random.default_rng(0)
    per = 64 << 20
    for i in range(max(1, (size_mib << 20) // per)):
        w.add_tensor(f"t{i}", rng.integers(0, 255, per, dtype=np.uint8).view(np.int8))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def timed(cmd, env=None) -> float:
    os.sync()  # start each timing with no dirty pages left over from the previous one
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        src = os.path.join(d, "model.gguf")
        make_gguf(src, a.size_mib)
        size = os.path.getsize(src)
        subprocess.run(["cat", src], stdout=subprocess.DEVNULL, check=True)  # warm the cache
        cp, build = [], []
        out = os.path.join(d, "out.pyfile")
        for _ in range(a.repeat):
            cp.append(timed(["cp", src, os.path.join(d, "copy.gguf")]))
            os.unlink(os.path.join(d, "copy.gguf"))
            build.append(timed([sys.executable, "-m", "pyfile", "build", src, "-o", out]))
        verify = timed([sys.executable, "-m", "pyfile", "verify", out])
        edit = timed([sys.executable, "-m", "pyfile", "args", out, "--set", "-n 5"])
        start = timed([sys.executable, "-c", "import pyfile.cli"])
    gib = size / (1 << 30)
    mc, mb = statistics.median(cp), statistics.median(build)
    print(f"input              {size / (1 << 20):.0f} MiB, median of {a.repeat}")
    print(f"cp                 {mc:.2f} s  ({gib / mc:.2f} GiB/s)")
    print(f"pyfile build       {mb:.2f} s  ({gib / mb:.2f} GiB/s)  one pass: copy + CRC-32 + SHA-256")
    print(f"build / cp         {mb / mc:.2f}x  (goal <= 1.5)")
    print(f"pyfile verify      {verify:.2f} s  ({gib / verify:.2f} GiB/s)")
    print(f"pyfile args --set  {edit:.2f} s  (interpreter start alone {start:.2f} s)")


if __name__ == "__main__":
    main()
