"""Run-time: use the runtime carried in the pyfile, for whichever CPython runs it.

The runtime member (built by ``pyfile.bundle``) holds a site folder per supported CPython,
its files stored once by content. The manifest lists the targets with a key per target, so
a warm start only checks that ``<cache>/runtime/<key>/`` exists: the member itself is opened
only the first time, to unpack this interpreter's files and compile their bytecode. A
shared lock on ``<folder>.lock`` is held for the life of the process, so ``pyfile cache
prune`` can tell which runtimes are in use.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

from .archive import Archive
from ..backend.engine import ENGINE_REQUIREMENT
from ..errors import EngineError
from .versions import parse_or
from .extract import cached_folder

BUNDLE_FORMAT = 3
INDEX_NAME = ".pyfile-runtime.json"
OBJECT_PREFIX = "o/"
XZ_SUFFIX = ".xz"  # a member holding an xz stream (stored), listed in the index's "xz"
MAX_INDEX_BYTES = 16 << 20
#: A carried interpreter (a tar.gz the stub unpacks and runs, see launcher/stub.sh): the
#: manifest's kind for it and its member name.
INTERPRETER_KIND = "interpreter"
INTERPRETER_MEMBER = ".pyfile/python/cpython-{machine}.tar.gz"
#: The part of the carried interpreters that every machine shares (the standard library).
STDLIB_MEMBER = ".pyfile/python/stdlib.tar.gz"
#: Set when a run re-executes the file through its carried interpreter (never twice).
REEXEC_ENV = "PYFILE_REEXEC_FROM"


def target_key(files: Dict[str, str], links: Dict[str, str]) -> str:
    """The cache folder name of one target: a digest of its paths and their contents."""
    import hashlib
    h = hashlib.sha256(f"{BUNDLE_FORMAT}".encode())
    for rel in sorted(files):
        h.update(f"{rel}\0{files[rel]}\0".encode())
    for rel in sorted(links):
        h.update(f"{rel}\0->{links[rel]}\0".encode())
    return h.hexdigest()[:24]


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
    """Whether a runtime built for ``info`` can run here, and if not, why not."""
    here_py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    libc, libc_version = _libc()
    checks = [
        (info.get("implementation") == sys.implementation.name,
         f"{info.get('implementation')} (this is {sys.implementation.name})"),
        (info.get("python") == here_py, f"Python {info.get('python')} (this is {here_py})"),
        (info.get("os") == sys.platform, f"{info.get('os')} (this is {sys.platform})"),
        (info.get("machine") == os.uname().machine,
         f"{info.get('machine')} (this is {os.uname().machine})"),
        (info.get("libc") == (libc or "unknown"), f"{info.get('libc')} (this has "
                                                   f"{libc or 'another C library'})"),
        (parse_or(libc_version) >= parse_or(info.get("libc_version", "0")),
         f"glibc {info.get('libc_version')} or newer (this has {libc_version})"),
    ]
    for ok, why in checks:
        if not ok:
            return False, why
    return True, ""


def _libc() -> Tuple[str, str]:
    """("glibc", "2.36") from the C library itself (platform.libc_ver() reads the whole
    interpreter binary to guess it: milliseconds on every start)."""
    try:
        name, _, version = os.confstr("CS_GNU_LIBC_VERSION").partition(" ")
        if name == "glibc" and version:
            return name, version
    except (AttributeError, ValueError, OSError):
        pass
    import platform
    return platform.libc_ver()


def _pythons(runtimes: List[Dict[str, Any]]) -> str:
    versions = sorted({str(r.get("python")) for r in runtimes}, key=parse_or)
    return ", ".join(versions)


def activate(arch: Archive) -> Optional[str]:
    """Make the carried runtime importable if one fits; returns its folder (or None).

    A pyfile whose runtimes do not fit falls back on an installed llama-cpp-python; if
    there is none, the one-line error names the Pythons that would work.
    """
    runtimes = [r for r in arch.manifest.runtimes if r.get("member") in arch.members]
    if not runtimes or os.environ.get("PYFILE_NO_BUNDLED_RUNTIME"):
        return None
    reasons = []
    for rt in runtimes:
        ok, why = fits(rt)
        if ok:
            folder = _extract(arch, rt)
            sys.path.insert(0, folder)
            # Child processes (backend probes) must import the same runtime.
            old = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = folder + (os.pathsep + old if old else "")
            return folder
        reasons.append(why)
    try:
        import llama_cpp  # noqa: F401  an installed engine will do
        return None
    except ImportError:
        pass
    _run_carried(arch)  # python3 model.pyfile with another Python: hand over to the file's
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if all(r.startswith("Python ") for r in reasons):
        raise EngineError(f"this pyfile runs on CPython {_pythons(runtimes)}, and this is "
                          f"{sys.implementation.name} {here} ({sys.executable}): run it with "
                          f"one of those (PYFILE_PYTHON=/path/to/python3.X ./{os.path.basename(arch.path)})")
    other = next(r for r in reasons if not r.startswith("Python "))
    raise EngineError(f"this pyfile's runtime does not fit this machine (it needs {other}): "
                      f"install the engine instead: {sys.executable} -m pip install "
                      f"{ENGINE_REQUIREMENT} fastapi uvicorn")


def _run_carried(arch: Archive) -> None:
    """Run the file again through the interpreter it carries for this machine (its stub
    unpacks and starts it), if it carries one and this is not already that run."""
    member = INTERPRETER_MEMBER.format(machine=os.uname().machine)
    if (os.environ.get(REEXEC_ENV) or member not in arch.manifest.names(INTERPRETER_KIND)
            or not os.path.exists("/bin/sh")):
        return
    env = dict(os.environ)
    env[REEXEC_ENV] = sys.executable
    env.pop("PYFILE_PYTHON", None)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve("/bin/sh", ["/bin/sh", arch.path, *sys.argv[1:]], env)
    except OSError:
        pass


def _extract(arch: Archive, rt: Dict[str, Any]) -> str:
    key = str(rt.get("key") or "")
    if len(key) < 16 or not all(c in "0123456789abcdef" for c in key):
        raise EngineError(f"{arch.path}: damaged manifest: bad runtime key {key!r}")
    return cached_folder("runtime", key, lambda work: _unpack(arch, rt, work))


def _unpack(arch: Archive, rt: Dict[str, Any], dest: str) -> None:
    """Write this interpreter's files of the runtime member into ``dest`` and compile them."""
    import hashlib
    import json
    import zipfile
    m = arch.member(rt["member"])
    if not m.stored:
        raise EngineError(f"{arch.path}: the runtime member must be stored")
    real = os.path.realpath(dest)

    def inside(rel: str) -> str:
        path = os.path.realpath(os.path.join(dest, rel))
        if not path.startswith(real + os.sep):
            raise EngineError(f"{arch.path}: runtime entry {rel!r} escapes its folder")
        return path

    with SliceFile(arch.path, m.offset, m.size) as raw, \
            zipfile.ZipFile(io.BufferedReader(raw, 1 << 20)) as zf:
        try:
            info = zf.getinfo(INDEX_NAME)
            if info.file_size > MAX_INDEX_BYTES:
                raise ValueError("index too large")
            index = json.loads(zf.read(INDEX_NAME))
            mine = index["targets"][rt.get("index") or rt["python"]]
            files, links = dict(mine["files"]), dict(mine.get("links") or {})
            packed = set(index.get("xz") or [])
        except (KeyError, ValueError, TypeError, zipfile.BadZipFile) as e:
            raise EngineError(f"{arch.path}: damaged runtime index ({e})") from None
        if target_key(files, links) != rt["key"]:
            raise EngineError(f"{arch.path}: the runtime index does not match the manifest")
        made = set()
        for rel in sorted(files):
            path = inside(rel)
            parent = os.path.dirname(path)
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                made.add(parent)
            sha = hashlib.sha256()
            xz = files[rel] in packed
            try:
                with zf.open(OBJECT_PREFIX + files[rel] + (XZ_SUFFIX if xz else "")) as src, \
                        open(path, "wb") as out:
                    unxz = _unxz() if xz else None
                    while True:
                        chunk = src.read(1 << 20)
                        if not chunk:
                            break
                        if unxz is not None:
                            chunk = unxz.decompress(chunk)
                        sha.update(chunk)
                        out.write(chunk)
            except KeyError:
                raise EngineError(f"{arch.path}: runtime file {rel!r} is missing") from None
            except (OSError, EOFError) as e:
                if not xz or isinstance(e, FileNotFoundError):
                    raise
                raise EngineError(f"{arch.path}: runtime file {rel!r} is damaged ({e})") from None
            if sha.hexdigest() != files[rel]:
                raise EngineError(f"{arch.path}: runtime file {rel!r} is damaged")
            if ".so" in rel:
                os.chmod(path, 0o755)
        for rel, target in links.items():
            if "/" in target or target in ("..", ".", ""):
                raise EngineError(f"{arch.path}: bad runtime link {rel!r}")
            os.symlink(target, inside(rel))
    _compile(dest)


def _unxz() -> Any:
    try:
        import lzma
    except ImportError:
        raise EngineError(f"this Python ({sys.executable}) was built without the lzma module, "
                          f"which unpacking the runtime needs: run the file with another "
                          f"Python (PYFILE_PYTHON=...)") from None
    return lzma.LZMADecompressor()


def _compile(folder: str) -> None:
    """Bytecode for this interpreter, once (unchecked hashes: never stale, never rewritten)."""
    import compileall
    import py_compile
    mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
    try:  # all cores; a worker pool needs working semaphores (/dev/shm), which a bare
        compileall.compile_dir(folder, quiet=2, workers=0, invalidation_mode=mode)
    except (OSError, ImportError, NotImplementedError):  # chroot or container may lack
        compileall.compile_dir(folder, quiet=2, workers=1, invalidation_mode=mode)


__all__ = ["activate", "fits", "target_key", "SliceFile", "BUNDLE_FORMAT", "INDEX_NAME",
           "OBJECT_PREFIX"]
