"""Crash-safe files and folders, and the file locks where two processes meet.

A file or a folder is written beside its target under a unique name, its data is flushed to
disk (fsync), it is renamed over the target, and the folder that holds it is flushed too:
after a crash or a power cut the target is the old one or the complete new one, never an
empty or half-written one, and two writers never share a temporary name.

Two processes that fill the same folder meet at a lock file beside it, ``.<name>.lock``; the
work folder, ``.<name>.<random>``, is only ever removed by whoever holds that lock, so a
cleaner (``pyfile cache prune``) that takes the lock without waiting can tell a fill that
crashed from one still in progress. Locks are ``flock``: released by the kernel when the
holder dies, and taken by blocking, never by polling.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import IO, BinaryIO, Iterator, Optional

#: How many fsyncs run at once when a folder is flushed (they wait on the disk, not the CPU;
#: the filesystem folds concurrent ones into one journal commit).
FSYNC_THREADS = 8


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- flushing --------------------------------------------------------------------------------

def fsync_dir(path: str) -> None:
    """Flush a folder's entries (a rename in it is durable once this returns). Filesystems
    that cannot flush a folder (some network ones answer EINVAL) are left as they are."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:
        import errno
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str) -> None:
    """Flush every file and folder under ``path`` (symbolic links are entries of their
    folder, flushed with it)."""
    files, folders = [], []
    for root, dirs, names in os.walk(path):
        folders.append(root)
        files.extend(os.path.join(root, n) for n in names
                     if not os.path.islink(os.path.join(root, n)))
    if len(files) > FSYNC_THREADS:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(FSYNC_THREADS) as pool:
            list(pool.map(_fsync_file, files))
    else:
        for f in files:
            _fsync_file(f)
    for d in reversed(folders):
        fsync_dir(d)


# -- files -----------------------------------------------------------------------------------

@contextlib.contextmanager
def replacing(path: str, mode: int = 0o666) -> Iterator[BinaryIO]:
    """Yield a new file beside ``path`` (opened ``w+b``, a unique name); when the block ends
    without an exception, its data is flushed, it gets ``mode`` (less the umask) and replaces
    ``path`` atomically, and the folder is flushed. On any exception, Ctrl-C included, the
    temporary file is removed and ``path`` is left as it was. Raises OSError."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


def write_bytes(path: str, data: bytes, mode: int = 0o666) -> None:
    """Write ``data`` as ``path``, atomically and durably (see :func:`replacing`)."""
    with replacing(path, mode) as f:
        f.write(data)


# -- locks -----------------------------------------------------------------------------------

def _open_lock(path: str) -> IO[str]:
    return open(path, "a+")


@contextlib.contextmanager
def locked(path: str, shared: bool = False) -> Iterator[None]:
    """Hold a ``flock`` on the file ``path`` (created if missing) for the block; waits for
    a conflicting holder. Raises OSError if the lock file cannot be opened."""
    import fcntl
    with _open_lock(path) as f:
        fcntl.flock(f, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def try_lock(path: str, shared: bool = False) -> Optional[IO[str]]:
    """The open lock file ``path`` with a lock taken without waiting (close it to release),
    or None when another process holds a conflicting one. Raises OSError if it cannot be
    opened."""
    import fcntl
    f = _open_lock(path)
    try:
        fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    except BaseException:
        f.close()
        raise
    return f


# -- folders ---------------------------------------------------------------------------------

def fill_lock(target: str) -> str:
    """The lock file that whoever fills (or removes) ``target``'s work folders holds."""
    return os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.lock")


def target_of_work(work: str) -> Optional[str]:
    """The target a work folder ``.<name>.<random>`` is filled for, or None if ``work`` is
    not named like one."""
    base = os.path.basename(work)
    name, dot, rand = base[1:].rpartition(".")
    if not base.startswith(".") or not dot or not name or not rand or rand == "lock":
        return None
    return os.path.join(os.path.dirname(work), name)


@contextlib.contextmanager
def publishing(target: str) -> Iterator[str]:
    """Yield a fresh work folder beside ``target``; when the block ends without an exception,
    everything in it is flushed and it is renamed to ``target``, and the parent folder is
    flushed. If ``target`` appeared meanwhile (another process won the race), the work folder
    is dropped and the winner's kept: losing the race is success. On an exception the work
    folder is removed. Callers that can meet another process hold :func:`fill_lock` around
    this (see ``extract.cached_folder``). Raises OSError."""
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix="." + os.path.basename(target) + ".", dir=parent)
    try:
        yield work
        fsync_tree(work)
        try:
            os.rename(work, target)
        except OSError:
            if not os.path.isdir(target):
                raise
            shutil.rmtree(work, ignore_errors=True)  # another process published it first
            return
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    fsync_dir(parent)


__all__ = ["fsync_dir", "fsync_tree", "replacing", "write_bytes", "locked", "try_lock",
           "fill_lock", "target_of_work", "publishing"]
