"""Build-time: what a shared library needs from the system, read from its ELF headers.

Only what the portability checks need: the libraries it links (``DT_NEEDED``) and the
symbol versions it requires from them (``.gnu.version_r``: ``GLIBC_2.34``,
``GLIBCXX_3.4.29`` ...). 64-bit little-endian ELF only (x86-64, aarch64); no binutils needed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

from .runtime.container import versions

ELF_MAGIC = b"\x7fELF"
SHT_DYNAMIC = 6
SHT_GNU_VERNEED = 0x6FFFFFFE
DT_NEEDED = 1


class ELFError(ValueError):
    """Not a 64-bit little-endian ELF file, or a damaged one."""


@dataclass
class Needs:
    """A library's requirements: linked sonames and, per soname, the versions it asks for."""

    libraries: List[str] = field(default_factory=list)
    versions: Dict[str, Set[str]] = field(default_factory=dict)

    def newest(self, prefix: str) -> Optional[Tuple[int, ...]]:
        """Highest version named ``PREFIX_x.y.z`` (e.g. ``GLIBC``), as a tuple, or None."""
        best: Optional[Tuple[int, ...]] = None
        for names in self.versions.values():
            for name in names:
                head, _, number = name.partition("_")
                if head != prefix:
                    continue
                try:
                    v = versions.parse(number)
                except ValueError:
                    continue
                if best is None or v > best:
                    best = v
        return best


def _cstr(table: bytes, offset: int) -> str:
    end = table.find(b"\0", offset)
    if offset >= len(table) or end < 0:
        raise ELFError("string offset outside its table")
    return table[offset:end].decode("ascii", "replace")


def read_needs(data: bytes) -> Needs:
    """Parse ``data`` (a whole ELF file) and return what it needs."""
    if data[:4] != ELF_MAGIC or len(data) < 64:
        raise ELFError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ELFError("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    if shoff == 0 or shentsize < 64 or shoff + shnum * shentsize > len(data):
        raise ELFError("no section headers")
    sections = []
    for i in range(shnum):
        (_name, stype, _flags, _addr, off, size, link, _info, _align,
         _entsize) = struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
        sections.append((stype, off, size, link))

    def table(index: int) -> bytes:
        if not 0 <= index < len(sections):
            raise ELFError("bad section link")
        _t, off, size, _l = sections[index]
        return data[off:off + size]

    needs = Needs()
    for stype, off, size, link in sections:
        if stype == SHT_DYNAMIC:
            strtab = table(link)
            for pos in range(off, off + size - 15, 16):
                tag, val = struct.unpack_from("<qQ", data, pos)
                if tag == 0:
                    break
                if tag == DT_NEEDED:
                    needs.libraries.append(_cstr(strtab, val))
        elif stype == SHT_GNU_VERNEED:
            strtab = table(link)
            pos, seen = off, 0
            while seen < 1000:
                _ver, cnt, vfile, aux, nxt = struct.unpack_from("<HHIII", data, pos)
                names = needs.versions.setdefault(_cstr(strtab, vfile), set())
                apos = pos + aux
                for _ in range(cnt):
                    _hash, _flags, _other, vname, anext = struct.unpack_from("<IHHII", data, apos)
                    names.add(_cstr(strtab, vname))
                    if not anext:
                        break
                    apos += anext
                if not nxt:
                    break
                pos += nxt
                seen += 1
    return needs


def read_file_needs(path: str) -> Needs:
    with open(path, "rb") as f:
        return read_needs(f.read())


def version_text(v: Optional[Tuple[int, ...]]) -> str:
    return versions.text(v)


__all__ = ["ELFError", "Needs", "read_needs", "read_file_needs", "version_text"]
