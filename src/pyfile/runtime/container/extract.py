"""A content-addressed cache for native files carried inside a pyfile (never the weights).

Shared libraries cannot be loaded from inside a zip, so each set of them is extracted once
to ``<cache>/<sha256 prefix>/``: into a sibling work folder under a lock, then renamed into
place, so concurrent first runs never see a half-written folder. When the cache is not
writable, a private temporary folder is used for this run instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import zlib
from typing import Any, Callable, List, Optional, Tuple

from . import atomic
from .archive import Archive
from .paths import run_cache
from ..errors import ArchiveError

CHUNK = 1 << 20
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


_held: List[Any] = []  # lock files kept open while this process runs


def hold(target: str) -> None:
    """A shared lock on ``<target>.lock`` for this process's life: 'in use' for prune."""
    import fcntl
    f = open(target + ".lock", "a+")
    fcntl.flock(f, fcntl.LOCK_SH)
    _held.append(f)


def _write_member(arch: Archive, name: str, dest: str) -> None:
    m = arch.member(name)
    entry = arch.manifest_entry(name) or {}
    sha = hashlib.sha256()
    with open(dest, "wb") as out:
        arch.fp.seek(m.offset)
        if m.stored:
            left = m.size
            while left:
                chunk = arch.fp.read(min(CHUNK, left))
                if not chunk:
                    raise ArchiveError(f"{arch.path}: truncated member {name!r}")
                sha.update(chunk)
                out.write(chunk)
                left -= len(chunk)
        else:
            d = zlib.decompressobj(-15)
            left = m.compressed_size
            written = 0
            while left:
                raw = arch.fp.read(min(CHUNK, left))
                if not raw:
                    raise ArchiveError(f"{arch.path}: truncated member {name!r}")
                left -= len(raw)
                data = d.decompress(raw, m.size - written + 1)
                written += len(data)
                if written > m.size:
                    raise ArchiveError(f"{arch.path}: member {name!r} inflates past its size")
                sha.update(data)
                out.write(data)
    if sha.hexdigest() != entry.get("sha256"):
        raise ArchiveError(f"{arch.path}: member {name!r} is damaged (SHA-256 mismatch)")


def cached_folder(kind: str, key: str, fill: Callable[[str], None]) -> str:
    """``<cache>/<kind>/<key>``, filled once by ``fill(work_folder)`` under a lock.

    The work folder is a sibling of the target, flushed and renamed into place (see
    :mod:`.atomic`), so a reader never sees a half-filled folder, not even after a power
    cut, and the loser of a race finds the winner's. A shared lock on
    ``<target>.lock`` is held for this process's life ("in use" for ``pyfile cache
    prune``). With no usable cache (read-only, full), a private temporary folder is filled
    for this run only and removed at exit.
    """
    root = os.path.join(run_cache(), kind)
    target = os.path.join(root, key)
    try:
        os.makedirs(root, exist_ok=True)
        hold(target)
        if os.path.isdir(target):
            _touch(target)
            return target
        with atomic.locked(atomic.fill_lock(target)):  # prune takes it to remove work folders
            if os.path.isdir(target):
                return target
            with atomic.publishing(target) as work:
                fill(work)
        return target
    except OSError:
        work = tempfile.mkdtemp(prefix=f"pyfile-{kind}-")
        import atexit
        atexit.register(shutil.rmtree, work, True)
        try:
            fill(work)
        except OSError as e:
            raise ArchiveError(f"cannot unpack into the cache or a temporary folder "
                               f"({e.strerror or e})") from None
        return work


def existing_folder(kind: str, key: str) -> Optional[str]:
    """``<cache>/<kind>/<key>`` when an earlier run filled it, held and touched as
    :func:`cached_folder` does ("in use" for ``pyfile cache prune``); None otherwise. It
    never fills one."""
    target = os.path.join(run_cache(), kind, key)
    if not os.path.isdir(target):
        return None
    with contextlib.suppress(OSError):  # a read-only cache: usable, just not marked
        hold(target)
    _touch(target)
    return target


def extract(arch: Archive, files: List[Tuple[str, str]]) -> str:
    """Extract ``(member, relative path)`` pairs; return the folder that holds them."""
    return cached_folder("native", folder_key(arch, files),
                         lambda work: _fill(arch, files, work))


def folder_key(arch: Archive, files: List[Tuple[str, str]]) -> str:
    """The name of the folder :func:`extract` fills: a digest of the paths and contents."""
    digest = hashlib.sha256()
    for member, rel in sorted(files):
        if rel.startswith("/") or ".." in rel.split("/"):
            raise ArchiveError(f"{arch.path}: unsafe path {rel!r}")
        sha = (arch.manifest_entry(member) or {}).get("sha256")
        if not isinstance(sha, str) or not SHA256_HEX.fullmatch(sha):
            # The cache folder is named by these digests: without one, every file unpacked
            # under this name would share a folder with other files' contents.
            raise ArchiveError(f"{arch.path}: damaged manifest: member {member!r} has no "
                               f"SHA-256, so it cannot be unpacked into the shared cache")
        digest.update(f"{rel}\0{sha}\0".encode())
    return digest.hexdigest()[:24]


def _fill(arch: Archive, files: List[Tuple[str, str]], work: str) -> None:
    for member, rel in files:
        dest = os.path.join(work, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        _write_member(arch, member, dest)
        if rel.endswith(".so") or ".so." in rel:
            os.chmod(dest, 0o755)


def _touch(path: str) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)
