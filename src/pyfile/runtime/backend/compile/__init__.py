"""Compile ggml's GPU backend on this machine, once, for exactly its GPU.

A pyfile cannot carry a ROCm build for every AMD GPU and ROCm release (each is hundreds of
MB, tied to one ``libamdhip64.so.N``), nor a CUDA build for every toolkit and GPU, so it
carries ggml's GPU sources too (one tar, 0.4 MB deflated). On the first run that finds an
AMD GPU and ROCm 6.1+, they are compiled with the user's ``hipcc`` (``hipcc.py``); an NVIDIA
user with a CUDA toolkit gets them compiled with ``nvcc`` and cuBLAS (``nvcc.py``) when the
prebuilt variant cannot serve the GPU or ``--recompile`` asks. ``build.py`` does the work
and keeps the result in the user cache; ``sources.py`` knows the carried tar.
"""

from .build import cached, compiled
from .hipcc import Hipcc
from .nvcc import Nvcc
from .sources import SOURCES_TAR
from .toolchain import Toolchain
from ...errors import CompileError

#: The compiler for each backend kind that can be built from the carried sources.
TOOLCHAINS = {tc.kind: tc for tc in (Hipcc, Nvcc)}

__all__ = ["CompileError", "Toolchain", "Hipcc", "Nvcc", "TOOLCHAINS", "SOURCES_TAR",
           "cached", "compiled"]
