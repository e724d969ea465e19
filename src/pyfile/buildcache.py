"""Build-time cache: portable engines, fetched wheels and assembled runtime bundles.

One root for everything a *builder* reuses between builds (``$PYFILE_BUILD_CACHE``, else
``$XDG_CACHE_HOME/pyfile/build``, else ``~/.cache/pyfile/build``), one sub-folder per kind.
It is apart from the run-time cache (``$PYFILE_CACHE_DIR``) on purpose: pointing a run at a
fresh run-time cache must not make the next build download and compile everything again. Entries are
published atomically: filled in a sibling work folder, then renamed into place, so an
interrupted build never leaves a half-written entry that a later build would trust.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from typing import Callable, Iterator

CACHE_ENV = "PYFILE_BUILD_CACHE"


def root() -> str:
    base = os.environ.get(CACHE_ENV)
    if base:
        return base
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "pyfile", "build")


def folder(kind: str) -> str:
    """``<root>/<kind>`` (not created)."""
    return os.path.join(root(), kind)


@contextlib.contextmanager
def publishing(target: str) -> Iterator[str]:
    """Yield a fresh work folder; on success it becomes ``target`` (losing a race is fine)."""
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix="." + os.path.basename(target) + ".", dir=parent)
    try:
        yield work
        try:
            os.rename(work, target)
        except OSError:
            if not os.path.isdir(target):
                raise
            shutil.rmtree(work, ignore_errors=True)  # another build published it first
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


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
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return data


__all__ = ["CACHE_ENV", "root", "folder", "publishing", "identity", "remembered"]
