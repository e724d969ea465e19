"""Shared by the bench scripts: run pyfiles with this interpreter's environment."""

import os
import sys


def venv_env() -> dict:
    """The environment a pyfile needs to find this venv's Python (and its engine)."""
    e = dict(os.environ)
    bindir = os.path.dirname(sys.executable)
    e["VIRTUAL_ENV"] = os.path.dirname(bindir)
    e["PATH"] = bindir + os.pathsep + e.get("PATH", "")
    return e
