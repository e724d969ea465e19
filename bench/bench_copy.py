"""The weights' copy alone: `cp` against pyfile's copy with and without the blocks allocated
first (`fallocate`), same file, same run.

    python bench/bench_copy.py [--size-mib 1024] [--repeat 5] [--dir DIR]

A file of random bytes is written and read once (warm page cache). Each round times, in a
rotated order: `cp` to a new file; `pyfile.copier.copy_hashing` (what a build runs: kernel
copy plus the CRC-32 thread) into a new file at a 64 KiB offset; and the same with
`preallocate` disabled. Every timing starts after `sync` and writes a file that does not
exist yet. Prints best and median of each and their ratios to `cp`: the part of a build's
time that is the copy, without the interpreter start and the other members.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))

from pyfile import copier  # noqa: E402

OFFSET = 1 << 16  # where a build puts the weights (DEFAULT_ALIGN)


def fresh(path: str) -> str:
    if os.path.exists(path):
        os.unlink(path)
    os.sync()
    return path


def time_cp(src: str, dst: str) -> float:
    fresh(dst)
    t = time.perf_counter()
    subprocess.run(["cp", src, dst], check=True)
    return time.perf_counter() - t


def time_copy(src: str, dst: str, allocate: bool) -> float:
    fresh(dst)
    real = copier.preallocate
    if not allocate:
        copier.preallocate = lambda fd, offset, size: None
    try:
        size = os.path.getsize(src)
        in_fd = os.open(src, os.O_RDONLY)
        out_fd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            t = time.perf_counter()
            copier.copy_hashing(in_fd, 0, out_fd, OFFSET, size, None, src, False,
                                threading.Event())
            return time.perf_counter() - t
        finally:
            os.close(in_fd)
            os.close(out_fd)
    finally:
        copier.preallocate = real


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        src, dst = os.path.join(d, "src.bin"), os.path.join(d, "dst.bin")
        with open(src, "wb") as f:
            for _ in range(a.size_mib // 64):
                f.write(os.urandom(64 << 20))
        subprocess.run(["cat", src], stdout=subprocess.DEVNULL, check=True)
        runs = {"cp": lambda: time_cp(src, dst),
                "copy, blocks allocated first": lambda: time_copy(src, dst, True),
                "copy, allocated as written": lambda: time_copy(src, dst, False)}
        for run in runs.values():  # warm-up
            run()
        times = {name: [] for name in runs}
        order = list(runs)
        for i in range(a.repeat):
            for name in order[i % 3:] + order[:i % 3]:
                times[name].append(runs[name]())
    cp_best, cp_median = min(times["cp"]), statistics.median(times["cp"])
    print(f"{a.size_mib} MiB of random data, warm page cache, {a.repeat} rounds in rotated "
          f"order, {os.cpu_count()} CPUs")
    print(f"{'':32} {'best':>7} {'median':>7} {'best/cp':>8} {'median/cp':>9}")
    for name, ts in times.items():
        best, median = min(ts), statistics.median(ts)
        print(f"{name:32} {best:>6.3f}s {median:>6.3f}s {best / cp_best:>7.2f}x "
              f"{median / cp_median:>8.2f}x   all: {' '.join(f'{t:.3f}' for t in ts)}")


if __name__ == "__main__":
    main()
