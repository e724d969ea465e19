"""Build-time cache: portable engines, fetched wheels and assembled runtime bundles.

One root for everything a *builder* reuses between builds (``$PYFILE_BUILD_CACHE``, else
``$XDG_CACHE_HOME/pyfile/build``, else ``~/.cache/pyfile/build``), one sub-folder per kind.
It is apart from the run-time cache (``$PYFILE_CACHE_DIR``) on purpose: pointing a run at a
fresh run-time cache must not make the next build download and compile everything again. Entries are
published atomically (:func:`publishing`, from :mod:`pyfile.runtime.container.atomic`):
filled in a sibling work folder, flushed, then renamed into place, so an interrupted build
(or a power cut) never leaves a half-written entry that a later build would trust.
"""

from __future__ import annotations

import os
from typing import Callable

from .runtime.container import atomic, paths
from .runtime.container.atomic import publishing

CACHE_ENV = paths.BUILD_CACHE_ENV


def root() -> str:
    return paths.build_cache()


def folder(kind: str) -> str:
    """``<root>/<kind>`` (not created)."""
    return os.path.join(root(), kind)


def identity(path: str) -> str:
    """What stands for a file's content in cache keys without reading it: its path, device,
    inode, size, and modification and change times (what git's index trusts; any write or
    replacement changes the change time). Raises OSError if it cannot be stat'ed."""
    st = os.stat(path)
    return (f"{os.path.abspath(path)}|{st.st_dev}|{st.st_ino}|{st.st_size}|"
            f"{st.st_mtime_ns}|{st.st_ctime_ns}")


def remembered(name: str, make: Callable[[], bytes]) -> bytes:
    """Bytes derived from some content (``name`` must be a digest of it and of how they are
    made), kept in ``<root>/objects/`` so that later builds reuse them. Safe from several
    threads and processes; without a writable cache the bytes are just made."""
    path = os.path.join(folder("objects"), name)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        pass
    data = make()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic.write_bytes(path, data)
    except OSError:
        pass  # an unwritable cache only costs making them again
    return data


__all__ = ["CACHE_ENV", "root", "folder", "publishing", "identity", "remembered"]
