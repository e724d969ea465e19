"""Dotted version numbers ("2.31", "3.10", "1.3.250") as tuples of ints that compare: the
one parser for the glibc, CPython, Vulkan and GPU architecture versions pyfile checks."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

Version = Tuple[int, ...]


def parse(text: str) -> Version:
    """``"2.31"`` -> ``(2, 31)``. Raises ValueError unless ``text`` (surrounding blanks
    aside) is decimal numbers joined by single dots."""
    parts = text.strip().split(".")
    if not all(p.isascii() and p.isdigit() for p in parts):
        raise ValueError(f"not a version number: {text!r}")
    return tuple(int(p) for p in parts)


def parse_or(text: object, default: Version = ()) -> Version:
    """:func:`parse`, or ``default`` for anything that is not a version number (``()``
    sorts before every version)."""
    try:
        return parse(str(text))
    except ValueError:
        return default


def text(v: Optional[Sequence[int]]) -> str:
    """``(2, 31)`` -> ``"2.31"``; ``"none"`` for no version."""
    return ".".join(map(str, v)) if v else "none"


__all__ = ["Version", "parse", "parse_or", "text"]
