"""``pyfile cache list|prune``: the unpacked runtimes, GPU variants and GPU backends compiled
on first use on this machine.

A folder is in use while some process holds a shared lock on ``<folder>.lock`` (every
pyfile run does, for its whole life). Prune takes the exclusive lock without waiting and
skips the folder when it cannot; lock files are kept, so the lock stays one inode. A work
folder (``.<name>.<random>``) is being filled while its filler holds ``.<name>.lock``
(:func:`pyfile.runtime.container.atomic.fill_lock`): prune removes one only when it can take
that lock, i.e. when its filler died.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from typing import Iterator, List, Tuple

from .runtime.container import atomic
from .runtime.container.paths import run_cache

KINDS = ("runtime", "native", "compiled")


@dataclass
class Entry:
    kind: str
    path: str
    size: int
    last_used: float
    in_use: bool


def _size(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def _busy(path: str) -> bool:
    try:
        f = atomic.try_lock(path + ".lock")
    except OSError:
        return False
    if f is None:
        return True
    f.close()
    return False


def _folders() -> Iterator[Tuple[str, str, str]]:
    """(kind, name, path) for everything in the cache's runtime and native folders."""
    for kind in KINDS:
        root = os.path.join(run_cache(), kind)
        if os.path.isdir(root):
            for name in sorted(os.listdir(root)):
                yield kind, name, os.path.join(root, name)


def entries() -> List[Entry]:
    return [Entry(kind, path, _size(path), os.path.getmtime(path), _busy(path))
            for kind, name, path in _folders()
            if not name.startswith(".") and os.path.isdir(path)]


def prune(older_than_days: float = 0) -> List[Entry]:
    """Remove unused folders last used more than ``older_than_days`` ago; return them."""
    removed = []
    cutoff = time.time() - older_than_days * 86400
    for kind, name, path in _folders():
        if name.startswith("."):
            target = atomic.target_of_work(path)
            if target is not None and os.path.isdir(path):
                lock = atomic.try_lock(atomic.fill_lock(target))
                if lock is not None:  # its filler is gone: an abandoned work folder
                    with lock:
                        shutil.rmtree(path, ignore_errors=True)
            continue  # else another process is filling it
        if not os.path.isdir(path) or os.path.getmtime(path) > cutoff:
            continue
        lock = atomic.try_lock(path + ".lock")
        if lock is None:
            continue  # in use by a running pyfile
        with lock:
            size = _size(path)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(Entry(kind, path, size, 0, False))
    return removed
