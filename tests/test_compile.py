"""The compilers a file uses to build ggml's GPU backend on the user's machine: where each is
looked for, what each refuses before a long compile starts (with a line that says what to
do), and which GPU code nvcc is asked for. nvcc is this machine's real one (CI's machine has
a CUDA 13 toolkit); the full compiles are in test_gpu_variants.py."""

from __future__ import annotations

import pytest

from cudatoolkit import machine_nvcc, toolkit
from pyfile.runtime.backend.compile import CompileError, Hipcc, Nvcc
from pyfile.runtime.backend.hardware import GPU, Finding


def executable(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


def nvidia(arch: str, api: int = 13000, driver: str = "580.65.06"):
    finding = Finding("nvidia")
    finding.present, finding.api, finding.driver = True, api, driver
    gpu = GPU("nvidia", 0, "Some GPU", 8 << 30, arch, False)
    finding.gpus.append(gpu)
    return finding, gpu


def test_hipcc_is_looked_for_where_rocm_installs_it(tmp_path):
    """PATH first, then $ROCM_PATH/bin, $HIP_PATH/bin and /opt/rocm/bin (as llamafile and
    ggml's CMake look); none at all is None, and finding none says what to install."""
    path = executable(tmp_path / "path" / "hipcc")
    rocm = executable(tmp_path / "rocm" / "bin" / "hipcc")
    hip = executable(tmp_path / "hip" / "bin" / "hipcc")
    opt = executable(tmp_path / "opt" / "rocm" / "bin" / "hipcc")
    env = {"PATH": str(tmp_path / "path"), "ROCM_PATH": str(tmp_path / "rocm"),
           "HIP_PATH": str(tmp_path / "hip")}
    prefix = str(tmp_path / "opt")
    assert Hipcc.locate(env, prefix) == path
    env["PATH"] = str(tmp_path / "none")
    assert Hipcc.locate(env, prefix) == rocm
    del env["ROCM_PATH"]
    assert Hipcc.locate(env, prefix) == hip
    del env["HIP_PATH"]
    assert Hipcc.locate(env, prefix) == opt
    assert Hipcc.locate(env, str(tmp_path / "empty")) is None


def test_rocm_older_than_61_is_refused_by_name():
    finding = Finding("amd")
    gpu = GPU("amd", 0, "Radeon", 1, "gfx1100", False)
    Hipcc("hipcc", "6.1.40091").check(finding, gpu)
    Hipcc("hipcc", "7.0.2").check(finding, gpu)
    with pytest.raises(CompileError) as e:
        Hipcc("hipcc", "5.7.31921").check(finding, gpu)
    assert str(e.value) == ("ROCm 5.7.31921 is older than the 6.1 ggml's GPU backend needs; "
                            "install ROCm 6.1 or newer")


def test_nvcc_is_looked_for_where_cuda_installs_it(tmp_path):
    """PATH first, then $CUDA_HOME/bin, $CUDA_PATH/bin, /usr/local/cuda/bin and the newest
    /usr/local/cuda-X.Y/bin (12.10 is newer than 12.9)."""
    path = executable(tmp_path / "path" / "nvcc")
    home = executable(tmp_path / "home" / "bin" / "nvcc")
    cuda_path = executable(tmp_path / "cudapath" / "bin" / "nvcc")
    local = tmp_path / "local"
    executable(local / "cuda-12.9" / "bin" / "nvcc")
    newest = executable(local / "cuda-12.10" / "bin" / "nvcc")
    env = {"PATH": str(tmp_path / "path"), "CUDA_HOME": str(tmp_path / "home"),
           "CUDA_PATH": str(tmp_path / "cudapath")}
    assert Nvcc.locate(env, str(local)) == path
    env["PATH"] = str(tmp_path / "none")
    assert Nvcc.locate(env, str(local)) == home
    del env["CUDA_HOME"]
    assert Nvcc.locate(env, str(local)) == cuda_path
    del env["CUDA_PATH"]
    assert Nvcc.locate(env, str(local)) == newest
    linked = executable(local / "cuda" / "bin" / "nvcc")  # the installer's /usr/local/cuda
    assert Nvcc.locate(env, str(local)) == linked
    assert Nvcc.locate(env, str(tmp_path / "empty")) is None
    with pytest.raises(CompileError) as e:
        Nvcc.find(env, prefix=str(tmp_path / "empty"))
    assert str(e.value) == "no nvcc found; install the CUDA toolkit with cuBLAS, or set CUDA_HOME"


def test_nvcc_is_asked_for_machine_code_for_exactly_the_gpu():
    """A GPU nvcc has machine code for gets exactly that (sm_86: no PTX, no other arch); one
    newer than any it knows gets PTX of the newest it knows, which the driver compiles."""
    nvcc = machine_nvcc()
    newest = max(int(c[3:]) for c in nvcc.layout().codes)
    assert nvcc.target(nvidia("sm_86")[1]) == ("compute_86", "sm_86")
    assert nvcc.target(nvidia("sm_250")[1]) == (f"compute_{newest}", f"compute_{newest}")
    cmd = nvcc.compile_command("/src", nvidia("sm_86")[1], "ggml/src/ggml-cuda/acc.cu", "a.o")
    assert cmd[1:3] == ["-gencode", "arch=compute_86,code=sm_86"]
    assert "-DGGML_USE_CUDA" in cmd and "-DGGML_CUDA_FORCE_MMQ" not in cmd  # cuBLAS speed


def test_nvcc_refuses_a_gpu_older_than_it_supports():
    nvcc = machine_nvcc()
    oldest = min(int(c[3:]) for c in nvcc.layout().codes)
    finding, gpu = nvidia("sm_61")
    assert oldest > 61, "this nvcc still supports Pascal: the test needs an older GPU"
    with pytest.raises(CompileError) as e:
        nvcc.check(finding, gpu)
    assert str(e.value) == (f"nvcc {nvcc.version} compiles for sm_{oldest} and newer, not this "
                            f"GPU's sm_61; an older CUDA toolkit supports it")


def test_nvcc_refuses_a_driver_older_than_its_cuda():
    """A CUDA 13 nvcc with a driver that supports CUDA 12.2 (535): the code it makes would not
    run, so nothing is compiled and the line says what to update or install instead."""
    nvcc = machine_nvcc()
    major = nvcc.release[0]
    finding, gpu = nvidia("sm_86", api=(major - 1) * 1000 + 20, driver="535.104.05")
    with pytest.raises(CompileError) as e:
        nvcc.check(finding, gpu)
    assert str(e.value).startswith(
        f"nvcc {nvcc.version} builds for CUDA {major}.{nvcc.release[1]}, the NVIDIA driver "
        f"535.104.05 supports CUDA {major - 1}.2 (update the driver to ")
    assert str(e.value).endswith(f", or use a CUDA {major - 1} toolkit)")


def test_a_toolkit_without_cublas_is_refused_by_name():
    """The compiled backend uses cuBLAS: a toolkit without its headers is turned down before
    the compile, naming the toolkit; the same toolkit with cuBLAS passes."""
    bare = toolkit(cublas=False)
    nvcc = Nvcc(str(bare / "bin" / "nvcc"), Nvcc.read_version(str(bare / "bin" / "nvcc")))
    finding, gpu = nvidia("sm_86")
    with pytest.raises(CompileError) as e:
        nvcc.check(finding, gpu)
    assert str(e.value) == (f"the CUDA toolkit at {bare} has no cuBLAS headers (cublas_v2.h); "
                            f"install its cuBLAS development files")
    full = toolkit()
    Nvcc(str(full / "bin" / "nvcc"), nvcc.version).check(finding, gpu)
