"""What each CUDA architecture costs the prebuilt variant, measured on a sample of its units
against the anchor, the PTX-only form the tests build (75-virtual), in one run.

    python bench/bench_cuda_archs.py [--every 12] [--archs 75-real,80-real,...]

Building the full `make gpu` list takes hours on 2 cores, so this compiles every Nth unit of
ggml's CUDA backend (the published sources, this machine's nvcc, the prebuilt variant's
options: MMQ forced, no VMM, `-compress-mode=size`) once per architecture and reports, per
architecture: the sample's GPU code (the objects' ``.nv_fatbin`` sections), its Deflate size
(what a file stores), the compile time, and each as a ratio to 75-virtual. The estimate for a
whole variant keeps the published 75-virtual library's host code and scales its GPU code by
the sum of those ratios.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))
from pyfile.runtime.backend.compile import Nvcc, sources  # noqa: E402

DEFAULT = "75-real,80-real,86-real,89-real,90-real,120-real,90-virtual"
PREBUILT = ("GGML_USE_CUDA", "GGML_CUDA_FORCE_MMQ", "GGML_CUDA_NO_VMM", "GGML_CUDA_USE_GRAPHS")


def gencode(spec: str) -> list:
    arch, _, form = spec.partition("-")
    return ["-gencode", f"arch=compute_{arch},code=" + (f"compute_{arch}" if form == "virtual"
                                                        else f"sm_{arch}")]


def compile_sample(nvcc: Nvcc, folder: str, units: list, spec: str, out: str):
    os.makedirs(out, exist_ok=True)

    def one(unit: str) -> str:
        obj = os.path.join(out, unit.replace(os.sep, "_") + ".o")
        cmd = [nvcc.path, *gencode(spec), "-O3", "-Xcompiler", "-fPIC", "-std=c++17",
               "-use_fast_math", "-extended-lambda", "-compress-mode=size", "-w",
               *[f"-D{d}" for d in PREBUILT], *sources.defines(),
               "-I", os.path.join(folder, sources.BLAS),  # pyfile's cublas_v2.h, as prebuilt
               *sources.includes(folder),
               "-c", os.path.join(folder, unit), "-o", obj]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"{unit} for {spec}: {r.stderr[-500:]}")
        return obj

    t = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        objs = list(pool.map(one, units))
    took = time.perf_counter() - t
    data = b"".join(fatbin(o) for o in objs)
    return len(data), len(zlib.compress(data, 6)), took


def fatbin(path: str) -> bytes:
    """The GPU code nvcc put in an object or library (its .nv_fatbin section)."""
    with tempfile.NamedTemporaryFile() as out:
        subprocess.run(["objcopy", "-O", "binary", "--only-section=.nv_fatbin", path, out.name],
                       check=True)
        return open(out.name, "rb").read()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--every", type=int, default=12)
    ap.add_argument("--archs", default=DEFAULT)
    dev = os.path.expanduser("~/.cache/pyfile-dev/variants")
    ap.add_argument("--sources", default=os.path.join(dev, "rocm"))
    ap.add_argument("--variant", default=os.path.join(dev, "cuda", "libggml-cuda.so"),
                    help="the published 75-virtual CUDA variant (make gpu CUDA_ARCHS=75-virtual)")
    a = ap.parse_args()
    lib = open(a.variant, "rb").read()
    fat = fatbin(a.variant)
    lib_def, fat_def = len(zlib.compress(lib, 6)), len(zlib.compress(fat, 6))
    print(f"anchor library {a.variant}: {len(lib) / 1e6:.1f} MB ({lib_def / 1e6:.1f} MB "
          f"deflated), of which GPU code {len(fat) / 1e6:.1f} MB ({fat_def / 1e6:.1f} MB)")
    nvcc = Nvcc.find(os.environ)
    units = sources.units(a.sources)[::a.every]
    print(f"nvcc {nvcc.version}; {len(units)} of {len(sources.units(a.sources))} units "
          f"(every {a.every}th); {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as d:
        base = compile_sample(nvcc, a.sources, units, "75-virtual", os.path.join(d, "anchor"))
        print(f"{'arch':<12}{'objects':>12}{'deflated':>12}{'compile':>10}"
              f"{'x bytes':>9}{'x deflated':>12}{'x time':>8}")
        rows = [("75-virtual", *base)]
        for spec in a.archs.split(","):
            rows.append((spec, *compile_sample(nvcc, a.sources, units, spec,
                                               os.path.join(d, spec))))
        total_raw = total_def = 0.0
        for spec, raw, deflated, took in rows:
            print(f"{spec:<12}{raw / 1e6:>10.2f}MB{deflated / 1e6:>10.2f}MB{took:>9.0f}s"
                  f"{raw / base[0]:>9.2f}{deflated / base[1]:>12.2f}{took / base[2]:>8.2f}")
            if spec != "75-virtual":
                total_raw += raw / base[0]
                total_def += deflated / base[1]
    raw = len(lib) - len(fat) + len(fat) * total_raw
    deflated = lib_def - fat_def + fat_def * total_def
    print(f"estimate for {a.archs}: library ~{raw / 1e6:.0f} MB, ~{deflated / 1e6:.0f} MB "
          f"deflated in a file (75-virtual: {len(lib) / 1e6:.1f} MB, {lib_def / 1e6:.1f} MB; "
          f"x{raw / len(lib):.1f} and x{deflated / lib_def:.1f})")


if __name__ == "__main__":
    main()
