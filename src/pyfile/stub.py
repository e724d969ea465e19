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


#: Room in the stub for the table of carried interpreters (" MACHINE:OFFSET:SIZE:SHA256"
#: each, at most 108 bytes; two machines and the shared part "any"), blank when rendered and
#: filled in place once the members' offsets are known: the stub's length never changes, so
#: nothing after it moves.
CARRIED_WIDTH = 400
CARRIED_MARK = b"pyfile_carried='"


def render() -> bytes:
    """The stub bytes: POSIX sh, ending in a newline, with no NUL bytes.

    A file that carries interpreters runs the one for its machine (the table is filled by
    :func:`carried_table`); one that carries none tries newer interpreters on PATH first.
    """
    text = _read("stub.sh").replace("@VERSION@", __version__)
    text = text.replace("@BOOTSTRAP@", bootstrap_source())
    text = text.replace("@CARRIED@", " " * CARRIED_WIDTH)
    assert "\0" not in text and not re.search(r"@[A-Z]+@", text)
    return text.encode("utf-8")


def carried_offset(stub_bytes: bytes) -> int:
    """Where the carried-interpreter table starts in ``stub_bytes`` (from :func:`render`)."""
    at = stub_bytes.find(CARRIED_MARK)
    if at < 0:
        raise ValueError("the stub has no carried-interpreter table")
    return at + len(CARRIED_MARK)


def carried_table(entries: List[Tuple[str, int, int, str]]) -> bytes:
    """The table's bytes for (machine, offset, size, sha256) entries, padded to the field."""
    text = "".join(f" {m}:{off}:{size}:{sha}" for m, off, size, sha in entries)
    if len(text) > CARRIED_WIDTH or any(off % 65536 for _, off, _, _ in entries):
        raise ValueError(f"carried-interpreter table does not fit: {text!r}")
    return text.ljust(CARRIED_WIDTH).encode("ascii")


# Runs in another interpreter (the carried one): bytecode for its own magic number and tag.
_FOREIGN_COMPILE = r"""
import importlib.util, marshal, sys
out = []
for member, source in marshal.loads(sys.stdin.buffer.read()):
    header = (importlib.util.MAGIC_NUMBER + (0b11).to_bytes(4, "little")
              + importlib.util.source_hash(source))
    code = compile(source, member, "exec", dont_inherit=True)
    out.append((member, header + marshal.dumps(code, %d)))
sys.stdout.buffer.write(marshal.dumps((sys.implementation.cache_tag, out)))
""" % MARSHAL_VERSION


def foreign_bytecode(python: str, files: List[Tuple[str, bytes]]) -> List[Tuple[str, bytes]]:
    """:func:`bytecode` as interpreter ``python`` makes it (a carried interpreter that runs
    on this machine), so that it too starts without compiling the runtime; [] if it cannot
    run here."""
    import subprocess
    sources = [(m, s) for m, s in files if m.endswith(".py")]
    try:
        r = subprocess.run([python, "-I", "-S", "-c", _FOREIGN_COMPILE],
                           input=marshal.dumps(sources), capture_output=True, timeout=300)
        tag, out = marshal.loads(r.stdout) if r.returncode == 0 else (None, [])
    except (OSError, subprocess.TimeoutExpired, ValueError, EOFError, TypeError):
        return []
    return [(pyc_name(m, tag), data) for m, data in out] if tag else []
