"""Compile the carried sources with a :class:`~.toolchain.Toolchain` for one GPU, once: every
unit in parallel into an objects folder kept beside the target (a compile cut short
resumes), linked against the engine's ``libggml-base``, published into the user cache
under a lock through a work folder renamed into place (concurrent first runs compile once),
with a progress line. Every later run finds the library by its key at once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import Callable, List, Optional, Tuple

from . import sources
from .toolchain import Toolchain, last_error
from ..hardware import GPU
from ...errors import ArchiveError, CompileError

#: The user-cache kind (``<cache>/compiled/<key>/``) that ``pyfile cache`` lists and prunes.
CACHE_KIND = "compiled"

Progress = Callable[[int, int], None]


def build(tc: Toolchain, gpu: GPU, folder: str, ggml_base: str, out: str, objects: str,
          progress: Optional[Progress] = None, jobs: Optional[int] = None) -> str:
    """Compile every unit into ``objects`` (a unit already there is not compiled again) and
    link ``out/<library>``; its path."""
    from concurrent.futures import ThreadPoolExecutor
    units = tc.units(folder)
    os.makedirs(objects, exist_ok=True)
    done = [0]

    def one(unit: str) -> Tuple[str, Optional[str]]:
        obj = os.path.join(objects, unit.replace(os.sep, "_") + ".o")
        if not os.path.exists(obj):
            tmp = obj + ".tmp"
            why = _run(tc.compile_command(folder, gpu, unit, tmp), tc.program)
            if why:
                return obj, f"{unit}: {why}"
            os.replace(tmp, obj)
        done[0] += 1
        if progress:
            progress(done[0], len(units))
        return obj, None

    pool = ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1)
    try:
        results = list(pool.map(one, units))
    finally:  # on Ctrl-C, start no more units (the running compilers got the signal too)
        pool.shutdown(wait=False, cancel_futures=True)
    failed = [why for _, why in results if why]
    if failed:
        raise CompileError(f"{tc.program} failed on {len(failed)} of {len(units)} files, "
                           f"first: {failed[0]}")
    lib = os.path.join(out, tc.library)
    why = _run(tc.link_command(gpu, [o for o, _ in results], ggml_base, lib), tc.program)
    if why:
        raise CompileError(f"linking {tc.library} failed: {why}")
    return lib


def _run(argv: List[str], program: str) -> Optional[str]:
    """None when the command succeeds, else the line that says why it failed."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except OSError as e:
        return f"cannot run {program} ({e.strerror or e})"
    return last_error(r.stderr + r.stdout) if r.returncode != 0 else None


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


def cached(tc: Toolchain, source_key: str, gpu: GPU) -> Optional[str]:
    """The library an earlier run compiled with this compiler for this GPU, or None."""
    from ...container.extract import existing_folder
    folder = existing_folder(CACHE_KIND, tc.key(source_key, gpu))
    lib = os.path.join(folder, tc.library) if folder else None
    return lib if lib and os.path.isfile(lib) else None


def compiled(tc: Toolchain, gpu: GPU, tar: str, source_key: str, ggml_base: str,
             force: bool = False) -> str:
    """The library for ``gpu`` from the sources in ``tar`` (``source_key`` names them): from
    the cache, or compiled now (``force``: compiled again)."""
    from ...container.extract import cached_folder
    from ...container.paths import run_cache
    root, key = os.path.join(run_cache(), CACHE_KIND), tc.key(source_key, gpu)
    target = os.path.join(root, key)
    # Named like a work folder of the target: `pyfile cache prune` leaves it alone while a
    # compile holds the target's fill lock, and removes it once its compiler is gone.
    objects = os.path.join(root, f".{key}.objects")
    if force and os.path.isdir(target):
        shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(objects, ignore_errors=True)
    what = f"{tc.what} for {gpu.arch}"

    def fill(work: str) -> None:
        display = Display(what)
        src = os.path.join(work, "src")  # only while compiling
        sources.unpack(tar, src)
        build(tc, gpu, src, ggml_base, work, objects, display.update)
        shutil.rmtree(src)
        display.end()
        shutil.rmtree(objects, ignore_errors=True)

    try:
        folder = cached_folder(CACHE_KIND, key, fill)
    except (OSError, ArchiveError) as e:  # no writable cache and no temporary space
        raise CompileError(str(e)) from None
    return os.path.join(folder, tc.library)
