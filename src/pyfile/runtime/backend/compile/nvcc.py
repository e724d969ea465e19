"""CUDA's ``nvcc``: ggml's CUDA backend built with the user's own toolkit and its cuBLAS, for
exactly the NVIDIA GPU found. For users with a toolkit who want cuBLAS speed, a GPU the
prebuilt variant has no code for, or a driver too old for the prebuilt variant's CUDA
(a toolkit the driver supports then builds one it can run). The CUDA runtime is linked
statically; cuBLAS is found in the toolkit through the library's run path."""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from typing import List, Mapping, Optional, Tuple

from . import sources
from .toolchain import Toolchain, ask
from .. import fit
from ..hardware import GPU, Finding
from ...container.versions import parse, parse_or
from ...errors import CompileError

#: ggml's CMake defaults for CUDA, except VMM (left out, as in the prebuilt variant: the
#: module then needs no libcuda.so.1 to load, and declines where CUDA cannot start).
DEFINES = ("GGML_USE_CUDA", "GGML_CUDA_USE_GRAPHS", "GGML_CUDA_NO_VMM")
#: nvcc options ggml's CMake passes (``-compress-mode`` from CUDA 12.8 on).
OPTIONS = ("-O3", "-Xcompiler", "-fPIC", "-std=c++17", "-use_fast_math", "-extended-lambda",
           "-w")


@dataclass(frozen=True)
class Layout:
    """A toolkit as nvcc describes it."""

    top: str  # its root
    include: List[str]  # header folders nvcc searches
    lib: List[str]  # library folders it links from (not the driver stubs)
    codes: List[str]  # the machine codes it makes: "sm_75", ...


def _flag_paths(text: str, flag: str) -> List[str]:
    """The folders of every ``-I``/``-L`` in one of ``--dryrun``'s lines."""
    return [os.path.normpath(p) for p in re.findall(rf'"?{flag}([^" ]+)"?', text)]


class Nvcc(Toolchain):
    kind = "cuda"
    program = "nvcc"
    platform = "CUDA"
    library = "libggml-cuda.so"
    install = "install the CUDA toolkit with cuBLAS, or set CUDA_HOME"

    def __init__(self, path: str, version: str) -> None:
        super().__init__(path, version)
        self._layout: Optional[Layout] = None

    version_pattern = r"release [0-9.]+, V([0-9][0-9.]*)"  # "13.0.88"
    prefix = "/usr/local"
    version_name = "a CUDA release"

    @classmethod
    def tops(cls, env: Mapping[str, str], prefix: str) -> List[Optional[str]]:
        """``$CUDA_HOME``, ``$CUDA_PATH``, ``/usr/local/cuda``, then ``/usr/local/cuda-X.Y``
        newest first (NVIDIA's installers' places)."""
        versioned = sorted(glob.glob(os.path.join(prefix, "cuda-*")), reverse=True,
                           key=lambda top: parse_or(top.rsplit("-", 1)[-1]))
        return [env.get("CUDA_HOME"), env.get("CUDA_PATH"), os.path.join(prefix, "cuda"),
                *versioned]

    @property
    def release(self) -> Tuple[int, int]:
        return parse(self.version)[:2]

    def layout(self) -> "Layout":
        """Where the toolkit keeps headers and libraries and which GPU codes nvcc makes, as
        nvcc itself reports them (``--dryrun``, ``--list-gpu-code``)."""
        if self._layout is None:
            dry = ask([self.path, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull])
            line = {m.group(1): m.group(2) for m in
                    re.finditer(r"^#\$ (TOP|INCLUDES|LIBRARIES)=(.*)$", dry, re.M)}
            codes = ask([self.path, "--list-gpu-code"]).split()
            self._layout = Layout(
                os.path.normpath(line.get("TOP", "")),
                _flag_paths(line.get("INCLUDES", ""), "-I"),
                [d for d in _flag_paths(line.get("LIBRARIES", ""), "-L")
                 if os.path.basename(d) != "stubs"],
                [c for c in codes if c.startswith("sm_")])
        return self._layout

    def target(self, gpu: GPU) -> Tuple[str, str]:
        """(virtual arch, code) for ``-gencode``: machine code for exactly this GPU when nvcc
        has it, else PTX of the newest arch it knows (the driver compiles that for a newer
        GPU); :class:`CompileError` for a GPU older than any it supports."""
        have = fit.compute_capability(gpu.arch)
        codes = sorted(fit.compute_capability(c) for c in self.layout().codes)
        if have in codes:
            return f"compute_{have}", f"sm_{have}"
        if codes and have > codes[-1]:
            return f"compute_{codes[-1]}", f"compute_{codes[-1]}"
        oldest = f"sm_{codes[0]}" if codes else "no GPU"
        raise CompileError(f"nvcc {self.version} compiles for {oldest} and newer, not this "
                           f"GPU's {gpu.arch}; an older CUDA toolkit supports it")

    def check(self, finding: Finding, gpu: GPU) -> None:
        major, minor = self.release
        if finding.api is not None and finding.api < major * 1000:
            have = f"{finding.api // 1000}.{finding.api % 1000 // 10}"
            driver = " ".join(filter(None, ["the NVIDIA driver", finding.driver]))
            floor = fit.CUDA_DRIVER_FLOOR.get(major)
            update = f"update the driver to {floor} or newer" if floor else "update the driver"
            raise CompileError(f"nvcc {self.version} builds for CUDA {major}.{minor}, {driver} "
                               f"supports CUDA {have} ({update}, or use a CUDA "
                               f"{finding.api // 1000} toolkit)")
        self.target(gpu)
        if not any(os.path.isfile(os.path.join(d, "cublas_v2.h"))
                   for d in self.layout().include):
            raise CompileError(f"the CUDA toolkit at {self.layout().top} has no cuBLAS "
                               f"headers (cublas_v2.h); install its cuBLAS development files")

    def units(self, folder: str) -> List[str]:
        return sources.units(folder)

    def _gencode(self, gpu: GPU) -> List[str]:
        arch, code = self.target(gpu)
        return ["-gencode", f"arch={arch},code={code}"]

    def compile_command(self, folder: str, gpu: GPU, unit: str, obj: str) -> List[str]:
        compress = ["-compress-mode=size"] if self.release >= (12, 8) else []
        return [self.path, *self._gencode(gpu), *OPTIONS, *compress,
                *[f"-D{d}" for d in DEFINES], *sources.defines(), *sources.includes(folder),
                "-c", os.path.join(folder, unit), "-o", obj]

    def link_command(self, gpu: GPU, objects: List[str], ggml_base: str, lib: str) -> List[str]:
        # cuBLAS from the toolkit, found again at run time through the run path
        dirs = self.layout().lib
        return [self.path, *self._gencode(gpu), "-shared", "-o", lib, *objects, ggml_base,
                "-cudart", "static", *[f"-L{d}" for d in dirs], "-lcublas", "-lcublasLt",
                "-Xlinker", "-rpath," + ":".join(dirs)]

