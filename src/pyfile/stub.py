"""Render the launcher: the sh stub with the Python bootstrap embedded in it."""

from __future__ import annotations

import importlib.util
import marshal
import os
import re
import sys
from typing import List, Tuple

from . import __version__

# In a source checkout (src/ on PYTHONPATH, not installed) the templates are in ../../launcher.
_LAUNCHER = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "launcher")


def _read(name: str) -> str:
    try:
        import pyfile.launcher as pkg  # installed layout (package-dir mapping)
        base = os.path.dirname(os.path.abspath(pkg.__file__))
    except ImportError:  # pragma: no cover - running from a source tree without install
        base = _LAUNCHER
    with open(os.path.join(base, name), encoding="utf-8") as f:
        return f.read()


def bootstrap_source() -> str:
    """The bootstrap, with comment lines and blank lines dropped (it shows up in ``ps``)."""
    lines = [ln for ln in _read("bootstrap.py").splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    src = "\n".join(lines) + "\n"
    if "'" in src:
        raise AssertionError("the bootstrap must not contain a single quote")
    return src


def main_source() -> bytes:
    """``__main__.py`` for ``python3 model.pyfile`` (zipimport)."""
    return _read("__main__.py").encode("utf-8")


def pyc_name(member: str, cache_tag: str) -> str:
    """Where the bootstrap looks for ``member``'s bytecode: PEP 3147's ``__pycache__`` name."""
    head, _, tail = member.rpartition("/")
    return f"{head}/__pycache__/{tail[:-3]}.{cache_tag}.pyc"


#: marshal format 2 has no back-references, whose choice depends on reference counts in the
#: compiling process: with it the same source gives the same bytes in any process (builds
#: stay reproducible). Loading it costs the same.
MARSHAL_VERSION = 2


def bytecode(files: List[Tuple[str, bytes]]) -> List[Tuple[str, bytes]]:
    """Bytecode of the runtime's modules for this interpreter, as (member, .pyc bytes).

    The bootstrap uses a module's bytecode when the interpreter that runs the pyfile has the
    same magic number and the source hash in the header matches the module's source (a
    checked hash-based .pyc, PEP 552); otherwise it compiles the source as before. Saves
    compiling ~5,000 lines at every start (30-60 ms here).
    """
    tag = sys.implementation.cache_tag
    if tag is None:
        return []
    out = []
    for member, source in files:
        if not member.endswith(".py"):
            continue
        header = (importlib.util.MAGIC_NUMBER + (0b11).to_bytes(4, "little")
                  + importlib.util.source_hash(source))
        out.append((pyc_name(member, tag), header + _marshalled(member, source)))
    return out


def _marshalled(member: str, source: bytes) -> bytes:
    """``compile`` + ``marshal`` of one module, kept in the build cache by content (compiling
    the runtime's ~5,000 lines took 0.1 s of every build)."""
    import hashlib
    from . import buildcache
    key = hashlib.sha256(importlib.util.MAGIC_NUMBER + f"{member}|{MARSHAL_VERSION}|".encode()
                         + source).hexdigest()
    return buildcache.remembered(key + ".marshal", lambda: marshal.dumps(
        compile(source, member, "exec", dont_inherit=True), MARSHAL_VERSION))


def render() -> bytes:
    """The stub bytes: POSIX sh, ending in a newline, with no NUL bytes.

    The stub tries newer interpreters first; the runtime inside serves every CPython from
    3.9 on, so any of them will do.
    """
    text = _read("stub.sh").replace("@VERSION@", __version__)
    text = text.replace("@BOOTSTRAP@", bootstrap_source())
    assert "\0" not in text and not re.search(r"@[A-Z]+@", text)
    return text.encode("utf-8")
