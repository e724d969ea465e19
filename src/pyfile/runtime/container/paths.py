"""Where pyfile keeps things on this machine: one XDG cache root, and under it the run-time
cache, the build cache and the developer's cache (each with its own override variable).

The run-time cache (unpacked runtimes, carried native libraries, probe verdicts) and the
build cache (engines, wheels, runtime bundles) are apart on purpose: pointing a run at a fresh
run-time cache must not make the next build download and compile everything again.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

#: The run-time cache folder (else ``<XDG cache>/pyfile``).
RUN_CACHE_ENV = "PYFILE_CACHE_DIR"
#: The build cache folder (else ``<XDG cache>/pyfile/build``).
BUILD_CACHE_ENV = "PYFILE_BUILD_CACHE"


def xdg_cache_home(env: Optional[Mapping[str, str]] = None) -> str:
    """``$XDG_CACHE_HOME``, else ``~/.cache`` (the XDG base directory rule)."""
    env = os.environ if env is None else env
    return env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")


def run_cache(env: Optional[Mapping[str, str]] = None) -> str:
    """The run-time cache: ``$PYFILE_CACHE_DIR``, else ``<XDG cache>/pyfile`` (not created)."""
    env = os.environ if env is None else env
    return env.get(RUN_CACHE_ENV) or os.path.join(xdg_cache_home(env), "pyfile")


def build_cache(env: Optional[Mapping[str, str]] = None) -> str:
    """The build cache: ``$PYFILE_BUILD_CACHE``, else ``<XDG cache>/pyfile/build``."""
    env = os.environ if env is None else env
    return env.get(BUILD_CACHE_ENV) or os.path.join(xdg_cache_home(env), "pyfile", "build")


def dev_cache(env: Optional[Mapping[str, str]] = None) -> str:
    """What the project's own scripts build once (``<XDG cache>/pyfile-dev``)."""
    return os.path.join(xdg_cache_home(env), "pyfile-dev")


__all__ = ["RUN_CACHE_ENV", "BUILD_CACHE_ENV", "xdg_cache_home", "run_cache", "build_cache",
           "dev_cache"]
