"""A small, deterministic zip writer for pyfiles.

Why not ``zipfile.ZipFile`` for writing: we need members whose data starts on a page
boundary (gap bytes before the local header, as llamafile's zipalign does), big members
copied with CRC-32 and SHA-256 computed alongside, ZIP64 exactly when needed with
the ZIP64 extra as the only extra field (Python 3.13.0 rejects anything else), and the
ability to append members plus a new central directory to an existing archive without
rewriting it. Offsets are always relative to the start of the file, so the stub in front
is part of the archive's "preamble" and ``unzip -t``/``7z t`` see no extra bytes.

Big members are copied by :mod:`pyfile.copier`, in the calling thread (:meth:`add_stream`)
or in a background thread while the next members are written (:meth:`start_stream`).
``hashlib`` is imported where it is used: a build starts copying the weights before it
hashes anything, and every millisecond before that start is on a 1 GiB build's clock.
"""

from __future__ import annotations

import os
import queue
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Callable, List, Optional, Sequence, Tuple

from . import copier
from .runtime.container.archive import crc32
from .runtime.errors import InputError

LOCAL_SIG = 0x04034B50
CENTRAL_SIG = 0x02014B50
EOCD_SIG = 0x06054B50
ZIP64_EOCD_SIG = 0x06064B50
ZIP64_LOCATOR_SIG = 0x07064B50
ZIP64_EXTRA_ID = 0x0001
STORED, DEFLATED = 0, 8
U16_MAX, U32_MAX = 0xFFFF, 0xFFFFFFFF
FLAG_UTF8 = 0x0800
MADE_BY_UNIX = 3 << 8
LOCAL_HEADER_LEN = 30
DOS_EPOCH = 315532800  # 1980-01-01T00:00:00Z, the earliest time a zip can record


@dataclass
class Entry:
    """One member as recorded in the central directory."""

    name: str
    header_offset: int
    data_offset: int
    compressed_size: int
    size: int
    crc32: int
    method: int
    dos_time: int
    dos_date: int
    sha256: str = ""
    mode: int = 0o644

    @property
    def needs_zip64(self) -> bool:
        return (self.size >= U32_MAX or self.compressed_size >= U32_MAX
                or self.header_offset >= U32_MAX)


def deflate(data: bytes, level: int = 6) -> bytes:
    """The raw deflate stream of ``data`` (a zip member's bytes under method 8). Level 6:
    for the runtime's sources and bytecode it costs 10 ms per build where level 9 cost
    42 ms, for 0.7% more bytes."""
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def smaller_deflate(data: bytes) -> Optional[bytes]:
    """:func:`deflate` of ``data`` where it pays: None for 64 bytes or less, or when the
    stream would not be smaller (the member is then stored as it is)."""
    if len(data) <= 64:
        return None
    deflated = deflate(data)
    return deflated if len(deflated) < len(data) else None


def dos_datetime(epoch: Optional[int]) -> Tuple[int, int]:
    """(time, date) in DOS format for ``epoch`` (UTC), clamped to what a zip can hold."""
    t = time.gmtime(max(DOS_EPOCH, min(epoch if epoch is not None else DOS_EPOCH,
                                       4354819199)))  # 2107-12-31
    dos_time = (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2)
    dos_date = ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday
    return dos_time, dos_date


class ZipWriter:
    """Writes members at ``fp``'s current position, then a central directory on close.

    ``existing`` entries (from an archive being extended) are listed again in the new
    central directory; their bytes are not touched.
    """

    def __init__(self, fp: BinaryIO, *, epoch: Optional[int] = None,
                 existing: Sequence[Entry] = ()) -> None:
        self.fp = fp
        self.pos = fp.tell()
        self.epoch = epoch
        self.dos_time, self.dos_date = dos_datetime(epoch)
        self.entries: List[Entry] = list(existing)
        self._names = {e.name for e in self.entries}
        self._copy_thread: Optional[threading.Thread] = None  # started by the first start_stream
        self._queue: "queue.SimpleQueue[Optional[_Pending]]" = queue.SimpleQueue()
        self._stop = threading.Event()

    # -- members -----------------------------------------------------------------------

    def _local_header(self, name: bytes, method: int, crc: int, csize: int, size: int,
                      zip64: bool) -> bytes:
        extra = b""
        if zip64:
            extra = struct.pack("<HHQQ", ZIP64_EXTRA_ID, 16, size, csize)
            csize = size = U32_MAX
        return struct.pack("<IHHHHHIIIHH", LOCAL_SIG, 45 if zip64 else 20, FLAG_UTF8, method,
                           self.dos_time, self.dos_date, crc, csize, size, len(name),
                           len(extra)) + name + extra

    def _begin(self, name: str, align: int, zip64: bool) -> Tuple[int, int, bytes]:
        if name in self._names:
            raise InputError(f"duplicate member name {name!r}")
        if not name or name.startswith("/") or "\\" in name or ".." in name.split("/"):
            raise InputError(f"unsafe member name {name!r}")
        raw = name.encode("utf-8")
        header_len = LOCAL_HEADER_LEN + len(raw) + (20 if zip64 else 0)
        gap = (-(self.pos + header_len)) % align if align > 1 else 0
        if gap:
            self.fp.write(b"\0" * gap)
        header_offset = self.pos + gap
        return header_offset, header_offset + header_len, raw

    def add_bytes(self, name: str, data: bytes, *, compress: bool = True, align: int = 1,
                  mode: int = 0o644) -> Entry:
        """Add a small member held in memory (deflated unless that makes it bigger)."""
        import hashlib
        return self.add_prepared(name, data, len(data), crc32(data),
                                 hashlib.sha256(data).hexdigest(),
                                 smaller_deflate(data) if compress else None, align=align,
                                 mode=mode)

    def add_prepared(self, name: str, data: Optional[bytes], size: int, crc: int,
                     sha256: str, deflated: Optional[bytes] = None, *, align: int = 1,
                     mode: int = 0o644) -> Entry:
        """Add a member whose digests the caller already has (from a cache).

        ``data`` is the member's ``size`` bytes, or None when the caller holds only their raw
        deflate stream ``deflated``; the deflate stream is written when it is smaller than
        ``size`` or there is no ``data``, else ``data`` is stored."""
        if deflated is not None and (data is None or len(deflated) < size):
            method, payload = DEFLATED, deflated
        elif data is not None:
            method, payload = STORED, data
        else:
            raise ValueError(f"{name}: neither the bytes nor their deflate stream")
        zip64 = size >= U32_MAX
        header_offset, data_offset, raw = self._begin(name, align, zip64)
        self.fp.write(self._local_header(raw, method, crc, len(payload), size, zip64))
        self.fp.write(payload)
        entry = Entry(name, header_offset, data_offset, len(payload), size, crc, method,
                      self.dos_time, self.dos_date, sha256, mode)
        return self._done(entry)

    def add_stream(self, name: str, path: str, offset: int, size: int, *, align: int = 4096,
                   progress: Optional[Callable[[int], None]] = None,
                   origin: str = "", sha256: bool = True) -> Entry:
        """Copy ``size`` bytes of the file ``path`` from ``offset`` as a stored member whose
        data is ``align``-aligned, in this thread.

        CRC-32 (and SHA-256 unless ``sha256`` is false: the entry's digest is then "") are
        computed while copying; the header's CRC is patched afterwards. An input that turns
        out shorter than ``size`` is an error.
        """
        pending = self._stream(name, path, offset, size, align, progress, origin, sha256)
        try:
            pending.run()
        except BaseException:
            self.entries.remove(pending)  # type: ignore[arg-type]  # no half-copied entry
            self._names.discard(name)
            raise
        finally:
            os.close(pending.in_fd)
        return self._resolve(pending)

    def start_stream(self, name: str, path: str, offset: int, size: int, *,
                     align: int = 4096, progress: Optional[Callable[[int], None]] = None,
                     origin: str = "", sha256: bool = True) -> None:
        """:meth:`add_stream`, in a background thread: the member's place in the file is
        fixed now and the next member goes after it while the bytes are being copied.

        Members started this way are copied one after another, in order, by one thread.
        :meth:`wait` finishes them (and raises what went wrong); :meth:`abort` stops them."""
        pending = self._stream(name, path, offset, size, align, progress, origin, sha256)
        pending.done = threading.Event()
        self._queue.put(pending)
        if self._copy_thread is None:
            thread = threading.Thread(target=self._copy_queued, name="pyfile-copy", daemon=True)
            thread.start()
            # Only a started thread is recorded: a Ctrl-C between the two lines above must
            # not leave abort() joining a thread that never ran.
            self._copy_thread = thread

    def _copy_queued(self) -> None:
        while True:
            pending = self._queue.get()
            if pending is None:
                return
            try:
                if self._stop.is_set():
                    raise copier.Stopped()
                pending.run()
            except BaseException as e:  # raised again by wait()
                pending.error = e
            finally:
                os.close(pending.in_fd)
                pending.done.set()

    def _stream(self, name: str, path: str, offset: int, size: int, align: int,
                progress: Optional[Callable[[int], None]], origin: str,
                sha256: bool) -> "_Pending":
        origin = origin or name
        try:
            in_fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise InputError(f"{origin}: cannot read: {e.strerror or e}") from None
        try:
            zip64 = size >= U32_MAX
            header_offset, data_offset, raw = self._begin(name, align, zip64)
            self.fp.write(self._local_header(raw, STORED, 0, size, size, zip64))
            self.fp.flush()  # the copy writes beside this buffered writer, by offset
        except BaseException:
            os.close(in_fd)
            raise
        pending = _Pending(name, header_offset, data_offset, size, in_fd, offset,
                           self.fp.fileno(), progress, origin, sha256, self._stop)
        self.entries.append(pending)  # type: ignore[arg-type]  # resolved by wait()
        self._names.add(name)
        self.pos = data_offset + size
        self.fp.seek(self.pos)
        return pending

    def _resolve(self, pending: "_Pending") -> Entry:
        entry = Entry(pending.name, pending.header_offset, pending.data_offset, pending.size,
                      pending.size, pending.crc, STORED, self.dos_time, self.dos_date,
                      pending.digest)
        self.entries[self.entries.index(pending)] = entry  # type: ignore[arg-type]
        return entry

    def wait(self) -> List[Entry]:
        """Finish the members started with :meth:`start_stream`; every entry, in file order."""
        for e in list(self.entries):
            if isinstance(e, _Pending):
                assert e.done is not None  # only background copies are left pending
                e.done.wait()
                if e.error is not None:
                    raise e.error
                self._resolve(e)
        return self.entries

    def abort(self) -> None:
        """Stop background copies at their next step (the output is about to be removed)."""
        self._stop.set()
        self._end_copier()

    def _end_copier(self) -> None:
        if self._copy_thread is not None:
            self._queue.put(None)
            self._copy_thread.join()
            self._copy_thread = None

    def _done(self, entry: Entry) -> Entry:
        self.pos = self.fp.tell()
        self.entries.append(entry)
        self._names.add(entry.name)
        return entry

    # -- central directory ------------------------------------------------------------------

    def close(self) -> int:
        """Write the central directory and end records; return the archive's end offset."""
        self.wait()
        self._end_copier()
        cd_offset = self.pos
        for e in self.entries:
            self.fp.write(_central_record(e))
        cd_end = self.fp.tell()
        cd_size = cd_end - cd_offset
        n = len(self.entries)
        if n >= U16_MAX or cd_size >= U32_MAX or cd_offset >= U32_MAX:
            self.fp.write(struct.pack("<IQHHIIQQQQ", ZIP64_EOCD_SIG, 44, MADE_BY_UNIX | 45, 45,
                                      0, 0, n, n, cd_size, cd_offset))
            self.fp.write(struct.pack("<IIQI", ZIP64_LOCATOR_SIG, 0, cd_end, 1))
            self.fp.write(struct.pack("<IHHHHIIH", EOCD_SIG, 0, 0, min(n, U16_MAX),
                                      min(n, U16_MAX), min(cd_size, U32_MAX),
                                      min(cd_offset, U32_MAX), 0))
        else:
            self.fp.write(struct.pack("<IHHHHIIH", EOCD_SIG, 0, 0, n, n, cd_size, cd_offset, 0))
        self.pos = self.fp.tell()
        return self.pos


@dataclass(eq=False)
class _Pending:
    """A stored member whose place is fixed and whose bytes are (being) copied."""

    name: str
    header_offset: int
    data_offset: int
    size: int
    in_fd: int
    in_offset: int
    out_fd: int
    progress: Optional[Callable[[int], None]]
    origin: str
    sha256: bool
    stop: threading.Event
    crc: int = 0
    digest: str = ""
    done: Optional[threading.Event] = None  # set by the copy thread (start_stream only)
    error: Optional[BaseException] = None

    def run(self) -> None:
        """Copy the bytes, hashing them, then patch the CRC into the local header (by
        offset: the writer's buffered position is elsewhere)."""
        self.crc, self.digest = copier.copy_hashing(
            self.in_fd, self.in_offset, self.out_fd, self.data_offset, self.size,
            self.progress, self.origin, self.sha256, self.stop)
        copier.pwrite_all(self.out_fd, struct.pack("<I", self.crc), self.header_offset + 14)


def _central_record(e: Entry) -> bytes:
    raw = e.name.encode("utf-8")
    fields = []
    size, csize, offset = e.size, e.compressed_size, e.header_offset
    if size >= U32_MAX:
        fields.append(size)
        size = U32_MAX
    if csize >= U32_MAX:
        fields.append(csize)
        csize = U32_MAX
    if offset >= U32_MAX:
        fields.append(offset)
        offset = U32_MAX
    extra = struct.pack("<HH" + "Q" * len(fields), ZIP64_EXTRA_ID, 8 * len(fields),
                        *fields) if fields else b""
    version = 45 if fields else 20
    external = ((0o100000 | e.mode) << 16) & 0xFFFFFFFF
    return struct.pack("<IHHHHHHIIIHHHHHII", CENTRAL_SIG, MADE_BY_UNIX | version, version,
                       FLAG_UTF8, e.method, e.dos_time, e.dos_date, e.crc32, csize, size,
                       len(raw), len(extra), 0, 0, 0, external, offset) + raw + extra
