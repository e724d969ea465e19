"""Shared fixtures: tiny GGUFs, the real SmolLM2 model, built pyfiles, run helpers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from ggufgen import write_tiny

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
MODEL_ENV = "PYFILE_TEST_MODEL"
# A suite started in the background by a non-interactive shell (`make test &`, nohup) inherits
# SIGINT ignored, and so would every file it runs: the Ctrl-C tests need what a terminal gives.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# Builds reuse the engine, wheels and runtimes that `make setup` cached (as the Makefile says).
os.environ.setdefault("PYFILE_BUILD_CACHE",
                      os.path.join(os.path.expanduser("~"), ".cache", "pyfile-dev", "build"))


def run_env(**extra: str) -> Dict[str, str]:
    """Environment in which a pyfile finds this venv's Python (with the engine)."""
    env = dict(os.environ)
    env["VIRTUAL_ENV"] = str(VENV_BIN.parent)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYFILE_PYTHON", None)
    env.update(extra)
    return env


def pyfile_cli(*args: str, env: Optional[Dict[str, str]] = None, input: Optional[str] = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyfile", *args], capture_output=True,
                          text=True, env=env or run_env(), input=input, timeout=timeout)


def run_file(path, *args: str, shell: Optional[str] = None, env=None, cwd=None,
             input: Optional[str] = None, timeout: float = 180) -> subprocess.CompletedProcess:
    cmd: List[str] = ([shell] if shell else []) + [str(path), *args]
    if shell == "busybox":
        cmd = ["busybox", "sh", str(path), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or run_env(), cwd=cwd,
                          input=input, timeout=timeout,
                          stdin=None if input is not None else subprocess.DEVNULL)


@pytest.fixture
def tiny_gguf(tmp_path) -> Path:
    return Path(write_tiny(str(tmp_path / "tiny.gguf")))


@pytest.fixture(scope="session")
def real_model() -> Path:
    """SmolLM2-135M-Instruct Q4_1 (fetched by `make model`; PYFILE_TEST_MODEL names it)."""
    path = os.environ.get(MODEL_ENV)
    if not path:
        out = subprocess.run([str(ROOT / "scripts" / "fetch-model.sh"), sys.executable],
                             capture_output=True, text=True)
        path = out.stdout.strip()
    if not path or not os.path.isfile(path):
        pytest.fail(f"the real model is missing: run `make model` ({MODEL_ENV} unset)")
    return Path(path)


@pytest.fixture(scope="session")
def smol_pyfile(tmp_path_factory, real_model) -> Path:
    """The real SmolLM2 pyfile, built once per session."""
    out = tmp_path_factory.mktemp("smol") / "smol.pyfile"
    r = pyfile_cli("build", str(real_model), "-o", str(out))
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="session")
def cache_env(tmp_path_factory) -> Dict[str, str]:
    """A run environment with a private cache (probe verdicts, chat history)."""
    return run_env(PYFILE_CACHE_DIR=str(tmp_path_factory.mktemp("cache")))


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed: run `make tools`")
