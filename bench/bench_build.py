"""Build speed: `pyfile build` against `cp` of the same GGUF, 1 GiB and 4 GiB, same run.

    python bench/bench_build.py [--sizes-mib 1024,4096] [--repeat 3] [--dir DIR]

For each size: a GGUF of random bytes (real data: a sparse file would make `cp` unrealistically
fast) is written and read once (warm page cache); then one untimed warm-up of each command and
`repeat` timed rounds of cp, build and build --sha256, each round in a rotated order. Each
timing starts after `sync` (no dirty pages left from the previous one) and writes a file that
does not exist yet (replacing an existing file makes ext4 flush the new one at the rename,
which `cp` to a new name never pays). Best of `repeat` is compared. The floor of a build is
the slower of the copy and one pass of the hashes it keeps over the weights, timed in this
process from the page cache: CRC-32 for a default build, CRC-32 + SHA-256 for `--sha256`;
both builds are timed. Also times `pyfile verify` and `pyfile args --set` on the last default
build of the first size.

pyfile runs as an installed package does: with its bytecode (pip compiles it at install; the
warm-up writes it here even where PYTHONDONTWRITEBYTECODE is set, as it is on our CI
machines, where every start would otherwise compile pyfile's modules: +15 ms).
"""

import argparse
import hashlib
import mmap
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def make_gguf(path: str, size_mib: int) -> None:
    """A GGUF of ``size_mib`` MiB of random bytes in 64 MiB tensors (written tensor by tensor)."""
    import gguf
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("bench")
    per = 64 << 20
    count = max(1, (size_mib << 20) // per)
    for i in range(count):
        w.add_tensor_info(f"t{i}", [per], np.dtype(np.int8), per)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(0)
    for i in range(count):
        w.write_tensor_data(rng.integers(-128, 128, per, dtype=np.int8))
    w.close()


#: The environment of every pyfile command: bytecode is written and used (see above).
PYFILE_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(cmd) -> float:
    os.sync()
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=PYFILE_ENV)
    return time.perf_counter() - t


def hash_pass(path: str, sha256: bool) -> float:
    """One pass of the digests a build keeps over the weights, from the page cache."""
    from pyfile.runtime.container.archive import crc32
    t = time.perf_counter()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        view = memoryview(m)
        sha, crc, step = hashlib.sha256(), 0, 1 << 20
        for i in range(0, len(m), step):
            piece = view[i:i + step]
            if sha256:
                sha.update(piece)
            crc = crc32(piece, crc)
            piece.release()
        view.release()
    return time.perf_counter() - t


def fresh(path: str) -> str:
    if os.path.exists(path):
        os.unlink(path)
    return path


def bench_size(d: str, size_mib: int, repeat: int) -> dict:
    src = os.path.join(d, f"model-{size_mib}.gguf")
    make_gguf(src, size_mib)
    subprocess.run(["cat", src], stdout=subprocess.DEVNULL, check=True)  # warm the cache
    copy, out = os.path.join(d, "copy.gguf"), os.path.join(d, "out.pyfile")
    build = [sys.executable, "-m", "pyfile", "build", src, "-o", out]
    timed(["cp", src, fresh(copy)])  # warm-up: first-run costs (bundle cache, page cache)
    timed(build[:-1] + [fresh(out)])
    cps, builds, shas, crc_pass, sha_pass = [], [], [], [], []
    runs = [(cps, lambda: ["cp", src, fresh(copy)]), (builds, lambda: build[:-1] + [fresh(out)]),
            (shas, lambda: build[:-1] + [fresh(out), "--sha256"])]
    for i in range(repeat):
        # Each round in another order: a timing right after a big sync can find the disk
        # still busy (write-back throttles a 4 GiB copy here); no command always pays that.
        for times, cmd in runs[i % 3:] + runs[:i % 3]:
            times.append(timed(cmd()))
        crc_pass.append(hash_pass(src, False))
        sha_pass.append(hash_pass(src, True))
    os.unlink(copy)
    timed(build[:-1] + [fresh(out)])  # leave a default build for verify
    return {"size": os.path.getsize(src), "cp": min(cps), "build": min(builds),
            "sha": min(shas), "crc_pass": min(crc_pass), "sha_pass": min(sha_pass),
            "src": src, "out": out, "all_cp": cps, "all_build": builds, "all_sha": shas}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes-mib", default="1024,4096")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes_mib.split(",")]
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        rows = []
        for i, size in enumerate(sizes):
            r = bench_size(d, size, a.repeat)
            rows.append(r)
            if i == 0:
                verify = timed([sys.executable, "-m", "pyfile", "verify", r["out"]])
                edit = timed([sys.executable, "-m", "pyfile", "args", r["out"], "--set", "-n 5"])
                start = timed([sys.executable, "-c", "import pyfile.cli"])
                verify_gib = r["size"] / (1 << 30) / verify
            os.unlink(r["src"])
            os.unlink(r["out"])
    print(f"best of {a.repeat} after a warm-up; real (random) data; warm page cache; "
          f"{os.cpu_count()} CPUs; floor = slower of cp and one pass of the kept hashes")
    print(f"{'input':>9}  {'cp':>6}  {'build':>6}  {'build/cp':>8}  {'CRC pass':>8}  "
          f"{'--sha256':>8}  {'/cp':>5}  {'SHA pass':>8}  {'/floor':>6}")
    for r in rows:
        floor = max(r["cp"], r["sha_pass"])
        print(f"{r['size'] / (1 << 30):>5.2f} GiB  {r['cp']:>5.3f}s {r['build']:>5.3f}s  "
              f"{r['build'] / r['cp']:>7.2f}x  {r['crc_pass']:>7.2f}s  {r['sha']:>7.2f}s  "
              f"{r['sha'] / r['cp']:>4.1f}x  {r['sha_pass']:>7.2f}s  {r['sha'] / floor:>5.2f}x")
        print(f"{'':>9}  all cp: {' '.join(f'{x:.3f}' for x in r['all_cp'])}; "
              f"all build: {' '.join(f'{x:.3f}' for x in r['all_build'])}; "
              f"all --sha256: {' '.join(f'{x:.2f}' for x in r['all_sha'])}")
    print("goal: build/cp <= 1.5 (default build: CRC-32 of the weights, at 28 GB/s)")
    print(f"pyfile verify      {verify:.2f} s ({verify_gib:.2f} GiB/s) for the first size")
    print(f"pyfile args --set  {edit:.2f} s  (interpreter start + import pyfile.cli {start:.2f} s)")


if __name__ == "__main__":
    main()
