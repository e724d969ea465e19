"""Run-time: use the runtime bundle carried in the pyfile, when it fits this interpreter.

The bundle is extracted once into ``<cache>/runtime/<sha256 prefix>/`` (lock, work folder,
rename), then put first on ``sys.path``. A shared lock on ``<folder>.lock`` is held for the
life of the process, so ``pyfile cache prune`` can tell which runtimes are in use.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import zipfile
from typing import Any, Dict, Optional, Tuple

from .archive import Archive
from .errors import EngineError
from .cpu import cache_dir
from .extract import _locked, hold


class SliceFile(io.RawIOBase):
    """A read-only, seekable view of ``size`` bytes at ``offset`` of an open file."""

    def __init__(self, path: str, offset: int, size: int) -> None:
        self.f = open(path, "rb")
        self.offset, self.size, self.pos = offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, min(self.size, base + pos))
        return self.pos

    def readinto(self, b: Any) -> int:
        n = min(len(b), self.size - self.pos)
        if n <= 0:
            return 0
        self.f.seek(self.offset + self.pos)
        data = self.f.read(n)
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)

    def close(self) -> None:
        self.f.close()
        super().close()


def fits(info: Dict[str, Any]) -> Tuple[bool, str]:
    """Whether a bundle built for ``info`` can run here, and if not, why not."""
    here_py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    libc, libc_version = platform.libc_ver()
    checks = [
        (info.get("implementation") == sys.implementation.name,
         f"{info.get('implementation')} (this is {sys.implementation.name})"),
        (info.get("python") == here_py, f"Python {info.get('python')} (this is {here_py})"),
        (info.get("os") == sys.platform, f"{info.get('os')} (this is {sys.platform})"),
        (info.get("machine") == platform.machine(),
         f"{info.get('machine')} (this is {platform.machine()})"),
        (info.get("libc") == (libc or "unknown"), f"{info.get('libc')} (this has "
                                                   f"{libc or 'another C library'})"),
        (_version(libc_version) >= _version(str(info.get("libc_version", "0"))),
         f"glibc {info.get('libc_version')} or newer (this has {libc_version})"),
    ]
    for ok, why in checks:
        if not ok:
            return False, why
    return True, ""


def _version(v: str) -> Tuple[int, ...]:
    try:
        return tuple(int(x) for x in v.split("."))
    except ValueError:
        return (0,)


def activate(arch: Archive) -> Optional[str]:
    """Make the carried runtime importable if one fits; returns its folder (or None).

    A pyfile whose runtimes do not fit falls back on an installed llama-cpp-python; if
    there is none, the error says what is missing.
    """
    runtimes = arch.manifest.get("runtimes") or []
    if not runtimes or os.environ.get("PYFILE_NO_BUNDLED_RUNTIME"):
        return None
    reasons = []
    for rt in runtimes:
        if not isinstance(rt, dict) or rt.get("member") not in arch.members:
            continue
        ok, why = fits(rt)
        if ok:
            folder = _extract(arch, rt)
            sys.path.insert(0, folder)
            # Child processes (backend probes) must import the same runtime.
            old = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = folder + (os.pathsep + old if old else "")
            return folder
        reasons.append(f"{rt.get('tag')}: needs {why}")
    try:
        import llama_cpp  # noqa: F401  an installed engine will do
        return None
    except ImportError:
        pass
    raise EngineError("this pyfile's runtime does not fit this interpreter ("
                      + "; ".join(reasons) + f"): run it with a matching Python "
                      f"(PYFILE_PYTHON=/path/to/python{runtimes[0].get('python', '3')}) or "
                      f"install the engine: {sys.executable} -m pip install "
                      f"llama-cpp-python==0.3.36 fastapi uvicorn")


def _extract(arch: Archive, rt: Dict[str, Any]) -> str:
    entry = arch.manifest_entry(rt["member"]) or {}
    key = (entry.get("sha256") or rt["member"])[:24]
    root = os.path.join(cache_dir(), "runtime")
    target = os.path.join(root, key)
    try:
        os.makedirs(root, exist_ok=True)
        hold(target)
        if not os.path.isdir(target):
            with _locked(os.path.join(root, f".{key}.extract.lock")):
                if not os.path.isdir(target):
                    work = tempfile.mkdtemp(prefix=f".{key}.", dir=root)
                    try:
                        _unpack(arch, rt["member"], work)
                        os.rename(work, target)
                    except BaseException:
                        shutil.rmtree(work, ignore_errors=True)
                        raise
        with contextlib.suppress(OSError):
            os.utime(target)
        return target
    except OSError:
        # No usable cache (read-only, full): a private folder for this run only.
        work = tempfile.mkdtemp(prefix="pyfile-runtime-")
        import atexit
        atexit.register(shutil.rmtree, work, True)
        try:
            _unpack(arch, rt["member"], work)
        except OSError as e:
            raise EngineError(f"cannot unpack the runtime (no writable cache and {e})") from None
        return work


def _unpack(arch: Archive, member: str, dest: str) -> None:
    m = arch.member(member)
    if not m.stored:
        raise EngineError(f"{arch.path}: the runtime member must be stored")
    with SliceFile(arch.path, m.offset, m.size) as raw, \
            zipfile.ZipFile(io.BufferedReader(raw, 1 << 20)) as zf:
        meta = json.loads(zf.read(".pyfile-bundle.json"))
        real = os.path.realpath(dest)
        for info in zf.infolist():
            name = info.filename
            if name == ".pyfile-bundle.json" or name.endswith("/"):
                continue
            path = os.path.realpath(os.path.join(dest, name))
            if not path.startswith(real + os.sep):
                raise EngineError(f"{arch.path}: runtime entry {name!r} escapes its folder")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with zf.open(info) as src, open(path, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            if (info.external_attr >> 16) & 0o111:
                os.chmod(path, 0o755)
        if not meta.get("bytecode"):  # built elsewhere: compile once, here, for this Python
            import compileall
            import py_compile
            compileall.compile_dir(dest, quiet=2, workers=0 if os.cpu_count() else 1,
                                   invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        for rel, target in (meta.get("links") or {}).items():
            link = os.path.realpath(os.path.join(dest, rel))
            if not link.startswith(real + os.sep) or "/" in target or target in ("..", "."):
                raise EngineError(f"{arch.path}: bad runtime link {rel!r}")
            os.symlink(target, link)
