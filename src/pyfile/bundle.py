"""Build-time: the runtime that travels inside every pyfile, assembled from wheels.

A *runtime bundle* is one zip member of the pyfile (``.pyfile/runtime.zip``) holding, for
each supported CPython, a ready-to-use ``site`` folder: the engine (one build for every
Python, see :mod:`pyfile.engines`), numpy, jinja2, diskcache and the server stack. Files
are stored by content (``o/<sha256>``: deflated, or an xz stream for big libraries), so what the versions share - the engine,
the pure-Python packages, numpy's OpenBLAS when two versions use the same numpy - is stored
once. An index (``.pyfile-runtime.json``) maps each target's paths to contents; the target
extracts only its own files, once, into its cache (see ``pyfile.runtime.container.bundle``).

Bundles are cached by their inputs, so repeated builds cost a copy, not a recompression.
Bytecode is not shipped (it is specific to each CPython): the target compiles the bundle
once when it unpacks it.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

from . import buildcache, engines, wheels
from .runtime.container import versions
from .runtime.container import atomic
from .runtime.container.bundle import BUNDLE_FORMAT, INDEX_NAME, OBJECT_PREFIX, XZ_SUFFIX, target_key
from .runtime.errors import InputError

MEMBER_NAME = ".pyfile/runtime.zip"
#: Pillow's parts an image input never reaches (fonts, colour management, AVIF, Tk,
#: morphology) and the libraries only they load: 9 of its 17 MB per CPython. What stays
#: decodes the formats runtime/server/images.py allows (PNG, JPEG, WebP, GIF, BMP; the GIF
#: plugin imports ImageMath, so _imagingmath stays).
PILLOW_UNUSED = (r"^PIL/_(avif|imagingcms|imagingft|imagingtk|imagingmorph)\.|"
                 r"^pillow\.libs/lib(avif|lcms2|freetype|harfbuzz|brotli[a-z]*|png16)-")
#: Files of a wheel that a runtime never needs.
SKIP = re.compile(r"(__pycache__/|\.pyc$|\.pyi$|/py\.typed$|^numpy/.*/tests/|^numpy/tests/|"
                  r"^numpy/f2py/|^numpy/_core/include/|^numpy/_pyinstaller/|"
                  r"\.dist-info/(?!METADATA$|entry_points\.txt$)|" + PILLOW_UNUSED + ")")
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
#: Objects this big (shared libraries, mostly) travel as xz streams: a third smaller than
#: deflate (56 instead of 84 MB for the six-Python runtime), unpacked once per machine.
XZ_MIN = 256 << 10
XZ_PRESET = 6


@dataclass
class Target:
    """One CPython's view of the bundle."""

    python: str
    libc_version: str
    files: Dict[str, str] = field(default_factory=dict)  # path -> sha256 of its content
    links: Dict[str, str] = field(default_factory=dict)  # path -> file name in its folder
    machine: str = "x86_64"

    @property
    def tag(self) -> str:
        return f"cpython-{self.python.replace('.', '')}-linux-{self.machine}-glibc"

    @property
    def index_key(self) -> str:
        """This target's name in the bundle's index ("3.13"; "3.13-aarch64" off x86-64)."""
        return self.python if self.machine == "x86_64" else f"{self.python}-{self.machine}"

    def record(self) -> Dict[str, object]:
        """What the manifest says about this target (enough to pick it without unzipping)."""
        return {"tag": self.tag, "implementation": "cpython", "python": self.python,
                "os": "linux", "machine": self.machine, "libc": "glibc",
                "libc_version": self.libc_version, "member": MEMBER_NAME,
                "index": self.index_key, "key": target_key(self.files, self.links)}


@dataclass
class Bundle:
    path: str  # the bundle zip on disk (in the build cache)
    targets: List[Target]
    sizes: Dict[str, int] = field(default_factory=dict)  # where the compressed bytes go
    engine: str = ""  # the llama-cpp-python version inside
    member: str = MEMBER_NAME
    sha256: str = ""  # of the bundle zip, computed once when it was written


def _glibc_of(wheel: str) -> Tuple[int, int]:
    """The oldest glibc a manylinux wheel loads on (its least demanding tag)."""
    plat = wheels.wheel_tags(wheel)[2]
    needs = []
    for tag in plat.split("."):
        if tag.startswith("manylinux2014_"):
            needs.append((2, 17))
        m = re.match(r"manylinux_(\d+)_(\d+)_", tag)
        if m:
            needs.append((int(m.group(1)), int(m.group(2))))
    return min(needs) if needs else (2, 17)


def _wheel_files(wheel: str) -> Dict[str, bytes]:
    out: Dict[str, bytes] = {}
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            rel = info.filename
            m = re.match(r"[^/]+\.data/(purelib|platlib)/(.*)", rel)
            if m:
                rel = m.group(2)
            elif ".data/" in rel.split("/")[0] + "/" or info.is_dir():
                continue
            if SKIP.search(rel) or ".." in rel.split("/") or rel.startswith("/"):
                continue
            out[rel] = zf.read(info)
    return out


def _group(package: str) -> str:
    """Which line of the size report a path counts under."""
    top = package.split("/", 1)[0]
    if top.startswith(("llama_cpp", "bin")):
        return "engine"
    if top.startswith("numpy"):
        return "numpy"
    if top.startswith("pydantic_core"):
        return "pydantic-core"
    return "other"


def assemble(engine: Union[engines.Engine, Dict[str, engines.Engine]], pythons: List[str],
             wheel_dir: Optional[str] = None) -> Bundle:
    """The bundle for each CPython in ``pythons`` on each machine: ``engine`` is the x86-64
    engine, or a dict machine -> engine (cached by its inputs)."""
    by_machine = engine if isinstance(engine, dict) else {"x86_64": engine}
    machines = sorted(by_machine, key=lambda m: (m != "x86_64", m))
    folders = {(py, m): wheels.fetch(py, wheel_dir, m) for m in machines for py in pythons}
    h = hashlib.sha256(f"{BUNDLE_FORMAT}|{SKIP.pattern}".encode())
    for m in machines:  # (an x86-64-only bundle keeps the key it had before aarch64)
        eng = by_machine[m]
        h.update(b"" if m == "x86_64" else f"machine:{m}".encode())
        if eng.identity:
            h.update(f"engine:{eng.identity}".encode())
        else:
            for rel in sorted(eng.files):
                h.update(rel.encode() + b"\0" + hashlib.sha256(eng.files[rel]).digest())
        for py in pythons:
            names = sorted(n for n in os.listdir(folders[py, m]) if n.endswith(".whl"))
            h.update(f"{py}:{','.join(names)}".encode())
    cache = buildcache.folder("bundles")
    path = os.path.join(cache, f"runtime-{h.hexdigest()[:24]}.zip")
    index_path = path[:-4] + ".json"
    hit = _load_index(index_path) if os.path.isfile(path) else None
    if hit is not None:
        return Bundle(path, hit[0], hit[1], by_machine[machines[0]].version, sha256=hit[2])

    objects: Dict[str, bytes] = {}
    groups: Dict[str, str] = {}
    targets: List[Target] = []
    for m, py in ((m, py) for m in machines for py in pythons):
        eng = by_machine[m]
        files = dict(eng.load().files)
        floor = versions.parse(engines.glibc_floor(eng))
        for wheel in sorted(os.listdir(folders[py, m])):
            if not wheel.endswith(".whl"):
                continue
            full = os.path.join(folders[py, m], wheel)
            floor = max(floor, _glibc_of(full))
            files.update(_wheel_files(full))
        target = Target(py, ".".join(map(str, floor)), machine=m)
        first_in_dir: Dict[Tuple[str, str], str] = {}
        for rel in sorted(files):
            data = files[rel]
            sha = hashlib.sha256(data).hexdigest()
            folder, base = os.path.split(rel)
            if ".so" in base:  # copies of one library (libggml.so, libggml.so.0) -> links:
                first = first_in_dir.get((folder, sha))  # loading both would give ggml twice
                if first is not None:
                    target.links[rel] = first
                    continue
                first_in_dir[(folder, sha)] = base
            target.files[rel] = sha
            objects.setdefault(sha, data)
            group = _group(rel)  # per machine where machines differ; shared files alone
            groups.setdefault(sha, group if len(machines) == 1 or group == "other"
                              else f"{group} ({m})")
        targets.append(target)
    sizes = _write(path, objects, groups, targets)
    digest = _file_sha256(path)
    _save_index(index_path, targets, sizes, digest)
    return Bundle(path, targets, sizes, by_machine[machines[0]].version, sha256=digest)


def _load_index(index_path: str) -> Optional[Tuple[List[Target], Dict[str, int], str]]:
    """A cached bundle's (targets, sizes, sha256), or None when there is none or it cannot be
    read (damaged, or written by another version of pyfile): the bundle is assembled again."""
    try:
        with open(index_path, encoding="utf-8") as f:
            meta = json.load(f)
        return ([Target(**t) for t in meta["targets"]], dict(meta["sizes"]),
                str(meta["sha256"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _save_index(index_path: str, targets: List[Target], sizes: Dict[str, int],
                digest: str) -> None:
    """The cached bundle's description, written atomically under a name of its own (two
    builds at once may write the same bundle)."""
    atomic.write_bytes(index_path, json.dumps({"targets": [t.__dict__ for t in targets],
                                               "sizes": sizes, "sha256": digest}).encode())


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _xz(items: List[Tuple[str, bytes]]) -> Dict[str, bytes]:
    """xz streams of the big objects, in parallel (lzma releases the GIL), cached by content
    in the build cache so that bundles for other Python sets reuse them."""
    def one(item: Tuple[str, bytes]) -> Tuple[str, bytes]:
        sha, data = item
        return sha, buildcache.remembered(f"{sha}.xz",
                                          lambda: lzma.compress(data, preset=XZ_PRESET))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return dict(pool.map(one, items))


def _write(path: str, objects: Dict[str, bytes], groups: Dict[str, str],
           targets: List[Target]) -> Dict[str, int]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    big = sorted(sha for sha, data in objects.items() if len(data) >= XZ_MIN)
    packed = _xz([(sha, objects[sha]) for sha in big])
    sizes: Dict[str, int] = {}
    with atomic.replacing(path) as out:
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            for sha in sorted(objects):
                if sha in packed:  # an xz stream, stored as it is
                    zi = zipfile.ZipInfo(OBJECT_PREFIX + sha + XZ_SUFFIX, date_time=ZIP_DATE)
                    zi.compress_type = zipfile.ZIP_STORED
                    zf.writestr(zi, packed[sha])
                else:
                    zi = zipfile.ZipInfo(OBJECT_PREFIX + sha, date_time=ZIP_DATE)
                    zi.compress_type = zipfile.ZIP_DEFLATED
                    zf.writestr(zi, objects[sha], compresslevel=6)
                group = groups[sha]
                sizes[group] = sizes.get(group, 0) + zf.getinfo(zi.filename).compress_size
            index = {"format": BUNDLE_FORMAT, "xz": big,
                     "targets": {t.index_key: {"files": t.files, "links": t.links}
                                 for t in targets}}
            zi = zipfile.ZipInfo(INDEX_NAME, date_time=ZIP_DATE)
            zf.writestr(zi, json.dumps(index, sort_keys=True), compress_type=zipfile.ZIP_DEFLATED)
    return sizes


def check_targets(bundle: Bundle) -> None:
    """Refuse a bundle that cannot keep the glibc promise (a wheel too new)."""
    for t in bundle.targets:
        v = versions.parse(t.libc_version)
        if v > engines.PROMISED_GLIBC:
            raise InputError(f"the runtime for CPython {t.python} needs glibc {t.libc_version}, "
                             f"newer than the promised "
                             f"{'.'.join(map(str, engines.PROMISED_GLIBC))}")


__all__ = ["Bundle", "Target", "assemble", "check_targets", "MEMBER_NAME"]
