"""Choose the compute backend at run time and say which, and why, in one line."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, List

from . import cpu
from .engine import ModelSource, import_llama_cpp
from .errors import BackendError


@dataclass
class Selection:
    kind: str  # "cpu", "cuda" or "rocm"
    detail: str
    n_gpu_layers: int
    extra_bufts: bool = True

    def line(self) -> str:
        return f"backend {self.kind} ({self.detail})"


def select(source: ModelSource, gpu: str, verbose: bool = False) -> Selection:
    """Load the best usable backend into this process and describe it."""
    llama_cpp = import_llama_cpp()
    from llama_cpp._logger import set_verbose
    set_verbose(verbose)  # ggml logs while loading backends; quiet unless -v
    if gpu in ("nvidia", "amd"):
        raise BackendError(
            f"--gpu {gpu}: this engine has no {'CUDA' if gpu == 'nvidia' else 'ROCm'} "
            f"backend (no GPU variant is installed or packed in this file); "
            f"use --gpu auto or --gpu cpu")
    why_cpu = "GPU disabled by --gpu" if gpu == "cpu" else "no NVIDIA or AMD GPU found"
    chosen, notes = cpu.choose(llama_cpp, source.path, source.offset, source.name,
                               source.size, getattr(llama_cpp, "__version__", "?"))
    cpu.load(chosen)
    extra: List[str] = [chosen.label]
    if notes:
        extra.append("skipped: " + "; ".join(notes))
    extra.append(why_cpu)
    return Selection("cpu", "; ".join(extra), 0, chosen.extra_bufts)


def report(sel: Selection) -> None:
    sys.stderr.write(f"pyfile: {sel.line()}\n")
    sys.stderr.flush()
