"""What flushing to disk costs (issue 25): the build output and the unpacked runtime are
fsync'ed before their rename. Same process, same inputs, alternating rounds:

    python bench/bench_flush.py MODEL.gguf [--rounds 5] [--dir DIR]

1. A warm build of MODEL, with the flush (as pyfile builds) and with ``os.fsync`` stubbed out
   for the build (the anchor), each to a new name after ``sync``; prints both and the ratio.
2. A first run's unpack of the carried runtime into an empty cache with the flush stubbed out,
   then ``atomic.fsync_tree`` over the folder it wrote (the work the flush adds to the unpack,
   on the same dirty pages); prints both and the ratio.
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time

from pyfile import builder
from pyfile.runtime.container import atomic, bundle
from pyfile.runtime.container.archive import Archive


def _line(name, times):
    return (f"{name:24} " + " ".join(f"{t:.2f}" for t in times)
            + f"  median {statistics.median(times):.2f} s")


def builds(model, rounds, folder):
    real = os.fsync
    times = {"flush": [], "no flush": []}
    builder.build(model, os.path.join(folder, "warm.pyfile"))  # caches warm
    for i in range(rounds):
        for mode in (("flush", "no flush") if i % 2 == 0 else ("no flush", "flush")):
            out = os.path.join(folder, f"b{i}-{mode[0]}.pyfile")
            os.sync()
            os.fsync = real if mode == "flush" else (lambda fd: None)
            try:
                t = time.perf_counter()
                builder.build(model, out)
                times[mode].append(time.perf_counter() - t)
            finally:
                os.fsync = real
            os.unlink(out)
    print(_line("build, flushed", times["flush"]))
    print(_line("build, not flushed", times["no flush"]))
    print(f"build: flushed / not flushed = "
          f"{statistics.median(times['flush']) / statistics.median(times['no flush']):.2f}x")
    return os.path.join(folder, "warm.pyfile")


def unpacks(path, rounds, folder):
    real = atomic.fsync_tree
    unpack, flush = [], []
    for _ in range(rounds):
        cache = tempfile.mkdtemp(dir=folder)
        os.environ["PYFILE_CACHE_DIR"] = cache
        os.sync()
        atomic.fsync_tree = lambda p: None
        try:
            t = time.perf_counter()
            with Archive.open(path) as arch:
                rt = next(r for r in arch.manifest.runtimes if bundle.fits(r)[0])
                unpacked = bundle._extract(arch, rt)
            unpack.append(time.perf_counter() - t)
        finally:
            atomic.fsync_tree = real
        t = time.perf_counter()
        atomic.fsync_tree(unpacked)
        flush.append(time.perf_counter() - t)
        files = sum(len(names) for _, _, names in os.walk(unpacked))
        shutil.rmtree(cache)
    print(_line("unpack, not flushed", unpack))
    print(_line("flush of that unpack", flush))
    print(f"unpack: {files} files; flush / unpack = "
          f"{statistics.median(flush) / statistics.median(unpack):.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp folder)")
    a = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="bench-flush-", dir=a.dir)
    try:
        built = builds(a.model, a.rounds, folder)
        unpacks(built, a.rounds, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
