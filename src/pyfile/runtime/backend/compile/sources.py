"""The GPU sources a file carries: where they are in the file, how they unpack, and which of
them ggml's CMake would compile (the same units serve nvcc and hipcc: ggml's HIP backend is
its CUDA backend's code)."""

from __future__ import annotations

import os
from typing import List

from ...errors import CompileError

#: The member (in the sources' folder of the file) that holds them, as one tar.
SOURCES_TAR = "sources.tar"
#: Where the sources sit inside that tar.
GGML = "ggml"
BLAS = "blas"
#: The flash-attention vector kernels ggml builds by default (K type, V type).
FA_PAIRS = (("q4_0", "q4_0"), ("q8_0", "q8_0"), ("f16", "f16"), ("bf16", "bf16"))
FA_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "bf16", "f16")
#: Defines ggml's CMake gives every GPU unit, whichever compiler (the module is a backend
#: loaded at run time by ``ggml_backend_load``).
DEFINES = ("GGML_BACKEND_BUILD", "GGML_BACKEND_DL", "GGML_BACKEND_SHARED", "GGML_SHARED",
           "GGML_SCHED_MAX_COPIES=4", "_GNU_SOURCE", "_XOPEN_SOURCE=600", "NDEBUG")


def units(folder: str) -> List[str]:
    """ggml's GPU translation units in an unpacked source folder (relative paths), as its
    CMake chooses them: every ``ggml-cuda/*.cu``, the tile/MMA flash-attention, MMQ and MMF
    template instances, and the default vector flash-attention pairs."""
    cuda = os.path.join(GGML, "src", "ggml-cuda")
    inst = os.path.join(cuda, "template-instances")
    out = sorted(os.path.join(cuda, n) for n in os.listdir(os.path.join(folder, cuda))
                 if n.endswith(".cu"))
    for n in sorted(os.listdir(os.path.join(folder, inst))):
        if n.startswith(("fattn-tile", "fattn-mma", "mmq", "mmf")) and n.endswith(".cu"):
            out.append(os.path.join(inst, n))
    out += [os.path.join(inst, f"fattn-vec-instance-{k}-{v}.cu") for k, v in FA_PAIRS]
    return out


def defines() -> List[str]:
    """``-D`` flags common to both compilers (the backend's own define comes from each)."""
    fa = [f"GGML_CUDA_FA_{k.upper()}_{v.upper()}={int((k, v) in FA_PAIRS)}"
          for k in FA_TYPES for v in FA_TYPES]
    quants = ",".join(f"{k}-{v}" for k, v in FA_PAIRS)
    return [f"-D{d}" for d in DEFINES + tuple(fa)] + [f'-DGGML_CUDA_FA_QUANTS="{quants}"']


def includes(folder: str) -> List[str]:
    return ["-I", os.path.join(folder, GGML, "src"), "-I", os.path.join(folder, GGML, "include")]


def unpack(tar: str, dest: str) -> None:
    """The carried sources into ``dest`` (plain files with relative paths only)."""
    import tarfile
    try:
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if not m.isfile() or m.name.startswith("/") or ".." in m.name.split("/"):
                    raise CompileError(f"{tar}: unexpected entry {m.name!r} in the sources")
            kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(dest, **kw)  # type: ignore[arg-type]
    except (OSError, tarfile.TarError) as e:
        raise CompileError(f"cannot unpack the carried sources ({e})") from None


__all__ = ["SOURCES_TAR", "units", "defines", "includes", "unpack"]
