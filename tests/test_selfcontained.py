"""Self-contained pyfiles: only a Python 3 interpreter on the target (slow: real model)."""

import os
import subprocess
import sys
import threading

import pytest

from conftest import pyfile_cli

pytestmark = pytest.mark.slow
PARIS = ["-p", "The capital of France is", "--temp", "0", "-n", "8"]


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """A bare `python -m venv`: no llama-cpp-python, numpy, click or FastAPI."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-c", "import numpy"], capture_output=True)
    assert r.returncode != 0  # really bare
    return py


def bare_env(py, home, **extra):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "PYFILE_PYTHON": str(py)}
    env.update(extra)
    return env


def run(pyfile, env, *args):
    return subprocess.run([str(pyfile), *(args or PARIS)], capture_output=True, text=True,
                          env=env, timeout=300, stdin=subprocess.DEVNULL)


def test_runs_on_a_bare_python_with_an_empty_home(smol_pyfile, bare_python, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    r = run(smol_pyfile, bare_env(bare_python, home))
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    runtimes = list((home / ".cache" / "pyfile" / "runtime").iterdir())
    assert [p for p in runtimes if p.is_dir()]
    r2 = run(smol_pyfile, bare_env(bare_python, home))  # warm: unpacked already
    assert r2.returncode == 0 and r2.stdout == r.stdout


def test_two_concurrent_first_runs(smol_pyfile, bare_python, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        run(smol_pyfile, bare_env(bare_python, home)))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert all("Paris" in r.stdout for r in results)
    root = home / ".cache" / "pyfile" / "runtime"
    assert len([p for p in root.iterdir() if p.is_dir()]) == 1  # one unpacked copy, no debris


def test_unwritable_cache_falls_back(smol_pyfile, bare_python, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = bare_env(bare_python, tmp_path, XDG_CACHE_HOME="/proc/no-cache-here",
                   TMPDIR=str(tmp))
    r = run(smol_pyfile, env)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    # The runtime's private copy was removed at exit; the carried interpreter the stub
    # unpacked there (its cache was unwritable too) stays for the next run.
    kept = tmp / f"pyfile-{os.getuid()}"
    assert [p for p in tmp.iterdir() if p != kept] == []
    assert [p.name for p in kept.iterdir()] == ["python"]
    assert list((kept / "python").glob("cpython-x86_64-*/bin/python3"))


def test_prune_leaves_a_runtime_in_use_alone(smol_pyfile, bare_python, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    home = tmp_path / "home"
    home.mkdir()
    env = bare_env(bare_python, home)
    child = pexpect.spawn(str(smol_pyfile), ["--temp", "0", "-n", "40"], env=env,
                          encoding="utf-8", timeout=120)
    try:
        child.expect(">>> ")
        cli_env = dict(os.environ, HOME=str(home))
        cli_env.pop("XDG_CACHE_HOME", None)
        cli_env.pop("PYFILE_CACHE_DIR", None)
        listing = pyfile_cli("cache", "list", env=cli_env)
        assert "IN USE" in listing.stdout, listing.stdout
        r = pyfile_cli("cache", "prune", env=cli_env)
        assert r.returncode == 0 and "removed" not in r.stdout
        root = home / ".cache" / "pyfile" / "runtime"
        assert [p for p in root.iterdir() if p.is_dir()]
        child.sendline("What is the capital of France? Answer in one sentence.")
        child.expect("Paris")  # still works after the prune
        child.expect(">>> ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    r = pyfile_cli("cache", "prune", env=cli_env)
    assert "removed runtime" in r.stdout
    assert not [p for p in root.iterdir() if p.is_dir()]
