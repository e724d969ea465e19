"""End-to-end runs of the real SmolLM2 pyfile (slow: they load the real model)."""

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, need, pyfile_cli, run_env, run_file

pytestmark = pytest.mark.slow
PARIS = ["-p", "The capital of France is", "--temp", "0", "-n", "8"]


def backend_variant(stderr: str) -> str:
    m = re.search(r"backend cpu \((\S+) variant", stderr)
    assert m, stderr
    return m.group(1)


def raw(model, variant, prompt, n, *extra):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "raw_engine.py"), str(model),
                        variant, prompt, str(n), *extra], capture_output=True, text=True,
                       env=run_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("shell", [None, "sh", "dash", "bash", "zsh", "busybox"])
def test_paris_in_every_shell(smol_pyfile, cache_env, shell):
    if shell:
        need(shell if shell != "busybox" else "busybox")
    r = run_file(smol_pyfile, *PARIS, shell=shell, env=cache_env)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyfile: backend cpu ("), r.stderr


def test_greedy_output_equals_raw_engine(smol_pyfile, real_model, cache_env):
    prompts = ["The capital of France is", "def fibonacci(n):",
               "Once upon a time, in a small village,"]
    for prompt in prompts:
        r = run_file(smol_pyfile, "-p", prompt, "--temp", "0", "-n", "32", env=cache_env)
        assert r.returncode == 0, r.stderr
        assert r.stdout == raw(real_model, backend_variant(r.stderr), prompt, 32), prompt


def test_chat_prompt_equals_raw_engine_chat(smol_pyfile, real_model, cache_env):
    q = "What is the capital of France? Answer in one sentence."
    r = run_file(smol_pyfile, "--chat", "-p", q, "--temp", "0", "-n", "24", env=cache_env)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert r.stdout == raw(real_model, backend_variant(r.stderr), q, 24, "--chat")


def test_stdin_prompt_and_echo(smol_pyfile, cache_env):
    r = run_file(smol_pyfile, "-f", "-", "--temp", "0", "-n", "8", "--echo",
                 input="The capital of France is", env=cache_env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("The capital of France is") and "Paris" in r.stdout


def test_grammar_and_stop(smol_pyfile, cache_env):
    r = run_file(smol_pyfile, "-p", "Is Paris in France? Answer:", "--temp", "0", "-n", "4",
                 "--grammar", 'root ::= " yes" | " no"', env=cache_env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() in ("yes", "no")
    r = run_file(smol_pyfile, *PARIS[:-1], "32", "--stop", ".", env=cache_env)
    assert r.stdout == " Paris", r.stdout


def test_baked_args_and_command_line_precedence(tmp_path, real_model, cache_env):
    out = tmp_path / "baked.pyfile"
    r = pyfile_cli("build", str(real_model), "-o", str(out),
                   "--args", "--temp 0 -n 3 -p 'The capital of France is'")
    assert r.returncode == 0, r.stderr
    baked = run_file(out, env=cache_env)
    assert baked.returncode == 0 and "Paris" in baked.stdout
    longer = run_file(out, "-n", "8", env=cache_env)
    assert longer.stdout.startswith(baked.stdout) and len(longer.stdout) > len(baked.stdout)


def test_weights_are_mapped_in_place_not_extracted(smol_pyfile, real_model, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = run_env(TMPDIR=str(tmp), PYFILE_CACHE_DIR=str(tmp_path / "cache"))
    child = pexpect.spawn(str(smol_pyfile), ["--chat"], env=env, encoding="utf-8", timeout=120)
    try:
        child.expect(">>> ")
        maps = Path(f"/proc/{child.pid}/maps").read_text().splitlines()
        mapped = 0
        for line in maps:
            if line.endswith(str(smol_pyfile)):
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                mapped += hi - lo
        model_size = real_model.stat().st_size
        assert mapped >= 0.9 * model_size, (mapped, model_size)
        files = [f for f in tmp_path.rglob("*") if f.is_file() and not f.is_symlink()]
        for f in files:  # the runtime was unpacked into the cache, but never the weights
            with open(f, "rb") as fh:
                assert fh.read(4) != b"GGUF", f
        outside = sum(f.stat().st_size for f in files  # (the runtime and the carried
                      if "runtime" not in f.parts and "python" not in f.parts)  # interpreter)
        assert outside < 1 << 20, outside
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


def test_chat_in_a_terminal(smol_pyfile, cache_env):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(str(smol_pyfile), ["--temp", "0", "-n", "400"], env=cache_env,
                          encoding="utf-8", timeout=120)
    try:
        child.expect(">>> ")  # no prompt + a terminal = chat
        child.sendline("What is the capital of France? Answer in one sentence.")
        child.expect("Paris")
        child.expect(">>> ")
        child.sendline("Write a long story about a dragon who learns to cook.")
        child.expect(r"\w+ \w+ \w+")  # the answer is streaming
        child.sendintr()
        child.expect(r"\[stopped\]")
        child.expect(">>> ")
        child.sendline("/clear")
        child.expect(">>> ")
        child.sendeof()
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        child.close(force=True)


def test_model_selection(tmp_path, smol_pyfile, real_model, cache_env):
    r = run_file(smol_pyfile, "-m", str(real_model), *PARIS, env=cache_env)
    assert r.returncode == 0 and "Paris" in r.stdout
    other = tmp_path / "other.pyfile"
    other.write_bytes(smol_pyfile.read_bytes())
    r = run_file(smol_pyfile, "-m", str(other), *PARIS, env=cache_env)
    assert r.returncode == 0 and "Paris" in r.stdout
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(real_model.read_bytes())
    assert pyfile_cli("add", str(other), str(copy)).returncode == 0
    other.chmod(0o755)
    r = run_file(other, "-m", "copy.gguf", *PARIS, env=cache_env)
    assert r.returncode == 0 and "Paris" in r.stdout
    r = run_file(other, "-m", "nope.gguf", *PARIS, env=cache_env)
    assert r.returncode == 1 and "copy.gguf" in r.stderr


def test_damaged_model_data(tmp_path, smol_pyfile, cache_env):
    bad = tmp_path / "bad.pyfile"
    data = bytearray(smol_pyfile.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the weights
    bad.write_bytes(bytes(data))
    bad.chmod(0o755)
    r = run_file(bad, "--verify", *PARIS, env=cache_env)
    assert r.returncode == 1 and "verification failed" in r.stderr and "mismatch" in r.stderr
    cut = tmp_path / "cut.pyfile"
    cut.write_bytes(smol_pyfile.read_bytes()[: len(data) - 5000])
    cut.chmod(0o755)
    r = run_file(cut, *PARIS, env=cache_env)
    assert r.returncode == 1 and "damaged or truncated" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_prompt_longer_than_context(smol_pyfile, cache_env):
    r = run_file(smol_pyfile, "-c", "256", "-p", "word " * 300, "-n", "4", env=cache_env)
    assert r.returncode == 2 and "raise -c/--ctx-size" in r.stderr


def test_gpu_request_without_gpu_fails_cleanly(smol_pyfile, cache_env):
    """``--gpu nvidia`` with no usable NVIDIA GPU: exit 1 and one line saying why. Where this
    machine has one, CUDA_VISIBLE_DEVICES="" hides it (decided from the hardware found)."""
    from pyfile.runtime.backend import hardware
    env = dict(cache_env)
    if hardware.find_nvidia(env=env).present:
        env["CUDA_VISIBLE_DEVICES"] = ""
    why = hardware.find_nvidia(env=env).problem
    assert why == ("CUDA_VISIBLE_DEVICES hides every NVIDIA GPU" if "CUDA_VISIBLE_DEVICES"
                   in env else "no NVIDIA GPU found")
    r = run_file(smol_pyfile, "--gpu", "nvidia", *PARIS, env=env)
    assert (r.returncode, r.stderr, r.stdout) == (1, f"pyfile: --gpu nvidia: {why}\n", "")


def test_broken_pipe_is_quiet(smol_pyfile, cache_env):
    """The reader goes away after 5 bytes (as ``| head -c 5`` does): pyfile stops with exit
    status 1 (README: 1 for anything but usage errors) and its stderr holds only the backend
    line: no traceback, no "Exception ignored ... BrokenPipeError" at exit."""
    p = subprocess.Popen([str(smol_pyfile), "-p", "Once upon a time", "-n", "300"],
                         env=cache_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL)
    assert len(p.stdout.read(5)) == 5
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyfile: backend "), err


def test_sigterm_exits(smol_pyfile, cache_env):
    """SIGTERM mid-generation: exit status 143 (README: Running), the text so far flushed."""
    p = subprocess.Popen([str(smol_pyfile), "-p", "Once upon a time", "-n", "100000",
                          "--temp", "1"], env=cache_env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    first = p.stdout.read(20)  # generation is under way
    assert len(first) == 20
    p.send_signal(signal.SIGTERM)
    rest, err = p.communicate(timeout=30)
    assert p.returncode == 143, err
    assert b"Traceback" not in err and len(err.strip().splitlines()) == 1, err  # backend line


def test_other_engine_version_refused(tmp_path, tiny_gguf):
    """The real engine, relabelled 0.3.35, on the import path: one line, exit 1, before
    pyfile touches llama-cpp-python's internals."""
    import llama_cpp
    pkg = Path(llama_cpp.__file__).parent
    fake = tmp_path / "site" / "llama_cpp"
    fake.mkdir(parents=True)
    for item in pkg.iterdir():
        if item.name == "__init__.py":
            text = item.read_text()
            assert '__version__ = "0.3.36"' in text
            (fake / item.name).write_text(text.replace('__version__ = "0.3.36"',
                                                       '__version__ = "0.3.35"'))
        elif item.name != "__pycache__":
            (fake / item.name).symlink_to(item)
    slim = tmp_path / "slim.pyfile"
    r = pyfile_cli("build", str(tiny_gguf), "-o", str(slim), "--slim")
    assert r.returncode == 0, r.stderr
    r = run_file(slim, "-p", "Hi", "-n", "1", env=run_env(PYTHONPATH=str(tmp_path / "site")))
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "llama-cpp-python 0.3.35 is installed" in r.stderr
    assert "runs only with 0.3.36" in r.stderr and "pip install llama-cpp-python==0.3.36" \
        in r.stderr
