"""The sh stub and the bootstrap, in real shells, without loading the engine (--help/--version)."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import need, pyfile_cli, run_env, run_file

SHELLS = ["sh", "dash", "bash", "zsh", "busybox"]


@pytest.fixture
def tiny_pyfile(tmp_path, tiny_gguf):
    out = tmp_path / "tiny.pyfile"
    r = pyfile_cli("build", str(tiny_gguf), "-o", str(out))
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture
def searching_pyfile(tmp_path, tiny_gguf):
    """A file that carries no interpreter (--slim): its stub looks for a Python on PATH."""
    out = tmp_path / "slim.pyfile"
    r = pyfile_cli("build", str(tiny_gguf), "-o", str(out), "--slim")
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize("shell", SHELLS)
def test_each_shell_runs_it(tiny_pyfile, shell):
    need(shell)
    r = run_file(tiny_pyfile, "--version", shell=shell)
    assert r.returncode == 0, r.stderr
    assert "pyfile 0.1.0" in r.stdout and "tiny.gguf" in r.stdout


def test_direct_exec_help_lists_flags(tiny_pyfile):
    r = run_file(tiny_pyfile, "--help")
    assert r.returncode == 0, r.stderr
    for flag in ("--prompt", "--chat", "--server", "--n-gpu-layers", "--gpu", "--json-schema"):
        assert flag in r.stdout


def test_symlink_spaces_path_and_cwd(tmp_path, tiny_pyfile):
    spaced = tmp_path / "dir with spaces"
    spaced.mkdir()
    target = spaced / "my model.pyfile"
    shutil.copy2(tiny_pyfile, target)
    link = tmp_path / "link.pyfile"
    link.symlink_to(target)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for path in (target, link):
        r = run_file(path, "--version", cwd=str(elsewhere))
        assert r.returncode == 0, r.stderr
    r = subprocess.run(["sh", "my model.pyfile", "--version"], cwd=str(spaced),
                       capture_output=True, text=True, env=run_env())
    assert r.returncode == 0, r.stderr
    env = run_env()
    env["PATH"] = f"{spaced}{os.pathsep}{env['PATH']}"
    r = subprocess.run(["my model.pyfile", "--version"], cwd=str(elsewhere),
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr


def test_python_zipimport_path(tiny_pyfile):
    r = subprocess.run([sys.executable, str(tiny_pyfile), "--version"], capture_output=True,
                       text=True, env=run_env())
    assert r.returncode == 0, r.stderr
    assert "tiny.gguf" in r.stdout


def test_sourcing_is_refused_without_killing_the_shell(tmp_path, tiny_pyfile):
    for shell in ("bash", "dash", "zsh"):
        need(shell)
        r = subprocess.run([shell, "-c", f". '{tiny_pyfile}'; echo survived=$?"],
                           capture_output=True, text=True, env=run_env(), cwd=str(tmp_path))
        # bash refuses to source a file with NUL bytes itself; dash and zsh reach our stub.
        assert "survived=" in r.stdout and "survived=0" not in r.stdout, (shell, r.stdout)
        assert "cannot be sourced" in r.stderr or "binary file" in r.stderr, r.stderr
        assert "syntax error" not in r.stderr.lower() and "parse error" not in r.stderr


def test_piping_into_a_shell_is_refused(tmp_path, tiny_pyfile):
    r = subprocess.run(["sh"], stdin=open(tiny_pyfile, "rb"), capture_output=True,
                       env=run_env(), cwd=str(tmp_path))
    assert r.returncode == 2
    assert b"cannot be sourced or piped" in r.stderr
    assert b"syntax error" not in r.stderr.lower()


def test_no_python_found(tmp_path, searching_pyfile):
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}
    r = subprocess.run(["/bin/sh", str(searching_pyfile), "--version"], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 127
    assert "no Python 3.9 or newer found" in r.stderr and "PYFILE_PYTHON" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_pyfile_python_override(tmp_path, tiny_pyfile):
    r = run_file(tiny_pyfile, "--version", env=run_env(PYFILE_PYTHON=sys.executable))
    assert r.returncode == 0, r.stderr
    r = run_file(tiny_pyfile, "--version", env=run_env(PYFILE_PYTHON="/nonexistent/python"))
    assert r.returncode == 127 and "PYFILE_PYTHON" in r.stderr


def test_too_old_python_is_skipped(tmp_path, searching_pyfile):
    fake = tmp_path / "bin"
    fake.mkdir()
    old = fake / "python3"
    old.write_text("#!/bin/sh\nexit 1\n")  # answers the version check with "too old"
    old.chmod(0o755)
    env = {"PATH": str(fake), "HOME": str(tmp_path)}
    r = subprocess.run(["/bin/sh", str(searching_pyfile), "--version"], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 127 and "tried: python3" in r.stderr, r.stderr


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.999])
def test_truncated_pyfile_is_reported(tmp_path, tiny_pyfile, cut):
    data = tiny_pyfile.read_bytes()
    bad = tmp_path / "bad.pyfile"
    bad.write_bytes(data[:int(len(data) * cut)])
    bad.chmod(0o755)
    r = run_file(bad, "--version")
    assert r.returncode == 1
    assert "damaged or truncated" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_usage_errors_exit_2(tiny_pyfile):
    for args in (["--bogus"], ["-n", "x"], ["--gpu", "tpu"], ["-p", "a", "-f", "b"]):
        r = run_file(tiny_pyfile, *args)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_baked_args_expanded_before_mode_and_user_flags_win(tmp_path, tiny_gguf):
    out = tmp_path / "a.pyfile"
    r = pyfile_cli("build", str(tiny_gguf), "-o", str(out), "--args", "--version ...")
    assert r.returncode == 0
    r = run_file(out)
    assert r.returncode == 0 and "pyfile 0.1.0" in r.stdout  # baked mode flag honoured
    r = run_file(out, "--gpu", "tpu")
    assert r.returncode == 2  # user flags are parsed after the baked ones


COUNT_COMPILES = """import atexit, builtins, sys
_real, _n = builtins.compile, [0]
def _counting(*a, **k):
    _n[0] += 1
    return _real(*a, **k)
builtins.compile = _counting
atexit.register(lambda: sys.stderr.write("compiles=%d\\n" % _n[0]))
"""


@pytest.mark.parametrize("stale", [False, True])
def test_bytecode_used_only_when_it_matches(tmp_path, tiny_gguf, monkeypatch, stale):
    """The runtime's modules carry bytecode for the build's Python: the bootstrap compiles
    nothing then. Bytecode whose source hash does not match its module (as for another
    Python, whose magic number differs) is ignored and the source compiled."""
    from pyfile import builder, stub
    monkeypatch.setenv("PYFILE_BUILD_CACHE", str(tmp_path / "cache"))  # bytecode made afresh
    if stale:
        made = stub.bytecode
        monkeypatch.setattr(stub, "bytecode", lambda files: [
            (name, pyc[:8] + bytes(8) + pyc[16:]) for name, pyc in made(files)])
    out = tmp_path / "slim.pyfile"
    builder.build(str(tiny_gguf), str(out), runtime=builder.RuntimeOptions(slim=True))
    r = subprocess.run([sys.executable, "-c", COUNT_COMPILES + stub.bootstrap_source(),
                        str(out), "--help"], capture_output=True, text=True, env=run_env())
    assert r.returncode == 0, r.stderr
    assert "--prompt" in r.stdout
    compiles = int(r.stderr.rsplit("compiles=", 1)[1])
    assert compiles >= 4 if stale else compiles == 0  # pyfile, runtime, main, options...
