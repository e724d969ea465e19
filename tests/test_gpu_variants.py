"""The CUDA variant a default file carries, checked without an NVIDIA GPU: what it needs of
the target (readelf), which GPUs it has code for (cuobjdump), that it loads in Debian 11
(glibc 2.31), and that the launcher turns down a driver too old for it or a GPU it has no
code for *before* ggml loads it, with one line saying why (a stand-in ``libcuda.so.1``,
tests/fakecuda/, plays the driver; a simulated ``/proc`` and ``/dev`` tell the launcher an
NVIDIA GPU is there).

The variant is the one ``make gpu`` published; without it, the smallest useful one is built
here once (PTX for compute_75, which the driver compiles for every GPU from Turing on;
~17 min on 2 cores, then cached like the engine).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from conftest import ROOT, pyfile_cli, run_env, run_file
from cudatoolkit import machine_nvcc, toolkit as cuda_toolkit
from pyfile import elf, variants
from pyfile.runtime.container.archive import Archive

pytestmark = pytest.mark.slow
CUOBJDUMP_VERSION = "13.5.37"  # nvidia-cuda-cuobjdump on the package index; needs glibc 2.11
#: What a driver-only CUDA variant may link: the engine's ggml and the C library.
ALLOWED = {"libggml-base.so.0", "libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0",
           "librt.so.1", "ld-linux-x86-64.so.2"}
SAY = ["-p", "Say hi", "-n", "4", "--temp", "0"]


@pytest.fixture(scope="session")
def cuda_dir() -> Path:
    folder = Path(variants.variants_dir()) / "cuda"
    if not (folder / "libggml-cuda.so").is_file():
        r = subprocess.run([str(ROOT / "scripts" / "build-variant.sh"), "cuda"],
                           env={**os.environ, "CUDA_ARCHS": "75-virtual",
                                "PYTHON": sys.executable},
                           capture_output=True, text=True, timeout=5400)
        assert r.returncode == 0, r.stderr[-2000:]
    return folder


@pytest.fixture(scope="session")
def cuda_pyfile(tmp_path_factory, real_model, cuda_dir) -> Path:
    """SmolLM2 built with the CUDA variant only (no Vulkan: the fallback is the CPU)."""
    out = tmp_path_factory.mktemp("cuda") / "smol.pyfile"
    r = pyfile_cli("build", str(real_model), "-o", str(out), "--arch", "x86_64",
                   "--gpu-variants", "cuda", timeout=900)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="session")
def fake_driver(tmp_path_factory) -> Path:
    """tests/fakecuda/libcuda.c built as libcuda.so.1 (a folder for LD_LIBRARY_PATH)."""
    folder = tmp_path_factory.mktemp("fakecuda")
    r = subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(folder / "libcuda.so.1"),
                        str(ROOT / "tests" / "fakecuda" / "libcuda.c")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return folder


@pytest.fixture(scope="session")
def cuobjdump() -> Path:
    """NVIDIA's cuobjdump (its wheel; needs glibc 2.11), installed once into the dev cache."""
    tools = Path(os.path.expanduser("~/.cache/pyfile-dev/tools")) / f"cuobjdump-{CUOBJDUMP_VERSION}"
    tool = tools / "nvidia" / "cu13" / "bin" / "cuobjdump"
    if not tool.exists():
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(tools),
                            f"nvidia-cuda-cuobjdump=={CUOBJDUMP_VERSION}"],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
    return tool


def gpu_code(cuobjdump: Path, lib: Path) -> set:
    """{(arch, "sm" for machine code | "compute" for PTX)} a CUDA library carries."""
    out = subprocess.run([str(cuobjdump), "--list-elf", "--list-ptx", str(lib)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    # cuobjdump names both "NAME.N.sm_XY.cubin" (machine code) and "NAME.N.sm_XY.ptx" (PTX)
    return {(m.group(1), "sm" if m.group(2) == "cubin" else "compute") for m in
            re.finditer(r"\.sm_(\d+[af]?)\.(cubin|ptx)\b", out.stdout)}


def nvidia_machine(root: Path, driver: str = "535.104.05") -> Path:
    """A simulated /proc and /dev with one NVIDIA GPU and its driver loaded."""
    (root / "proc" / "driver" / "nvidia").mkdir(parents=True)
    (root / "proc" / "driver" / "nvidia" / "version").write_text(
        f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {driver}  Thu Jul 1 2025\n")
    (root / "dev").mkdir()
    (root / "dev" / "nvidia0").write_text("")
    return root


def test_cuda_variant_needs_only_the_driver_and_glibc_231(cuda_dir):
    """No CUDA runtime, cuBLAS, libcuda or libstdc++ among its NEEDED libraries (the driver
    is opened by the static runtime when CUDA starts), and no glibc symbol newer than 2.31
    (Debian 11, Ubuntu 20.04): it was compiled in a Debian 11 root."""
    needs = elf.read_file_needs(str(cuda_dir / "libggml-cuda.so"))
    assert set(needs.libraries) <= ALLOWED, needs.libraries
    assert needs.newest("GLIBC") <= (2, 31), elf.version_text(needs.newest("GLIBC"))
    assert needs.newest("GLIBCXX") is None  # libstdc++ is linked in, not needed
    meta = json.loads((cuda_dir / "variant.json").read_text())
    assert meta["needs"] == [] and meta["cuda"] == "13.0" and meta["glibc"] <= "2.31"


def test_cuda_variant_has_code_for_the_architectures_it_names(cuda_dir, cuobjdump):
    """cuobjdump lists exactly the machine code (cubins) and PTX that variant.json names,
    which is what the launcher checks a GPU against."""
    have = gpu_code(cuobjdump, cuda_dir / "libggml-cuda.so")
    meta = json.loads((cuda_dir / "variant.json").read_text())
    want = set()
    for spec in meta["archs"]:
        arch, _, form = spec.partition("-")
        if form in ("", "real"):
            want.add((arch, "sm"))
        if form in ("", "virtual"):
            want.add((arch, "compute"))
    assert have == want, have


def test_default_build_packs_the_cuda_variant(cuda_pyfile, cuda_dir):
    """A build packs the published CUDA variant by default, with what it needs recorded."""
    with Archive.open(str(cuda_pyfile)) as arch:
        spec = arch.manifest.variants["cuda"]
    assert spec["members"] == [".pyfile/variants/cuda/libggml-cuda.so"]
    assert spec["requires"]["cuda"] == "13.0" and spec["requires"]["archs"]


def run_with_driver(pyfile: Path, tmp_path: Path, fake_driver: Path, version: int, cc: int,
                    *args: str, toolkit: Optional[Path] = None, timeout: float = 600):
    """Run the file on a simulated NVIDIA machine (``toolkit``: a CUDA toolkit first on PATH);
    (result, every libggml-cuda.so in its cache, cuInit calls)."""
    cache = tmp_path / "cache"
    log = tmp_path / "driver.log"
    machine = tmp_path / "machine"
    env = run_env(PYFILE_CACHE_DIR=str(cache), PYFILE_HARDWARE_ROOT=str(
        machine if machine.exists() else nvidia_machine(machine)),
        LD_LIBRARY_PATH=str(fake_driver), FAKE_CUDA_VERSION=str(version),
        FAKE_CUDA_CC=str(cc), FAKE_CUDA_LOG=str(log))
    if toolkit is not None:
        env["PATH"] = f"{toolkit / 'bin'}{os.pathsep}{env['PATH']}"
    r = run_file(pyfile, *args, *SAY, env=env, timeout=timeout)
    extracted = list(cache.rglob("libggml-cuda.so"))
    return r, extracted, log.read_text().count("cuInit") if log.exists() else 0


def backend_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("pyfile: backend ")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_driver_too_old_falls_back_before_loading(cuda_pyfile, tmp_path, fake_driver):
    """A driver that supports CUDA 12.2 (535): the launcher asks it (one cuInit, from the
    probe), turns the CUDA 13 variant down in the one backend line, never unpacks it, and the
    answer comes from the CPU."""
    r, extracted, inits = run_with_driver(cuda_pyfile, tmp_path, fake_driver, 12020, 86)
    assert r.returncode == 0, r.stderr
    line = backend_line(r.stderr)
    assert line.startswith("pyfile: backend cpu (")
    assert ("CUDA: the NVIDIA driver 535.104.05 supports CUDA 12.2, the CUDA variant needs "
            "CUDA 13.0 (update the driver to 580 or newer)") in line
    assert extracted == [] and inits == 1
    assert r.stdout.strip()


def test_gpu_without_code_in_the_variant_falls_back_before_loading(cuda_pyfile, tmp_path,
                                                                   fake_driver):
    """A Pascal GPU (sm_61) with a new driver: older than every architecture the variant
    has code for, so it is turned down by name, never unpacked."""
    r, extracted, inits = run_with_driver(cuda_pyfile, tmp_path, fake_driver, 13000, 61)
    assert r.returncode == 0, r.stderr
    line = backend_line(r.stderr)
    assert line.startswith("pyfile: backend cpu (")
    assert "CUDA: Fake GPU is sm_61, which the CUDA variant has no kernels for (built for " in line
    assert extracted == [] and inits == 1


def test_cuda_variant_loads_in_debian11_and_falls_back_without_a_working_driver(
        cuda_pyfile, fake_driver):
    """In Debian 11 (glibc 2.31, nothing installed) with a driver new enough and a covered
    GPU, the variant is unpacked and loaded in the probe (so its glibc needs are met); the
    stand-in driver cannot start CUDA, so the run says so in its one line and answers from
    the CPU."""
    r = subprocess.run([str(ROOT / "scripts" / "debian11-root.sh"), "amd64", "nopython"],
                       capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stderr
    root = Path(r.stdout.strip())
    work = root / "root" / "cudatest"
    shutil.rmtree(work, ignore_errors=True)
    try:
        nvidia_machine(work / "machine", driver="580.65.06")
        shutil.copytree(fake_driver, work / "driver")
        shutil.copyfile(cuda_pyfile, work / "m.pyfile")
        os.chmod(work / "m.pyfile", 0o755)
        env = ["HOME=/root", "PATH=/usr/bin:/bin", "PYFILE_CACHE_DIR=/root/cudatest/cache",
               "PYFILE_HARDWARE_ROOT=/root/cudatest/machine",
               "LD_LIBRARY_PATH=/root/cudatest/driver", "FAKE_CUDA_VERSION=13000",
               "FAKE_CUDA_CC=86"]
        r = subprocess.run(["chroot", str(root), "/usr/bin/env", "-i", *env,
                            "/root/cudatest/m.pyfile", *SAY],
                           capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        line = backend_line(r.stderr)
        assert line.startswith("pyfile: backend cpu (")
        assert ("CUDA: the CUDA variant failed its first computation on Fake GPU (it loaded, "
                "but its driver reported no device)") in line
        assert list((work / "cache").rglob("libggml-cuda.so"))  # it was unpacked
        assert r.stdout.strip()
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- CUDA compiled here: a user's own toolkit (nvcc and cuBLAS) ------------------------------

@pytest.fixture(scope="session")
def gpu_pyfile(tmp_path_factory, real_model, cuda_dir, gpu_sources) -> Path:
    """SmolLM2 with what a default file carries for GPUs: the prebuilt CUDA variant and
    ggml's GPU sources (no Vulkan: the fallback is the CPU)."""
    out = tmp_path_factory.mktemp("gpu") / "smol.pyfile"
    r = pyfile_cli("build", str(real_model), "-o", str(out), "--arch", "x86_64",
                   "--gpu-variants", "cuda,rocm", timeout=900)
    assert r.returncode == 0, r.stderr
    return out


def test_a_gpu_neither_the_variant_nor_nvcc_covers_falls_back_with_both_reasons(
        gpu_pyfile, tmp_path, fake_driver):
    """A Pascal GPU (sm_61) on a machine with a CUDA 13 toolkit: the prebuilt variant has no
    code for it and this nvcc makes none (CUDA 13 starts at Turing), so the one line gives
    both reasons and what would help; nothing is compiled or unpacked."""
    tk, nvcc = cuda_toolkit(), machine_nvcc()
    r, extracted, _ = run_with_driver(gpu_pyfile, tmp_path, fake_driver, 13000, 61, toolkit=tk)
    assert r.returncode == 0, r.stderr
    line = backend_line(r.stderr)
    assert line.startswith("pyfile: backend cpu (")
    assert re.search(r"CUDA: Fake GPU is sm_61, which the CUDA variant has no kernels for "
                     r"\(built for [^)]+\); cannot compile one here \(nvcc "
                     + re.escape(nvcc.version) + r" compiles for sm_75 and newer, not this "
                     r"GPU's sm_61; an older CUDA toolkit supports it\)", line), line
    assert "compiling" not in r.stderr and extracted == []
    assert r.stdout.strip()


def test_recompile_builds_cuda_with_cublas_for_the_gpu_and_later_runs_reuse_it(
        gpu_pyfile, tmp_path, fake_driver, cuobjdump):
    """``--recompile`` on a machine with a CUDA toolkit (nvcc 13 and cuBLAS) and an sm_86
    GPU: the launcher compiles ggml's CUDA backend from the carried sources with that nvcc,
    for sm_86 only (machine code, no PTX), linked to the toolkit's cuBLAS (found through the
    library's run path) and the CUDA runtime statically; the prebuilt variant is never
    unpacked. The stand-in driver cannot start CUDA, so the probe says so and the CPU answers.
    A later run without the flag loads the compiled library without compiling. (A full
    compile: ~15 min on 2 cores.)"""
    tk, version = cuda_toolkit(), machine_nvcc().version
    r, extracted, _ = run_with_driver(gpu_pyfile, tmp_path, fake_driver, 13000, 86,
                                      "--recompile", toolkit=tk, timeout=3600)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count(f"pyfile: compiling the CUDA {version} backend for sm_86") == 1, \
        r.stderr
    took = re.findall(rf"pyfile: compiled the CUDA {re.escape(version)} backend for sm_86 in "
                      rf"(\d+) s", r.stderr)
    assert len(took) == 1, r.stderr
    assert ("CUDA: the CUDA variant failed its first computation on Fake GPU (it loaded, but "
            "its driver reported no device)") in backend_line(r.stderr)
    assert r.stdout.strip()
    assert [p.parent.parent.name for p in extracted] == ["compiled"], extracted
    lib = extracted[0]
    needs = elf.read_file_needs(str(lib))
    assert "libcublas.so.13" in needs.libraries, needs.libraries
    assert not [n for n in needs.libraries if n.startswith(("libcudart", "libcuda."))]
    dynamic = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True)
    assert f"[{tk}/targets/x86_64-linux/lib]" in dynamic.stdout, dynamic.stdout
    assert gpu_code(cuobjdump, lib) == {("86", "sm")}
    assert not list((tmp_path / "cache" / "compiled").glob(".*.objects"))

    r, extracted, _ = run_with_driver(gpu_pyfile, tmp_path, fake_driver, 13000, 86, toolkit=tk)
    assert r.returncode == 0, r.stderr
    assert "compiling" not in r.stderr
    assert "CUDA: the CUDA variant failed its first computation" in backend_line(r.stderr)
    assert extracted == [lib]  # the compiled one, still; the prebuilt one never unpacked
    print(f"first-run CUDA {version} compile for sm_86: {took[0]} s")


# -- ROCm: compiled on first use from the sources every file carries -------------------------

@pytest.fixture(scope="session")
def rocm_root() -> Path:
    """Debian unstable with ROCm 6.4's hipcc and HIP runtime, no GPU (scripts/rocm-root.sh)."""
    r = subprocess.run([str(ROOT / "scripts" / "rocm-root.sh")], capture_output=True, text=True,
                       timeout=3600)
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip())


@pytest.fixture(scope="session")
def gpu_sources() -> None:
    """ggml's GPU sources published as the ROCm kind (make setup publishes them)."""
    r = subprocess.run([str(ROOT / "scripts" / "build-variant.sh"), "rocm"],
                       env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="session")
def hip_pyfile(tmp_path_factory, real_model, gpu_sources) -> Path:
    """SmolLM2 built with the published ROCm sources only."""
    out = tmp_path_factory.mktemp("hip") / "smol.pyfile"
    r = pyfile_cli("build", str(real_model), "-o", str(out), "--arch", "x86_64",
                   "--gpu-variants", "rocm", timeout=900)
    assert r.returncode == 0, r.stderr
    return out


def amd_machine(root: Path, kfd: bool = True) -> Path:
    from test_hardware import amd_tree
    return Path(amd_tree(root, (110000, 128), kfd=kfd))


class Chroot:
    """A work folder inside a root, with /proc mounted for hipcc, removed afterwards."""

    def __init__(self, root: Path, name: str, proc: bool = True) -> None:
        self.root, self.inside, self.proc = root, f"/root/{name}", proc
        self.work = root / "root" / name
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)

    def run(self, cmd: str, env: dict, timeout: float = 3600) -> subprocess.Popen:
        args = [f"{k}={v}" for k, v in {"HOME": "/root", "PATH": "/usr/bin:/bin", **env}.items()]
        mount = (["unshare", "-m", "-p", "-f", f"--mount-proc={self.root}/proc"]
                 if self.proc else [])
        return subprocess.Popen([*mount, "chroot", str(self.root), "/usr/bin/env", "-i", *args,
                                 "/bin/sh", "-c", cmd], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def test_the_file_carries_the_rocm_sources(hip_pyfile):
    """ggml's GPU sources and pyfile's BLAS travel as one deflated tar, marked for a HIP
    compile."""
    import io
    import tarfile
    with Archive.open(str(hip_pyfile)) as arch:
        spec = arch.manifest.variants["rocm"]
        assert spec["members"] == [".pyfile/variants/rocm/sources.tar"]
        packed = arch.member(spec["members"][0]).compressed_size
        names = tarfile.open(fileobj=io.BytesIO(arch.read(spec["members"][0]))).getnames()
    assert spec["requires"]["compile"] == "ggml-cuda"
    assert "ggml/src/ggml-cuda/ggml-cuda.cu" in names and "blas/hip/blas-hip.cu" in names
    assert packed < 1 << 20, packed


def run_in(box: Chroot, pyfile: Path, env: dict, runs: int = 1):
    """Start ``runs`` copies of the file at once in the box (sharing one cache in it); their
    (exit status, stderr, stdout)s."""
    if not (box.work / "m.pyfile").exists():
        shutil.copyfile(pyfile, box.work / "m.pyfile")
        os.chmod(box.work / "m.pyfile", 0o755)
    full = {"PYFILE_CACHE_DIR": f"{box.inside}/cache",
            "PYFILE_HARDWARE_ROOT": f"{box.inside}/machine", **env}
    procs = [box.run(f"{box.inside}/m.pyfile " + " ".join(f"'{a}'" for a in SAY), full)
             for _ in range(runs)]
    outs = [p.communicate(timeout=3600) for p in procs]
    return [(p.returncode, err, out) for p, (out, err) in zip(procs, outs)]


def test_amd_gpu_without_kfd_falls_back_without_compiling(rocm_root, hip_pyfile):
    """An AMD GPU whose /dev/kfd is missing (no amdgpu driver): one line says so, nothing is
    compiled, the CPU answers."""
    box = Chroot(rocm_root, "hip-nokfd")
    try:
        amd_machine(box.work / "machine", kfd=False)
        (rc, err, out), = run_in(box, hip_pyfile, {})
        assert rc == 0, err
        line = backend_line(err)
        assert line.startswith("pyfile: backend cpu (") and ("ROCm: an AMD GPU is present but "
                                                             "/dev/kfd is missing") in line
        assert "compiling" not in err and out.strip()
    finally:
        box.close()


def test_amd_gpu_without_rocm_falls_back_with_one_line(hip_pyfile):
    """An AMD GPU on Debian 11 with no ROCm at all: one line says what to install."""
    r = subprocess.run([str(ROOT / "scripts" / "debian11-root.sh"), "amd64", "nopython"],
                       capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stderr
    root = Path(r.stdout.strip())
    box = Chroot(root, "hip-norocm", proc=False)
    try:
        amd_machine(box.work / "machine")
        (rc, err, _), = run_in(box, hip_pyfile, {})
        assert rc == 0, err
        assert ("ROCm: cannot compile the ROCm backend here (no hipcc found; install ROCm 6.1 "
                "or newer, or set ROCM_PATH)") in backend_line(err)
    finally:
        box.close()


def test_first_runs_compile_once_for_the_gpu_and_later_runs_reuse_it(rocm_root, hip_pyfile):
    """Two first runs at once on a machine with ROCm 6.4 and a gfx1100 GPU: one compiles
    ggml's GPU backend with hipcc for gfx1100 (the other waits for it), the library needs
    exactly one libamdhip64.so.N (no hipBLAS or rocBLAS: pyfile's own BLAS) and loads; with
    no real GPU behind /dev/kfd, HIP finds no device and both runs say so in their one line.
    A third run loads the cached library without compiling. (A full compile: ~10 min on
    2 cores.)"""
    box = Chroot(rocm_root, "hip-first")
    try:
        amd_machine(box.work / "machine")
        results = run_in(box, hip_pyfile, {}, runs=2)
        errs = "".join(err for _, err, _ in results)
        for rc, err, out in results:
            assert rc == 0, err
            line = backend_line(err)
            assert line.startswith("pyfile: backend cpu (")
            assert ("ROCm: the ROCm variant failed its first computation on Radeon RX 7900 XTX "
                    "(it loaded, but its driver reported no device)") in line
            assert out.strip()
        assert errs.count("pyfile: compiling the ROCm 6.4") == 1, errs
        compiled = re.findall(r"pyfile: compiled the ROCm \S+ backend for gfx1100 in (\d+) s", errs)
        assert len(compiled) == 1, errs
        libs = list((box.work / "cache" / "compiled").glob("*/libggml-hip.so"))
        assert len(libs) == 1
        needed = elf.read_file_needs(str(libs[0])).libraries
        assert [n for n in needed if "hip" in n or "roc" in n or "blas" in n] == \
            ["libamdhip64.so.6"], needed
        assert not list((box.work / "cache" / "compiled").glob(".*.objects"))

        (rc, err, _), = run_in(box, hip_pyfile, {})
        assert rc == 0, err
        assert "compiling" not in err and "failed its first computation" in backend_line(err)
        print(f"first-run HIP compile for gfx1100: {compiled[0]} s")
    finally:
        box.close()
