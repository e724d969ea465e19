"""Reading a pyfile: the zip structure, the manifest, member offsets, and verification.

Standard library only; ``zipfile`` reads ZIP64 and tolerates the shell stub in front on
every Python we support. Nothing here executes or imports anything from the archive.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Dict, List, Optional

from ..errors import ArchiveError, VerifyError
from .manifest import MANIFEST_NAME, MAX_MEMBERS, Manifest

ARGS_NAME = ".args"
MAX_MANIFEST_BYTES = 4 << 20
MAX_SMALL_MEMBER = 64 << 20
LOCAL_SIG = b"PK\x03\x04"
CHUNK = 1 << 20


_crc32_impl: Optional[Callable[[Any, int], int]] = None


def crc32(data: Any, value: int = 0) -> int:
    """CRC-32 as ``zlib.crc32``: the one CRC-32 of build and verify.

    zlib's runs at ~3 GB/s here, zlib-ng's at ~28 GB/s with the same results (a build
    dependency of pyfile, absent from most runtimes; imported on first use so that a run
    that never verifies never pays for the import). Both release the GIL.
    """
    global _crc32_impl
    if _crc32_impl is None:
        try:
            from zlib_ng import zlib_ng
            _crc32_impl = zlib_ng.crc32
        except ImportError:
            _crc32_impl = zlib.crc32
    return _crc32_impl(data, value)


@dataclass(frozen=True)
class Member:
    """A member as found in the zip, with the offset of its first data byte."""

    name: str
    header_offset: int
    offset: int
    size: int
    compressed_size: int
    method: int
    crc32: int

    @property
    def stored(self) -> bool:
        return self.method == zipfile.ZIP_STORED


def _flock(fp: BinaryIO, exclusive: bool) -> None:
    import fcntl
    try:
        fcntl.flock(fp.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    except OSError as e:  # a filesystem without flock (some network ones): no lock to take
        import errno
        if e.errno not in (errno.ENOLCK, errno.EINVAL, errno.ENOTSUP):
            raise


def share(fp: BinaryIO) -> None:
    """Take the readers' lock on an open pyfile (waits for an edit in progress)."""
    _flock(fp, exclusive=False)


def own(fp: BinaryIO) -> None:
    """Take the editor's lock on an open pyfile (waits for readers and other edits)."""
    _flock(fp, exclusive=True)


class Archive:
    """An open pyfile. Use :meth:`open`; close it (or use ``with``) when done."""

    def __init__(self, path: str, fp: BinaryIO, zf: zipfile.ZipFile, file_size: int) -> None:
        self.path = path
        self.fp = fp
        self.zf = zf
        self.file_size = file_size
        self.members: Dict[str, Member] = {}
        self.manifest = Manifest()

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str, *, require_manifest: bool = True,
             lock: bool = True) -> "Archive":
        """Open and check ``path``. With ``lock`` (the default) the open archive holds a
        shared ``flock`` on the file until it is closed, so an in-place edit (``pyfile args
        --set``, ``pyfile add``, which take the exclusive lock) never changes the zip
        directory, ``.args`` or the manifest while they are read; opening waits for an edit
        in progress. An editor that holds the exclusive lock itself passes ``lock=False``."""
        try:
            fp = open(path, "rb")
        except OSError as e:
            raise ArchiveError(f"{path}: cannot open: {e.strerror or e}") from None
        try:
            if lock:
                share(fp)
            size = os.fstat(fp.fileno()).st_size
            try:
                zf = zipfile.ZipFile(fp)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError,
                    struct.error, OSError) as e:
                raise ArchiveError(f"{path}: not a pyfile, or damaged or truncated "
                                   f"(no readable zip directory: {e})") from None
            self = cls(path, fp, zf, size)
            self._scan()
            if require_manifest or MANIFEST_NAME in self.members:
                self._load_manifest()
            return self
        except BaseException:
            fp.close()
            raise

    def _scan(self) -> None:
        infos = self.zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ArchiveError(f"{self.path}: {len(infos)} members is more than we accept")
        spans = []
        for info in infos:
            name = info.filename
            if name in self.members:
                raise ArchiveError(f"{self.path}: duplicate member {name!r}")
            if (not name or name.startswith("/") or "\\" in name or "\0" in name
                    or ".." in name.split("/")):
                raise ArchiveError(f"{self.path}: unsafe member name {name!r}")
            end_of_header = info.header_offset + 30
            if info.header_offset < 0 or end_of_header > self.file_size:
                raise ArchiveError(f"{self.path}: truncated: member {name!r} starts past the "
                                   f"end of the file")
            self.fp.seek(info.header_offset)
            header = self.fp.read(30)
            if len(header) < 30 or header[:4] != LOCAL_SIG:
                raise ArchiveError(f"{self.path}: damaged: no local header for {name!r} "
                                   f"at offset {info.header_offset}")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            offset = info.header_offset + 30 + name_len + extra_len
            end = offset + info.compress_size
            if end > self.file_size:
                raise ArchiveError(f"{self.path}: truncated: member {name!r} needs {end} bytes, "
                                   f"the file has {self.file_size}")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise ArchiveError(f"{self.path}: member {name!r} uses unsupported "
                                   f"compression method {info.compress_type}")
            self.members[name] = Member(name, info.header_offset, offset, info.file_size,
                                        info.compress_size, info.compress_type, info.CRC)
            spans.append((info.header_offset, end, name))
        spans.sort()
        for (s1, e1, n1), (s2, _e2, n2) in zip(spans, spans[1:]):
            if s2 < e1:
                raise ArchiveError(f"{self.path}: damaged: members {n1!r} and {n2!r} overlap")

    def _load_manifest(self) -> None:
        if MANIFEST_NAME not in self.members:
            if not self._ends_with_end_record():
                raise ArchiveError(f"{self.path}: damaged or truncated (the zip directory "
                                   f"found is not at the end of the file)")
            raise ArchiveError(f"{self.path}: not a pyfile (a zip without {MANIFEST_NAME})")
        self.manifest = Manifest.parse(self.read(MANIFEST_NAME, limit=MAX_MANIFEST_BYTES),
                                       self.path)

    def _ends_with_end_record(self) -> bool:
        """Whether the file ends with an end-of-central-directory record (every pyfile does:
        no comment). A truncated pyfile can still look like a zip: the runtime bundle
        inside it is one."""
        try:
            self.fp.seek(max(0, self.file_size - 22))
            tail = self.fp.read(22)
        except OSError:
            return False
        return len(tail) == 22 and tail[:4] == b"PK\x05\x06" and tail[20:22] == b"\0\0"

    # -- reading -----------------------------------------------------------------------------

    def read(self, name: str, limit: int = MAX_SMALL_MEMBER) -> bytes:
        """A small member's bytes (CRC-checked by zipfile)."""
        m = self.member(name)
        if m.size > limit:
            raise ArchiveError(f"{self.path}: member {name!r} is {m.size} bytes, "
                               f"more than the {limit} expected")
        try:
            with self.zf.open(name) as f:
                data = f.read(limit + 1)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as e:
            raise ArchiveError(f"{self.path}: damaged member {name!r}: {e}") from None
        if len(data) != m.size:
            raise ArchiveError(f"{self.path}: damaged member {name!r}: size mismatch")
        return data

    def member(self, name: str) -> Member:
        try:
            return self.members[name]
        except KeyError:
            raise ArchiveError(f"{self.path}: no member named {name!r}") from None

    def args_text(self) -> str:
        if ARGS_NAME not in self.members:
            return ""
        try:
            return self.read(ARGS_NAME, limit=1 << 20).decode("utf-8")
        except UnicodeDecodeError:
            raise ArchiveError(f"{self.path}: .args is not UTF-8 text") from None

    @property
    def default_model(self) -> Optional[str]:
        return self.manifest.default_model

    def manifest_entry(self, name: str) -> Optional[Dict[str, Any]]:
        return self.manifest.entry(name)

    # -- verification -------------------------------------------------------------------------

    def verify(self, progress: Optional[Callable[[int], None]] = None) -> List[str]:
        """Check every manifest member's CRC-32, SHA-256 (where the manifest records one:
        the weights have one only when built with ``--sha256``), offset and alignment.

        Returns the problems found (empty when the file is intact).
        """
        problems: List[str] = []
        listed = {e["name"] for e in self.manifest.members}
        for name in self.members:
            if name not in listed and name != MANIFEST_NAME:
                problems.append(f"member {name!r} is not listed in the manifest")
        for entry in self.manifest.members:
            name = entry["name"]
            m = self.members.get(name)
            if m is None:
                problems.append(f"member {name!r} is listed in the manifest but missing")
                continue
            if entry.get("size") != m.size:
                problems.append(f"{name}: size {m.size} differs from the manifest's "
                                f"{entry.get('size')}")
                continue
            if m.stored and entry.get("offset") != m.offset:
                problems.append(f"{name}: data at offset {m.offset}, manifest says "
                                f"{entry.get('offset')}")
            align = entry.get("align", 1)
            if align > 1 and m.offset % align:
                problems.append(f"{name}: data offset {m.offset} is not {align}-byte aligned")
            want_sha = entry.get("sha256") or ""
            crc, sha = self._digest(m, progress, bool(want_sha))
            if crc != m.crc32:
                problems.append(f"{name}: CRC-32 mismatch (data {crc:08x}, zip {m.crc32:08x})")
            if want_sha and sha != want_sha:
                problems.append(f"{name}: SHA-256 mismatch")
        return problems

    def _digest(self, m: Member, progress: Optional[Callable[[int], None]],
                want_sha: bool = True) -> "tuple[int, str]":
        """CRC-32 and (if ``want_sha``) SHA-256 hex of a member's data."""
        import hashlib  # loads OpenSSL: only runs that verify pay for it
        crc, sha = 0, (hashlib.sha256() if want_sha else None)
        try:
            if m.stored:
                buf = memoryview(bytearray(CHUNK))
                fd, pos, left = self.fp.fileno(), m.offset, m.size
                while left:
                    n = os.preadv(fd, [buf[:min(CHUNK, left)]], pos)
                    if not n:
                        break
                    chunk = buf[:n]
                    crc = crc32(chunk, crc)
                    if sha is not None:
                        sha.update(chunk)
                    pos += n
                    left -= n
                    if progress:
                        progress(n)
            else:
                data = zlib.decompressobj(-15)
                self.fp.seek(m.offset)
                raw = self.fp.read(m.compressed_size)
                chunk = data.decompress(raw, m.size + 1)
                crc = crc32(chunk)
                if sha is not None:
                    sha.update(chunk)
                if progress:
                    progress(m.size)
        except (OSError, zlib.error) as e:
            raise VerifyError(f"{self.path}: cannot read member {m.name!r}: {e}") from None
        return crc, sha.hexdigest() if sha is not None else ""

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        self.zf.close()
        self.fp.close()

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
