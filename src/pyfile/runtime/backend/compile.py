"""Compile ggml's GPU backend on this machine, once, for exactly its GPU (AMD: ROCm's hipcc).

A pyfile cannot carry a ROCm build for every AMD GPU and ROCm release (each is hundreds of
MB, tied to one ``libamdhip64.so.N``), so it carries ggml's GPU sources instead (one tar,
0.4 MB deflated) and, on the first run that finds an AMD GPU and ROCm 6.1+, compiles them
with the user's ``hipcc`` for that GPU's ``gfx`` target and pyfile's own BLAS kernels (no
hipBLAS or rocBLAS needed). The result lands in the user cache, keyed by the sources, the
ROCm version and the target, under a lock (concurrent first runs compile once) through a
work folder renamed into place; finished objects are kept beside it, so a compile cut short
resumes. Every later run loads it at once. ``--recompile`` forces a fresh compile.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Callable, List, Mapping, Optional, Tuple

from ..container.versions import parse
from ..errors import ArchiveError, BackendError

#: ggml's HIP backend needs this ROCm or newer (its CMake refuses older ones).
ROCM_MIN = (6, 1)
#: The member (in the variant's folder of the file) that holds the sources, as one tar.
SOURCES_TAR = "sources.tar"
#: Where the sources sit inside that tar.
GGML = "ggml"
BLAS = "blas"
#: The flash-attention vector kernels ggml builds by default (K type, V type).
FA_PAIRS = (("q4_0", "q4_0"), ("q8_0", "q8_0"), ("f16", "f16"), ("bf16", "bf16"))
FA_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "bf16", "f16")
#: What ggml's CMake defines for its HIP backend with pyfile's options (no VMM: the module
#: needs nothing but libamdhip64; MMQ for every quantized product: the small BLAS carries
#: only float/half products).
DEFINES = ("GGML_USE_HIP", "GGML_BACKEND_BUILD", "GGML_BACKEND_DL", "GGML_BACKEND_SHARED",
           "GGML_SHARED", "GGML_SCHED_MAX_COPIES=4", "_GNU_SOURCE", "_XOPEN_SOURCE=600",
           "GGML_CUDA_FORCE_MMQ", "GGML_HIP_NO_VMM", "GGML_HIP_GRAPHS", "NDEBUG")


class CompileError(BackendError):
    """The GPU backend could not be compiled here (the message says why and what to do)."""


def find_hipcc(env: Mapping[str, str] = os.environ) -> Optional[str]:
    """``hipcc`` on PATH, in ``$ROCM_PATH/bin``, ``$HIP_PATH/bin`` or ``/opt/rocm/bin``."""
    found = shutil.which("hipcc", path=env.get("PATH", os.defpath))
    if found:
        return found
    for top in (env.get("ROCM_PATH"), env.get("HIP_PATH"), "/opt/rocm"):
        if top and os.access(os.path.join(top, "bin", "hipcc"), os.X_OK):
            return os.path.join(top, "bin", "hipcc")
    return None


def rocm_version(hipcc: str) -> str:
    """The HIP version hipcc compiles for ("6.4.43484"); raises :class:`CompileError`."""
    try:
        r = subprocess.run([hipcc, "--version"], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CompileError(f"{hipcc} --version failed ({e})") from None
    m = re.search(r"HIP version:\s*([0-9][0-9.]*)", r.stdout + r.stderr)
    if r.returncode != 0 or not m:
        raise CompileError(f"{hipcc} --version did not name a HIP version")
    return m.group(1).rstrip(".")


def check_rocm(version: str) -> None:
    if parse(version)[:2] < ROCM_MIN:
        raise CompileError(f"ROCm {version} is older than the {'.'.join(map(str, ROCM_MIN))} "
                           f"ggml's GPU backend needs; install ROCm 6.1 or newer")


def sources(folder: str) -> List[str]:
    """The translation units of the HIP backend in an extracted source folder (relative
    paths), as ggml's CMake chooses them, plus the BLAS."""
    cuda = os.path.join(GGML, "src", "ggml-cuda")
    inst = os.path.join(cuda, "template-instances")
    units = sorted(os.path.join(cuda, n) for n in os.listdir(os.path.join(folder, cuda))
                   if n.endswith(".cu"))
    for n in sorted(os.listdir(os.path.join(folder, inst))):
        if n.startswith(("fattn-tile", "fattn-mma", "mmq", "mmf")) and n.endswith(".cu"):
            units.append(os.path.join(inst, n))
    units += [os.path.join(inst, f"fattn-vec-instance-{k}-{v}.cu") for k, v in FA_PAIRS]
    units.append(os.path.join(BLAS, "hip", "blas-hip.cu"))
    return units


def flags(folder: str, gfx: str) -> List[str]:
    fa = [f"GGML_CUDA_FA_{k.upper()}_{v.upper()}={int((k, v) in FA_PAIRS)}"
          for k in FA_TYPES for v in FA_TYPES]
    quants = ",".join(f"{k}-{v}" for k, v in FA_PAIRS)
    return (["-x", "hip", f"--offload-arch={gfx}", "-O3", "-fPIC", "-std=c++17",
             "-w"]
            + [f"-D{d}" for d in DEFINES + tuple(fa)] + [f'-DGGML_CUDA_FA_QUANTS="{quants}"']
            + ["-I", os.path.join(folder, BLAS, "hip"),
               "-I", os.path.join(folder, GGML, "src"),
               "-I", os.path.join(folder, GGML, "include")])


def unpack(tar: str, dest: str) -> None:
    """The carried sources into ``dest`` (plain files with relative paths only)."""
    import tarfile
    try:
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if not m.isfile() or m.name.startswith("/") or ".." in m.name.split("/"):
                    raise CompileError(f"{tar}: unexpected entry {m.name!r} in the sources")
            kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(dest, **kw)  # type: ignore[arg-type]
    except (OSError, tarfile.TarError) as e:
        raise CompileError(f"cannot unpack the carried sources ({e})") from None


def compile_key(source_key: str, version: str, gfx: str) -> str:
    return hashlib.sha256(f"hip|{source_key}|{version}|{gfx}".encode()).hexdigest()[:24]


Progress = Callable[[int, int], None]


def build(hipcc: str, folder: str, gfx: str, ggml_base: str, out: str, objects: str,
          progress: Optional[Progress] = None, jobs: Optional[int] = None) -> None:
    """Compile every unit into ``objects`` (kept: a unit already there is not compiled
    again) and link ``out``/libggml-hip.so against the engine's ``ggml_base`` library."""
    from concurrent.futures import ThreadPoolExecutor
    units = sources(folder)
    args = flags(folder, gfx)
    os.makedirs(objects, exist_ok=True)
    done = [0]

    def one(unit: str) -> Tuple[str, Optional[str]]:
        obj = os.path.join(objects, unit.replace(os.sep, "_") + ".o")
        if not os.path.exists(obj):
            tmp = obj + ".tmp"
            try:
                r = subprocess.run([hipcc, *args, "-c", os.path.join(folder, unit), "-o", tmp],
                                   capture_output=True, text=True, stdin=subprocess.DEVNULL)
            except OSError as e:
                return obj, f"{unit}: cannot run {hipcc} ({e.strerror or e})"
            if r.returncode != 0:
                return obj, f"{unit}: {_last_error(r.stderr)}"
            os.replace(tmp, obj)
        done[0] += 1
        if progress:
            progress(done[0], len(units))
        return obj, None

    pool = ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1)
    try:
        results = list(pool.map(one, units))
    finally:  # on Ctrl-C, start no more units (the running hipccs got the signal too)
        pool.shutdown(wait=False, cancel_futures=True)
    failed = [why for _, why in results if why]
    if failed:
        raise CompileError(f"hipcc failed on {len(failed)} of {len(units)} files, first: "
                           f"{failed[0]}")
    lib = os.path.join(out, "libggml-hip.so")
    try:
        r = subprocess.run([hipcc, f"--offload-arch={gfx}", "-shared", "-fPIC", "-o", lib,
                            *[o for o, _ in results], ggml_base],  # found loaded by soname
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise CompileError(f"cannot run {hipcc} ({e.strerror or e})") from None
    if r.returncode != 0:
        raise CompileError(f"linking libggml-hip.so failed: {_last_error(r.stderr)}")


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if "error" in ln.lower()]
    return (lines or [ln.strip() for ln in text.splitlines() if ln.strip()] or ["no output"])[0]


class Display:
    """One stderr line for a long compile: rewritten in place on a terminal, else written at
    the start and the end."""

    def __init__(self, what: str) -> None:
        self.what, self.start, self.tty = what, time.monotonic(), sys.stderr.isatty()
        sys.stderr.write(f"pyfile: compiling {what} (first run only; later runs load it at "
                         f"once){'' if self.tty else chr(10)}")
        sys.stderr.flush()

    def update(self, done: int, total: int) -> None:
        if self.tty:
            sys.stderr.write(f"\rpyfile: compiling {self.what}: {done}/{total} files, "
                             f"{time.monotonic() - self.start:.0f} s ")
            sys.stderr.flush()

    def end(self) -> None:
        sys.stderr.write(f"{chr(10) if self.tty else ''}pyfile: compiled {self.what} in "
                         f"{time.monotonic() - self.start:.0f} s\n")
        sys.stderr.flush()


def hip_variant(tar: str, source_key: str, gfx: str, ggml_base: str,
                force: bool = False, env: Mapping[str, str] = os.environ) -> str:
    """The path of a libggml-hip.so for ``gfx`` from the sources in ``tar`` (``source_key``
    names them): from the cache, or compiled now. Raises :class:`CompileError` when there is
    no usable ROCm or the compile fails."""
    from ..container.extract import cached_folder
    from ..container.paths import run_cache
    hipcc = find_hipcc(env)
    if hipcc is None:
        raise CompileError("no hipcc found; install ROCm 6.1 or newer, or set ROCM_PATH")
    version = rocm_version(hipcc)
    check_rocm(version)
    key = compile_key(source_key, version, gfx)
    root = os.path.join(run_cache(), "compiled")
    target = os.path.join(root, key)
    # Named like a work folder of the target: `pyfile cache prune` leaves it alone while a
    # compile holds the target's fill lock, and removes it once its compiler is gone.
    objects = os.path.join(root, f".{key}.objects")
    if force and os.path.isdir(target):
        shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(objects, ignore_errors=True)
    what = f"the ROCm {version} backend for {gfx}"

    def fill(work: str) -> None:
        display = Display(what)
        src = os.path.join(work, "src")  # only while compiling
        unpack(tar, src)
        build(hipcc, src, gfx, ggml_base, work, objects, display.update)
        shutil.rmtree(src)
        display.end()
        shutil.rmtree(objects, ignore_errors=True)

    try:
        folder = cached_folder("compiled", key, fill)
    except (OSError, ArchiveError) as e:  # no writable cache and no temporary space
        raise CompileError(str(e)) from None
    return os.path.join(folder, "libggml-hip.so")


__all__ = ["CompileError", "find_hipcc", "rocm_version", "check_rocm", "sources", "flags",
           "unpack", "build", "hip_variant", "ROCM_MIN", "SOURCES_TAR"]
