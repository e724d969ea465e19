"""Atomic output: write to a temp file beside the target, rename into place on success.

On any failure (disk full, Ctrl-C, a bad input found half-way) the temp file is removed
and an existing target is left exactly as it was; on success the data and the rename are
flushed to disk first (see :mod:`pyfile.runtime.container.atomic`, which this wraps with the
build's error type).
"""

from __future__ import annotations

import contextlib
from typing import BinaryIO, Iterator

from .runtime.container.atomic import replacing
from .runtime.errors import InputError


@contextlib.contextmanager
def atomic_output(path: str, executable: bool = True) -> Iterator[BinaryIO]:
    try:
        with replacing(path, 0o777 if executable else 0o666) as f:
            yield f
    except OSError as e:
        raise InputError(f"{path}: cannot write the output: {e.strerror or e}") from None
