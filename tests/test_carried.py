"""A default file needs nothing but Linux: it carries CPython for x86-64 and aarch64 (slow).

The real interpreters `pyfile python build` made, the real engines (x86-64 and the
cross-compiled aarch64 one), the real SmolLM2 model; Debian 11 roots made with debootstrap
(one without any Python, one with python3.9, one arm64 run through qemu-user and binfmt).
"""

import concurrent.futures
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, pyfile_cli

sys.path.insert(0, str(ROOT / "src"))
from pyfile import carried, stub  # noqa: E402
from pyfile.runtime.container.archive import Archive  # noqa: E402

pytestmark = pytest.mark.slow
PARIS = ["-p", "The capital of France is", "--temp", "0", "-n", "8"]
#: What the stub may use: POSIX sh and the tools every Linux has (coreutils/busybox, gzip,
#: tar, util-linux's flock). No Python among them.
STUB_TOOLS = ("sh", "uname", "id", "mkdir", "mktemp", "dd", "head", "tail", "sha256sum", "gzip",
              "tar", "rm", "flock", "getconf", "printf", "cat")


def debian_root(arch="amd64", flavour="python"):
    r = subprocess.run([str(ROOT / "scripts" / "debian11-root.sh"), arch, flavour],
                       capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip())


def in_root(root, pyfile, *cmd, timeout=600):
    """Run ``cmd`` (with the file as ./m.pyfile) in ``root`` with an empty cache."""
    home = root / "root"
    target = home / "m.pyfile"
    if not target.exists() or target.stat().st_size != pyfile.stat().st_size:
        shutil.copyfile(pyfile, target)
        os.chmod(target, 0o755)
    shutil.rmtree(home / ".cache", ignore_errors=True)
    script = "cd /root && " + " ".join(f"'{c}'" for c in cmd)
    return subprocess.run(["chroot", str(root), "/usr/bin/env", "-i", "HOME=/root",
                           "PATH=/usr/bin:/bin", "LANG=C.UTF-8", "/bin/sh", "-c", script],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def x86_pyfile(tmp_path_factory, real_model):
    """The real SmolLM2 built with --arch x86_64: this machine's interpreter only."""
    assert carried.cached("x86_64"), "no x86_64 interpreter: run `make setup`"
    out = tmp_path_factory.mktemp("x86") / "smol.pyfile"
    r = pyfile_cli("build", str(real_model), "-o", str(out), "--arch", "x86_64", timeout=900)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="session")
def carried_pyfile(tmp_path_factory, real_model):
    """The real SmolLM2 built with no flags: both interpreters, both engines."""
    for arch in carried.ARCHES:
        assert carried.cached(arch), f"no {arch} interpreter: run `make setup`"
    out = tmp_path_factory.mktemp("carried") / "smol.pyfile"
    r = pyfile_cli("build", str(real_model), "-o", str(out), timeout=900)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="session")
def tools_only_path(tmp_path_factory):
    """A PATH holding the stub's tools and nothing else (no python anywhere on it)."""
    d = tmp_path_factory.mktemp("bin")
    for tool in STUB_TOOLS:
        found = shutil.which(tool)
        assert found, tool
        os.symlink(found, d / tool)
    return str(d)


def bare_env(home, path, **extra):
    env = {"HOME": str(home), "PATH": path, "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def run(pyfile, env, *args, timeout=600):
    return subprocess.run([str(pyfile), *(args or PARIS)], capture_output=True, text=True,
                          env=env, timeout=timeout, stdin=subprocess.DEVNULL)


def interpreter_members(path):
    with Archive.open(str(path)) as arch:
        names = arch.manifest.names("interpreter")
        return {n: arch.member(n) for n in names}, arch.manifest


def test_default_file_carries_both_interpreters_and_the_stub_knows_where(carried_pyfile):
    members, manifest = interpreter_members(carried_pyfile)
    assert sorted(members) == [".pyfile/python/cpython-aarch64.tar.gz",
                               ".pyfile/python/cpython-x86_64.tar.gz",
                               ".pyfile/python/stdlib.tar.gz"]
    head = carried_pyfile.read_bytes()[:len(stub.render())]
    at = stub.carried_offset(head)
    table = head[at:at + stub.CARRIED_WIDTH].decode()
    for name, m in members.items():
        machine = name.split("-")[-1][:-len(".tar.gz")] if "cpython-" in name else "any"
        record = manifest.entry(name)
        assert f" {machine}:{m.offset}:{m.size}:{record['sha256']}" in table
        assert m.offset % 65536 == 0 and m.stored
    machines = sorted(r["machine"] for r in manifest.runtimes)
    assert machines == ["aarch64", "x86_64"]
    assert {r["python"] for r in manifest.runtimes} == {carried.PYTHON_MINOR}


def test_the_stub_knows_where_its_interpreter_is(x86_pyfile):
    members, manifest = interpreter_members(x86_pyfile)
    assert sorted(members) == [".pyfile/python/cpython-x86_64.tar.gz",
                               ".pyfile/python/stdlib.tar.gz"]
    head = x86_pyfile.read_bytes()[:len(stub.render())]
    table = head[stub.carried_offset(head):][:stub.CARRIED_WIDTH].decode().split()
    expect = []
    for name, machine in ((".pyfile/python/cpython-x86_64.tar.gz", "x86_64"),
                          (".pyfile/python/stdlib.tar.gz", "any")):
        m = members[name]
        sha = manifest.entry(name)["sha256"]
        expect.append(f"{machine}:{m.offset}:{m.size}:{sha}")
        assert m.offset % 65536 == 0 and m.stored
    assert table == expect
    assert table[0].endswith(carried.cached("x86_64").sha256)
    assert [(r["machine"], r["python"]) for r in manifest.runtimes] == [("x86_64", "3.13")]


def test_answers_on_the_host_with_no_python_on_path(x86_pyfile, tools_only_path, tmp_path):
    r = run(x86_pyfile, bare_env(tmp_path, tools_only_path))
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    unpacked = list((tmp_path / ".cache" / "pyfile" / "python").glob("cpython-x86_64-*"))
    assert len(unpacked) == 1 and (unpacked[0] / "bin" / "python3").is_file()
    # A second run goes straight to it: nothing unpacked again.
    before = unpacked[0].stat().st_ino
    r = run(x86_pyfile, bare_env(tmp_path, tools_only_path))
    assert r.returncode == 0 and "Paris" in r.stdout, r.stderr
    assert unpacked[0].stat().st_ino == before


def test_answers_in_debian11_without_python(x86_pyfile):
    root = debian_root("amd64", "nopython")
    assert not list((root / "usr" / "bin").glob("python*"))
    r = in_root(root, x86_pyfile, "./m.pyfile", *PARIS)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_answers_in_debian11_with_its_python39_both_ways(x86_pyfile):
    root = debian_root("amd64", "python")
    r = in_root(root, x86_pyfile, "./m.pyfile", *PARIS)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    # python3.9 m.pyfile: the runtime is for 3.13, so the file hands over to its own.
    r = in_root(root, x86_pyfile, "python3", "m.pyfile", *PARIS)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_answers_in_debian11_arm64_under_qemu(carried_pyfile):
    root = debian_root("arm64", "python")
    assert (root / "lib" / "ld-linux-aarch64.so.1").exists()
    r = in_root(root, carried_pyfile, "./m.pyfile", "-p", "The capital of France is",
                "--temp", "0", "-n", "4", timeout=3000)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "aarch64" in r.stderr or "armv" in r.stderr, r.stderr  # the backend line


def test_narrowed_file_says_what_it_needs_on_another_machine(real_model, tmp_path):
    out = tmp_path / "x86.pyfile"
    r = pyfile_cli("build", str(real_model), "-o", str(out), "--arch", "x86_64",
                   "--no-gpu-variants", timeout=900)
    assert r.returncode == 0, r.stderr
    members, _ = interpreter_members(out)
    assert sorted(members) == [".pyfile/python/cpython-x86_64.tar.gz",
                               ".pyfile/python/stdlib.tar.gz"]
    r = in_root(debian_root("arm64", "python"), out, "./m.pyfile", *PARIS, timeout=300)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1, r.stderr
    assert "needs Linux with glibc 2.28 or newer on x86_64; this machine is Linux aarch64" \
        in r.stderr


def test_four_concurrent_first_runs_all_answer(x86_pyfile, tools_only_path, tmp_path):
    env = bare_env(tmp_path, tools_only_path)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: run(x86_pyfile, env), range(4)))
    for r in results:
        assert r.returncode == 0, r.stderr
        assert "Paris" in r.stdout
    cache = tmp_path / ".cache" / "pyfile" / "python"
    assert len(list(cache.glob("cpython-x86_64-*"))) == 1
    assert not list(cache.glob(".unpack-*")), "a temporary folder was left behind"


def test_damaged_interpreter_gives_one_line(x86_pyfile, tools_only_path, tmp_path):
    bad = tmp_path / "bad.pyfile"
    shutil.copyfile(x86_pyfile, bad)
    os.chmod(bad, 0o755)
    members, _ = interpreter_members(bad)
    m = members[".pyfile/python/cpython-x86_64.tar.gz"]
    with open(bad, "r+b") as f:
        f.seek(m.offset + m.size // 2)
        byte = f.read(1)
        f.seek(m.offset + m.size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    r = run(bad, bare_env(tmp_path, tools_only_path))
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "damaged or truncated pyfile (its interpreter for x86_64 fails its SHA-256 check)" \
        in r.stderr
    assert not list((tmp_path / ".cache" / "pyfile" / "python").glob("cpython-*"))


def test_noexec_cache_falls_back_or_names_the_variable(x86_pyfile, tools_only_path,
                                                       tmp_path):
    home, fallback = tmp_path / "home", tmp_path / "tmp"
    noexec = home / ".cache"
    noexec.mkdir(parents=True)
    fallback.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "noexec,size=64m", "tmpfs",
                              str(noexec)], capture_output=True, text=True)
    assert mounted.returncode == 0, mounted.stderr
    try:
        r = run(x86_pyfile, bare_env(home, tools_only_path, TMPDIR=str(fallback)))
        assert r.returncode == 0, r.stderr
        assert "Paris" in r.stdout
        assert list(fallback.glob(f"pyfile-{os.getuid()}/python/cpython-x86_64-*/bin"))
        r = run(x86_pyfile, bare_env(home, tools_only_path, TMPDIR=str(fallback),
                                         PYFILE_CACHE_DIR=str(noexec / "pyfile")))
        assert r.returncode == 1
        assert r.stderr.count("\n") == 1, r.stderr
        assert "PYFILE_CACHE_DIR" in r.stderr and "noexec" in r.stderr
    finally:
        subprocess.run(["umount", str(noexec)], check=True)


def _elf_files(carried_pyfile, dest):
    """Every ELF file the default file carries (interpreters, runtimes, variants), written
    under ``dest``; machine -> paths."""
    out = {"x86_64": [], "aarch64": []}
    with Archive.open(str(carried_pyfile)) as arch:
        zf = zipfile.ZipFile(str(carried_pyfile))
        for name, m in interpreter_members(carried_pyfile)[0].items():
            if "cpython-" not in name:
                continue  # the shared standard library: bytecode, no ELF file
            machine = name.split("-")[-1][:-len(".tar.gz")]
            tgz = dest / f"{machine}.tar.gz"
            tgz.write_bytes(zf.read(name))
            with tarfile.open(tgz) as tf:
                tf.extractall(dest / machine, filter="data")
            for p in (dest / machine).rglob("*"):
                if p.is_file() and p.read_bytes()[:4] == b"\x7fELF":
                    out[machine].append(p)
        bundle = zipfile.ZipFile(zf.open(".pyfile/runtime.zip"))
        index = json.loads(bundle.read(".pyfile-runtime.json"))
        packed = set(index["xz"])
        for key, target in index["targets"].items():
            machine = "aarch64" if key.endswith("-aarch64") else "x86_64"
            for rel, sha in target["files"].items():
                if ".so" not in rel:
                    continue
                data = bundle.read("o/" + sha + (".xz" if sha in packed else ""))
                data = lzma.decompress(data) if sha in packed else data
                p = dest / f"rt-{machine}" / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
                out[machine].append(p)
        for name in arch.manifest.names("variant"):
            data = zf.read(name)
            if data[:4] != b"\x7fELF":
                continue  # the ROCm sources, compiled on the target
            p = dest / "variants" / name.rsplit("/", 1)[-1]
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            out["x86_64"].append(p)
    return out


def glibc_floor_check(pyfile, machines, tmp_path):
    """objdump -T over every ELF file of ``machines`` in ``pyfile``: nothing newer than 2.28."""
    objdump = shutil.which("objdump")
    assert objdump
    found = _elf_files(pyfile, tmp_path)
    for machine in machines:
        paths = found[machine]
        assert len(paths) > 20, machine  # the interpreter's modules, the engine, numpy...
        newest = (2, 0)
        for p in paths:
            r = subprocess.run([objdump, "-T", str(p)], capture_output=True, text=True)
            assert r.returncode == 0, f"{p}: {r.stderr}"
            for v in re.findall(r"GLIBC_(\d+)\.(\d+)", r.stdout):
                ver = (int(v[0]), int(v[1]))
                assert ver <= (2, 28), f"{p} needs GLIBC_{ver[0]}.{ver[1]}"
                newest = max(newest, ver)
        assert newest >= (2, 17), machine  # the check saw real symbol versions


def test_no_x86_64_library_needs_a_glibc_newer_than_2_28(x86_pyfile, tmp_path):
    glibc_floor_check(x86_pyfile, ["x86_64"], tmp_path)


def test_arch_flag_is_checked_before_writing(tiny_gguf, tmp_path):
    out = tmp_path / "m.pyfile"
    r = pyfile_cli("build", str(tiny_gguf), "-o", str(out), "--arch", "riscv64")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("Error") or "riscv64" in r.stderr
    assert "riscv64 is not one of x86_64, aarch64" in r.stderr
    assert not out.exists()
    r = pyfile_cli("build", str(tiny_gguf), "-o", str(out), "--arch", "x86_64", "--slim")
    assert r.returncode == 2 and "does not go with --slim" in r.stderr
    assert not out.exists()


def test_no_library_of_either_machine_needs_a_glibc_newer_than_2_28(carried_pyfile, tmp_path):
    glibc_floor_check(carried_pyfile, ["x86_64", "aarch64"], tmp_path)
