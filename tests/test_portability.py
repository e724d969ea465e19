"""Files for the target's own Python: one `--python 3.9,...,3.14` file for every CPython,
glibc 2.31+ (slow). (A default file carries its interpreter: tests/test_carried.py.)

Real interpreters (pyenv's), a real older distribution (a Debian 11 root made with
debootstrap, run with chroot), the real engine and the real SmolLM2 model.
"""

import glob
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, pyfile_cli

pytestmark = pytest.mark.slow
PARIS = ["-p", "The capital of France is", "--temp", "0", "-n", "8"]
PYENV = Path.home() / ".pyenv" / "versions"


def pyenv_pythons():
    """pyenv's CPythons from 3.9 up: (version, interpreter)."""
    out = []
    for base in sorted(PYENV.glob("3.*")):
        m = re.match(r"3\.(\d+)\.", base.name)
        if m and int(m.group(1)) >= 9 and (base / "bin" / "python3").exists():
            out.append((f"3.{m.group(1)}", base / "bin" / "python3"))
    return out


def bare_env(python, home, **extra):
    """No venv, an empty HOME, a PATH without pyenv: only the interpreter we point at."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "PYFILE_PYTHON": str(python),
           "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def run(pyfile, env, *args, timeout=300):
    return subprocess.run([str(pyfile), *(args or PARIS)], capture_output=True, text=True,
                          env=env, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def every_python_pyfile(tmp_path_factory, real_model):
    """The real SmolLM2 with runtimes for every supported CPython and no interpreter."""
    out = tmp_path_factory.mktemp("every") / "smol.pyfile"
    r = pyfile_cli("build", str(real_model), "-o", str(out), "--python",
                   "3.9,3.10,3.11,3.12,3.13,3.14", timeout=900)
    assert r.returncode == 0, r.stderr
    return out


def test_machine_has_the_interpreters_this_test_needs():
    """The pyenv interpreters the next test walks over are really there (at least 3.9-3.13)."""
    versions = [v for v, _ in pyenv_pythons()]
    assert {"3.9", "3.10", "3.11", "3.12", "3.13"} <= set(versions), versions


@pytest.mark.parametrize("version,python", pyenv_pythons(), ids=lambda x: str(x))
def test_one_file_answers_on_every_pyenv_python(every_python_pyfile, version, python,
                                                tmp_path):
    """The every-Python file, run by each pyenv CPython with an empty HOME."""
    r = run(every_python_pyfile, bare_env(python, tmp_path))
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    # The run modes print one line on stderr (the backend), llama.cpp's warnings stay quiet.
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyfile: backend cpu"), r.stderr
    unpacked = [p for p in (tmp_path / ".cache" / "pyfile" / "runtime").iterdir() if p.is_dir()]
    assert len(unpacked) == 1
    pycache = glob.glob(str(unpacked[0] / "llama_cpp" / "__pycache__" /
                            f"llama.cpython-{version.replace('.', '')}.pyc"))
    assert pycache, "the runtime was compiled for this interpreter when it was unpacked"


def test_manifest_lists_every_supported_python(every_python_pyfile):
    r = pyfile_cli("inspect", str(every_python_pyfile))
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("runtime"))
    assert "CPython 3.9, 3.10, 3.11, 3.12, 3.13, 3.14 on x86_64 Linux" in line
    glibc = re.search(r"glibc (\d+)\.(\d+) or newer", line)
    assert glibc and (int(glibc.group(1)), int(glibc.group(2))) <= (2, 31), line


def glibc_needs(path, tmp_path):
    """The newest GLIBC symbol version each shared library in the pyfile ``path`` needs
    (objdump -T), by where it is: ``runtime:<path>`` for the runtime bundle's libraries
    (every Python's), the member name for the GPU variants' (None: no GLIBC symbol)."""
    from pyfile.runtime.container import versions
    if shutil.which("objdump") is None:
        pytest.fail("objdump is not installed (binutils)")
    lib = tmp_path / "lib.so"

    def newest(data):
        lib.write_bytes(data)
        out = subprocess.run(["objdump", "-T", str(lib)], capture_output=True, text=True,
                             check=True).stdout
        found = [versions.parse(v) for v in re.findall(r"GLIBC_(\d+\.\d+(?:\.\d+)?)", out)]
        return max(found) if found else None

    needs = {}
    with zipfile.ZipFile(path) as outer:
        manifest = json.loads(outer.read(".pyfile/manifest.json"))
        for record in manifest["variants"].values():
            if record.get("requires", {}).get("compile"):
                continue  # sources (ROCm), compiled on the target
            for member in record["members"]:
                needs[member] = newest(outer.read(member))
        (tmp_path / "rt.zip").write_bytes(outer.read(".pyfile/runtime.zip"))
    with zipfile.ZipFile(tmp_path / "rt.zip") as zf:
        index = json.loads(zf.read(".pyfile-runtime.json"))
        shas = {sha: rel for t in index["targets"].values() for rel, sha in t["files"].items()
                if re.search(r"\.so(\.\d+)*$", rel)}
        packed = set(index.get("xz", []))
        for sha, rel in shas.items():
            needs["runtime:" + rel] = newest(lzma.decompress(zf.read(f"o/{sha}.xz"))
                                             if sha in packed else zf.read("o/" + sha))
    return needs


def test_no_library_the_file_carries_needs_glibc_newer_than_2_31(every_python_pyfile,
                                                                  tmp_path):
    """objdump over every shared library the file carries: the runtime's, for every Python,
    and each GPU variant's (the Vulkan one, which `make setup` builds, and the CUDA one
    when `make gpu` built it)."""
    needs = glibc_needs(every_python_pyfile, tmp_path)
    runtime = [k for k in needs if k.startswith("runtime:")]
    variants = [k for k in needs if not k.startswith("runtime:")]
    from pyfile.variants import variants_dir
    assert len(runtime) > 20  # the engine, 14 CPU variants, numpy, pydantic-core ... 6 Pythons
    for kind, lib in (("vulkan", "libggml-vulkan.so"), ("cuda", "libggml-cuda.so")):
        if os.path.isdir(os.path.join(variants_dir(), kind)):  # published: packed by default
            assert needs.get(f".pyfile/variants/{kind}/{lib}"), variants
    too_new = {k: v for k, v in needs.items() if v is not None and v > (2, 31)}
    assert not too_new, too_new
    assert any(v for k, v in needs.items() if k.startswith("runtime:llama_cpp/lib/libllama"))


@pytest.fixture(scope="session")
def debian11_root():
    """A minimal Debian 11 root (python3.9, glibc 2.31), made once and cached."""
    if os.geteuid() != 0:
        pytest.fail("the Debian 11 test needs root (debootstrap and chroot)")
    r = subprocess.run([str(ROOT / "scripts" / "debian11-root.sh")], capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip())


def test_runs_inside_debian_11(smol_pyfile, debian11_root):
    """Debian 11's own python3.9 and glibc 2.31, nothing else installed."""
    root = debian11_root
    ver = subprocess.run(["chroot", str(root), "/usr/bin/python3", "-c",
                          "import platform, sys; print(sys.version_info[:2], "
                          "platform.libc_ver())"], capture_output=True, text=True)
    assert "(3, 9)" in ver.stdout and "2.31" in ver.stdout, ver.stdout + ver.stderr
    home = root / "root"
    target = home / "smol.pyfile"
    shutil.copy(smol_pyfile, target)
    for stale in (home / ".cache",):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        r = subprocess.run(["chroot", str(root), "/usr/bin/env", "-i", "HOME=/root",
                            "PATH=/usr/bin:/bin", "/bin/sh", "-c",
                            "cd /root && ./smol.pyfile " + " ".join(
                                f"'{a}'" for a in PARIS)],
                           capture_output=True, text=True, timeout=600)
    finally:
        target.unlink()
        shutil.rmtree(home / ".cache", ignore_errors=True)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "backend cpu" in r.stderr


def test_narrowed_python_set_names_the_versions_that_work(real_model, tmp_path):
    """--python 3.10,3.12: a smaller file; 3.11 gets one line naming 3.10 and 3.12."""
    out = tmp_path / "two.pyfile"
    r = pyfile_cli("build", str(real_model), "-o", str(out), "--python", "3.12,3.10",
                   timeout=900)
    assert r.returncode == 0, r.stderr
    info = pyfile_cli("inspect", str(out)).stdout
    assert "runtime         CPython 3.10, 3.12 on x86_64 Linux" in info
    pys = dict(pyenv_pythons())
    r = run(out, bare_env(pys["3.11"], tmp_path))
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("\n") == 1
    assert "this pyfile runs on CPython 3.10, 3.12, and this is cpython 3.11" in r.stderr
    r = run(out, bare_env(pys["3.12"], tmp_path))
    assert r.returncode == 0 and "Paris" in r.stdout, r.stderr


def test_unsupported_python_is_a_usage_error(real_model, tmp_path):
    r = pyfile_cli("build", str(real_model), "-o", str(tmp_path / "x.pyfile"),
                   "--python", "3.8")
    assert r.returncode == 2
    assert r.stderr.strip() == ("pyfile: --python 3.8: 3.8 is not one of "
                                "3.9, 3.10, 3.11, 3.12, 3.13, 3.14")
    assert not (tmp_path / "x.pyfile").exists()


def _engine_wheel():
    from pyfile import engines
    wheels = engines.cached_wheels()
    if not wheels:
        pytest.fail("no portable engine in the build cache: run `make setup`")
    return wheels[0]


def _rewrite_wheel(src, dest, drop=None, add=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            if drop and re.search(drop, item.filename):
                continue
            zout.writestr(item, zin.read(item))
        for name, data in (add or {}).items():
            zout.writestr(name, data)


def test_build_refuses_an_engine_without_cpu_variants(real_model, tmp_path):
    """A native build (one libggml-cpu.so, no variants) is refused in one line, exit 1."""
    native = tmp_path / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
    _rewrite_wheel(_engine_wheel(), native, drop=r"libggml-cpu-[a-z0-9_]+\.so$")
    out = tmp_path / "m.pyfile"
    r = pyfile_cli("build", str(real_model), "-o", str(out), "--engine", str(native))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1
    assert "refusing to pack the engine" in r.stderr and "without CPU variants" in r.stderr
    assert "pyfile engine build" in r.stderr
    assert not out.exists()


def test_build_refuses_an_engine_that_needs_a_newer_glibc(real_model, tmp_path):
    """A library compiled here by gcc against glibc 2.36 (pthread_create@GLIBC_2.34)."""
    src = tmp_path / "t.c"
    src.write_text("#include <pthread.h>\nstatic void *f(void *a) { return a; }\n"
                   "int start(void) { pthread_t t; return pthread_create(&t, 0, f, 0); }\n")
    lib = tmp_path / "libnew.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    wheel = tmp_path / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
    _rewrite_wheel(_engine_wheel(), wheel, add={"llama_cpp/lib/libnew.so": lib.read_bytes()})
    out = tmp_path / "m.pyfile"
    r = pyfile_cli("build", str(real_model), "-o", str(out), "--engine", str(wheel))
    assert r.returncode == 1
    assert "libnew.so needs GLIBC_2.34, newer than glibc 2.31 of Debian 11" in r.stderr
    assert not out.exists()
    r = pyfile_cli("build", str(real_model), "-o", str(out), "--engine", str(wheel),
                   "--allow-unportable-engine", "--python", "3.11", timeout=900)
    assert r.returncode == 0, r.stderr
    assert out.exists()


def test_offline_build_from_a_wheel_folder(real_model, tmp_path):
    """--wheels DIR with an empty build cache: pip never reaches the index (--no-index)."""
    from pyfile import wheels as w
    folder = tmp_path / "wheels"
    shutil.copytree(w.fetch("3.12"), folder)
    env = dict(os.environ, PYFILE_BUILD_CACHE=str(tmp_path / "empty-cache"),
               PIP_INDEX_URL="http://127.0.0.1:9/nothing-here")
    out = tmp_path / "offline.pyfile"
    r = pyfile_cli("build", str(real_model), "-o", str(out), "--python", "3.12", "--wheels",
                   str(folder), "--engine", _engine_wheel(), env=env, timeout=900)
    assert r.returncode == 0, r.stderr
    r = run(out, bare_env(dict(pyenv_pythons())["3.12"], tmp_path))
    assert r.returncode == 0 and "Paris" in r.stdout, r.stderr


def test_pip_install_from_a_checkout_then_build(real_model, tmp_path):
    """A Python user's path: a fresh venv, `pip install .` (no engine compile), pyfile build."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "--quiet", str(ROOT)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    has_engine = subprocess.run([str(py), "-c", "import llama_cpp"], capture_output=True)
    assert has_engine.returncode != 0, "pip install . must not compile a native engine"
    # The portable engine comes from `pyfile engine build` (cached: `make setup` ran it).
    r = subprocess.run([str(venv / "bin" / "pyfile"), "engine", "build"], capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(".whl")
    r = subprocess.run([str(venv / "bin" / "pyfile"), "engine", "check"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "portable" in r.stdout, r.stderr
    out = tmp_path / "m.pyfile"
    r = subprocess.run([str(venv / "bin" / "pyfile"), "build", str(real_model), "-o",
                        str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    r = run(out, bare_env(dict(pyenv_pythons())["3.10"], tmp_path))
    assert r.returncode == 0 and "Paris" in r.stdout, r.stderr


def test_llama_cpp_warnings_stay_quiet_without_v(smol_pyfile, tmp_path):
    """-c 16384 > the model's 8192: llama.cpp warns; only -v shows it."""
    py = dict(pyenv_pythons())["3.11"]
    args = ["--chat", "-p", "Hi", "-n", "4", "--temp", "0", "-c", "16384"]
    r = run(smol_pyfile, bare_env(py, tmp_path), *args)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines() == [next(iter(r.stderr.splitlines()))]
    assert r.stderr.startswith("pyfile: backend cpu")
    r = run(smol_pyfile, bare_env(py, tmp_path), *args, "-v")
    assert r.returncode == 0 and "n_ctx_seq (16384) > n_ctx_train (8192)" in r.stderr
