"""Render the launcher: the sh stub with the Python bootstrap embedded in it."""

from __future__ import annotations

import os
import re

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


def render() -> bytes:
    """The stub bytes: POSIX sh, ending in a newline, with no NUL bytes.

    The stub tries newer interpreters first; the runtime inside serves every CPython from
    3.9 on, so any of them will do.
    """
    text = _read("stub.sh").replace("@VERSION@", __version__)
    text = text.replace("@BOOTSTRAP@", bootstrap_source())
    assert "\0" not in text and not re.search(r"@[A-Z]+@", text)
    return text.encode("utf-8")
