"""Build-time: pack the run-time dependencies into one zip member of the pyfile.

A *runtime bundle* is a zip (deflated entries) holding a ready-to-use ``site`` folder:
llama-cpp-python with its native libraries and CPU variants, numpy, jinja2, markupsafe,
diskcache, typing-extensions and the server stack (FastAPI, uvicorn and what they need).
It is stored as a single member (``.pyfile/runtime/<tag>.zip``) so the pyfile's own central
directory stays small and every start stays fast; the target extracts it once into its
cache. Bundles are built from the build machine's environment (the default) or from a
folder of wheels (``--runtime``, for other Python versions or platforms), and cached by
content so repeated builds cost a copy, not a recompression.
"""

from __future__ import annotations

import hashlib

import json
import os
import platform
import re
import sys

import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from typing import Dict, Iterable, List, Tuple

from .runtime.errors import InputError, UsageError

#: What a pyfile needs at run time (the closure of their requirements is added).
ROOTS = ["llama-cpp-python", "numpy", "jinja2", "diskcache", "typing-extensions",
         "fastapi", "uvicorn"]
#: Files of an installed distribution that a runtime never needs.
SKIP = re.compile(r"(__pycache__/|\.pyc$|^include/|^lib/|^\.\./|^numpy/.*/tests/|"
                  r"/RECORD$|/INSTALLER$|/REQUESTED$|/direct_url\.json$|^bin/(?!libggml))")
BUNDLE_FORMAT = 2


@dataclass
class Bundle:
    tag: str
    path: str  # the bundle zip on disk (in the build cache)
    info: Dict[str, object]


def build_cache() -> str:
    base = os.environ.get("PYFILE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "pyfile")
    return os.path.join(base, "bundles")


def _libc() -> Tuple[str, str]:
    name, version = platform.libc_ver()
    return (name or "unknown"), (version or "0")


def host_tag() -> Dict[str, object]:
    impl = sys.implementation.name
    libc, libc_version = _libc()
    return {"implementation": impl, "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
            "abi": sys.implementation.cache_tag, "os": sys.platform,
            "machine": platform.machine(), "libc": libc, "libc_version": libc_version}


def tag_of(info: Dict[str, object]) -> str:
    return f"{info['abi']}-{info['os']}-{info['machine']}-{info['libc']}"


def _name(req: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", req, 1)[0].strip().lower().replace("_", "-")


def _wanted(req: str) -> bool:
    if ";" not in req:
        return True
    marker = req.split(";", 1)[1]
    if "extra" in marker:
        return False
    try:
        from packaging.markers import Marker
        return Marker(marker).evaluate()
    except Exception:
        return True


def closure(roots: Iterable[str]) -> List[metadata.Distribution]:
    """Installed distributions for ``roots`` and everything they require."""
    seen: Dict[str, metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        name = _name(todo.pop())
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if name in (_name(r) for r in ROOTS):
                raise InputError(f"cannot bundle the runtime: {name} is not installed in "
                                 f"{sys.prefix} (install it, or build with --slim)") from None
            continue
        seen[name] = dist
        todo += [r for r in (dist.requires or []) if _wanted(r)]
    return [seen[k] for k in sorted(seen)]


def _installed_files() -> List[Tuple[str, str]]:
    """(path inside the bundle, file on disk) for the installed closure."""
    out: Dict[str, str] = {}
    for dist in closure(ROOTS):
        for f in dist.files or []:
            rel = str(f).replace(os.sep, "/")
            if SKIP.search(rel):
                continue
            full = str(dist.locate_file(f))
            if os.path.isfile(full):
                out[rel] = full
    if not any(r.startswith("llama_cpp/lib/") for r in out):
        raise InputError("cannot bundle the runtime: llama_cpp has no native libraries here")
    return sorted(out.items())


def _wheel_files(folder: str, scratch: str) -> Tuple[List[Tuple[str, str]], Dict[str, object]]:
    """Unpack every wheel in ``folder`` and describe the target from their tags."""
    wheels = sorted(f for f in os.listdir(folder) if f.endswith(".whl"))
    if not wheels:
        raise InputError(f"--runtime {folder}: no .whl files there")
    names = {_name(w.split("-")[0]) for w in wheels}
    missing = [r for r in ("llama-cpp-python", "numpy") if r not in names]
    if missing:
        raise InputError(f"--runtime {folder}: no wheel for {', '.join(missing)}")
    info: Dict[str, object] = {"implementation": "cpython", "os": "linux"}
    files: List[Tuple[str, str]] = []
    for w in wheels:
        parts = w[:-4].split("-")
        abi, plat = parts[-2], parts[-1]
        if abi.startswith("cp3") and abi[2:].rstrip("dmu").isdigit():
            info["abi"] = f"cpython-{abi[2:].rstrip('dmu')}"
            info["python"] = f"3.{abi[3:].rstrip('dmu')}"
        if plat != "any":
            needs = []  # a wheel with several tags runs where its least demanding one does
            for tag in plat.split("."):
                m = re.match(r"(many|musl)linux_(\d+)_(\d+)_(\w+)$", tag)
                if tag.startswith("manylinux2014_"):
                    m = re.match(r"(many)linux(2014)()_(\w+)$", tag)
                    needs.append((2, 17))
                elif m:
                    needs.append((int(m.group(2)), int(m.group(3))))
                if m:
                    info["libc"] = "glibc" if m.group(1) == "many" else "musl"
                    info["machine"] = m.group(4)
                elif tag.startswith("linux_"):
                    info.setdefault("machine", tag.split("_", 1)[1])
            if needs:
                need = min(needs)
                have = tuple(int(x) for x in str(info.get("libc_version", "0.0")).split("."))
                if need > have:  # the strictest wheel decides
                    info["libc_version"] = f"{need[0]}.{need[1]}"
        dest = os.path.join(scratch, w)
        with zipfile.ZipFile(os.path.join(folder, w)) as zf:
            for item in zf.infolist():
                rel = item.filename
                data_dir = re.match(r"[^/]+\.data/(purelib|platlib|data)/(.*)", rel)
                if data_dir:
                    rel = data_dir.group(2)
                if (item.is_dir() or SKIP.search(rel) or ".." in rel.split("/")
                        or ".data/" in rel):
                    continue
                target = os.path.join(dest, rel)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with zf.open(item) as src, open(target, "wb") as out:
                    out.write(src.read())
                files.append((rel, target))
    if "abi" not in info:
        raise InputError(f"--runtime {folder}: no CPython-specific wheel (numpy) says which "
                         f"Python it is for")
    info.setdefault("machine", "x86_64")
    info.setdefault("libc", "glibc")
    info.setdefault("libc_version", "2.17")
    return sorted(dict(files).items()), info


def _pyc(full: str, rel: str) -> bytes:
    """Bytecode for ``full`` that never goes stale (unchecked hash), named as ``rel``."""
    import py_compile
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "x.pyc")
        py_compile.compile(full, cfile=out, dfile=rel, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        with open(out, "rb") as f:
            return f.read()


def _write_bundle(files: List[Tuple[str, str]], info: Dict[str, object], dest: str) -> None:
    """Zip the files; identical copies of a shared library become symlinks (links.json).

    When the bundle is for this very interpreter, bytecode is compiled now and shipped, so
    the target never compiles (or needs to write) anything at start-up.
    """
    by_hash: Dict[str, str] = {}
    links: Dict[str, str] = {}
    compiled = info.get("abi") == sys.implementation.cache_tag
    tag = sys.implementation.cache_tag
    tmp = dest + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for rel, full in files:
            with open(full, "rb") as f:
                data = f.read()
            if compiled and rel.endswith(".py"):
                try:
                    pyc = _pyc(full, rel)
                except Exception:
                    pyc = b""  # a file that does not compile here is imported from source
                if pyc:
                    folder, base = os.path.split(rel)
                    name = f"{folder + '/' if folder else ''}__pycache__/{base[:-3]}.{tag}.pyc"
                    zi = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                    zi.compress_type = zipfile.ZIP_DEFLATED
                    zf.writestr(zi, pyc, compresslevel=6)
            if ".so" in rel:
                digest = hashlib.sha256(data).hexdigest()
                first = by_hash.get(digest)
                if first is not None and os.path.dirname(first) == os.path.dirname(rel):
                    links[rel] = os.path.basename(first)
                    continue
                by_hash[digest] = rel
            zi = zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0))
            zi.external_attr = (0o100755 if ".so" in rel else 0o100644) << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data, compresslevel=6)
        meta = dict(info, format=BUNDLE_FORMAT, links=links, bytecode=compiled)
        zi = zipfile.ZipInfo(".pyfile-bundle.json", date_time=(1980, 1, 1, 0, 0, 0))
        zf.writestr(zi, json.dumps(meta, sort_keys=True, indent=1))
    os.replace(tmp, dest)


def _key(files: List[Tuple[str, str]], info: Dict[str, object]) -> str:
    h = hashlib.sha256(json.dumps(dict(info, format=BUNDLE_FORMAT), sort_keys=True).encode())
    for rel, full in files:
        st = os.stat(full)
        h.update(f"{rel}\0{st.st_size}\0{int(st.st_mtime)}\0".encode())
    return h.hexdigest()[:24]


def host_bundle() -> Bundle:
    """The runtime of this interpreter's environment (cached)."""
    files = _installed_files()
    info = host_tag()
    return _cached(files, info)


def wheels_bundle(folder: str) -> Bundle:
    if not os.path.isdir(folder):
        raise UsageError(f"--runtime {folder}: not a folder of wheels")
    with tempfile.TemporaryDirectory() as scratch:
        files, info = _wheel_files(folder, scratch)
        return _cached(files, info)


def _cached(files: List[Tuple[str, str]], info: Dict[str, object]) -> Bundle:
    cache = build_cache()
    key = _key(files, info)
    path = os.path.join(cache, f"{tag_of(info)}-{key}.zip")
    if not os.path.isfile(path):
        try:
            os.makedirs(cache, exist_ok=True)
            _write_bundle(files, info, path)
        except OSError:  # no writable cache: build it in a temp file for this build
            fd, path = tempfile.mkstemp(suffix=".zip")
            os.close(fd)
            _write_bundle(files, info, path)
    return Bundle(tag_of(info), path, dict(info))


__all__ = ["Bundle", "host_bundle", "wheels_bundle", "host_tag", "tag_of", "closure"]
