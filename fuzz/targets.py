"""Fuzz targets: each takes untrusted bytes/text and must either succeed or raise the
project's own error type (PyfileError). Anything else (another exception, a crash, a hang)
is a finding. Used by fuzz/test_fuzz.py (hypothesis) with a short run in CI and a long one
locally (FUZZ_EXAMPLES=100000 pytest fuzz/)."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from pyfile import gguf
from pyfile.runtime.container import argsfile
from pyfile.runtime.container.archive import Archive
from pyfile.runtime.container.manifest import Manifest
from pyfile.runtime.errors import PyfileError

COUNTS = {"gguf": 0, "container": 0, "args": 0, "manifest": 0}


def _tmp(data: bytes) -> str:
    fd, path = tempfile.mkstemp(prefix="fuzz-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def fuzz_gguf(data: bytes) -> None:
    COUNTS["gguf"] += 1
    path = _tmp(data)
    try:
        info = gguf.read(path)
        info.summary()
    except PyfileError:
        pass
    finally:
        os.unlink(path)


def fuzz_container(data: bytes) -> None:
    COUNTS["container"] += 1
    path = _tmp(data)
    try:
        with Archive.open(path) as arch:
            arch.args_text()
            arch.verify()
            for name in list(arch.members)[:20]:
                arch.read(name, limit=1 << 20)
    except PyfileError:
        pass
    finally:
        os.unlink(path)


def fuzz_args(text: str) -> None:
    COUNTS["args"] += 1
    try:
        words = argsfile.parse(text, env={"HOME": "/h", "X": "1 2"})
        argsfile.merge(words, ["u"])
    except PyfileError:
        pass


def fuzz_manifest(value: Any) -> None:
    COUNTS["manifest"] += 1
    try:
        Manifest.parse(json.dumps(value).encode(), "fuzz")
    except PyfileError:
        pass
