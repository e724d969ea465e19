"""ROCm's ``hipcc``: ggml's HIP backend for exactly the AMD GPU found, with pyfile's own BLAS
under hipBLAS's names (``native/cuda-blas/hip``), so the library needs nothing of ROCm but
``libamdhip64.so.N``."""

from __future__ import annotations

import os
from typing import List, Mapping, Optional

from . import sources
from .toolchain import Toolchain
from ..hardware import GPU, Finding
from ...container.versions import parse
from ...errors import CompileError

#: ggml's HIP backend needs this ROCm or newer (its CMake refuses older ones).
ROCM_MIN = (6, 1)
#: pyfile's options for the HIP backend: no VMM (the module needs only libamdhip64), MMQ for
#: every quantized product (the small BLAS carries only float/half products).
DEFINES = ("GGML_USE_HIP", "GGML_CUDA_FORCE_MMQ", "GGML_HIP_NO_VMM", "GGML_HIP_GRAPHS")


class Hipcc(Toolchain):
    kind = "rocm"
    program = "hipcc"
    platform = "ROCm"
    library = "libggml-hip.so"
    install = "install ROCm 6.1 or newer, or set ROCM_PATH"

    version_pattern = r"HIP version:\s*([0-9][0-9.]*)"  # "6.4.43484"
    prefix = "/opt"
    version_name = "a HIP version"

    @classmethod
    def tops(cls, env: Mapping[str, str], prefix: str) -> List[Optional[str]]:
        """``$ROCM_PATH``, ``$HIP_PATH``, ``/opt/rocm``."""
        return [env.get("ROCM_PATH"), env.get("HIP_PATH"), os.path.join(prefix, "rocm")]

    def check(self, finding: Finding, gpu: GPU) -> None:
        if parse(self.version)[:2] < ROCM_MIN:
            raise CompileError(f"ROCm {self.version} is older than the "
                               f"{'.'.join(map(str, ROCM_MIN))} ggml's GPU backend needs; "
                               f"install ROCm 6.1 or newer")

    def units(self, folder: str) -> List[str]:
        return sources.units(folder) + [os.path.join(sources.BLAS, "hip", "blas-hip.cu")]

    def compile_command(self, folder: str, gpu: GPU, unit: str, obj: str) -> List[str]:
        return [self.path, "-x", "hip", f"--offload-arch={gpu.arch}", "-O3", "-fPIC",
                "-std=c++17", "-w", *[f"-D{d}" for d in DEFINES], *sources.defines(),
                "-I", os.path.join(folder, sources.BLAS, "hip"), *sources.includes(folder),
                "-c", os.path.join(folder, unit), "-o", obj]

    def link_command(self, gpu: GPU, objects: List[str], ggml_base: str, lib: str) -> List[str]:
        # the engine's libggml-base is found, already loaded, by its soname
        return [self.path, f"--offload-arch={gpu.arch}", "-shared", "-fPIC", "-o", lib,
                *objects, ggml_base]
