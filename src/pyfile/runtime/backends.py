"""Choose the compute backend at run time and say which, and why, in one line.

Order for ``--gpu auto``: an NVIDIA GPU with a CUDA variant, then an AMD GPU with a ROCm
variant, then the best CPU variant. Each GPU choice must pass the same child-process probe
as CPU variants (the real model's first computation), so a driver or kernel failure ends
in a fallback (``auto``) or a clear error (explicit ``--gpu``), never a crash. Verdicts are
cached per machine, driver, variant and model.
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import cpu, hardware
from .engine import ModelSource, import_llama_cpp
from .errors import BackendError
from .manifest import Manifest

KIND_OF = {"nvidia": "cuda", "amd": "rocm"}
LIB_OF = {"cuda": "libggml-cuda.so", "rocm": "libggml-hip.so"}
TITLE = {"cuda": "CUDA", "rocm": "ROCm"}
#: Runtime libraries each GPU variant needs when its variant.json does not say.
DEFAULT_NEEDS = {
    "cuda": ["libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13"],
    "rocm": ["libamdhip64.so.6", "librocblas.so.4", "libhipblas.so.2"],
}


@dataclass
class Variant:
    """A GPU variant available to this run: installed beside the engine or packed in the file."""

    kind: str
    requires: Dict[str, Any]
    path: Optional[str] = None  # the library on disk (after extraction for packed ones)
    packed: List[Tuple[str, str]] = field(default_factory=list)  # (member, relative path)


@dataclass
class Selection:
    kind: str  # "cpu", "cuda" or "rocm"
    detail: str
    n_gpu_layers: int
    extra_bufts: bool = True

    def line(self) -> str:
        return f"backend {self.kind} ({self.detail})"


def installed_variants(llama_cpp: Any) -> Dict[str, Variant]:
    found: Dict[str, Variant] = {}
    for d in cpu.variant_dirs(llama_cpp):
        for kind, lib in LIB_OF.items():
            path = os.path.join(d, lib)
            if kind not in found and os.path.isfile(path):
                found[kind] = Variant(kind, _requires(os.path.join(d, "variant.json")), path)
    return found


def _requires(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def packed_variants(manifest: Optional[Manifest]) -> Dict[str, Variant]:
    out: Dict[str, Variant] = {}
    for kind, spec in (manifest.variants if manifest else {}).items():
        if kind in LIB_OF:
            files = [(m, m.rsplit("/", 1)[-1]) for m in spec.get("members", [])
                     if isinstance(m, str)]
            out[kind] = Variant(kind, dict(spec.get("requires", {})), None, files)
    return out


def find_runtime_libs(kind: str, requires: Dict[str, Any],
                      search: Optional[List[str]] = None) -> Tuple[List[str], List[str]]:
    """Locate the GPU runtime libraries where users have them; return (found, missing)."""
    needs = requires.get("needs") or DEFAULT_NEEDS[kind]
    dirs = search if search is not None else runtime_lib_dirs(kind)
    found, missing = [], []
    for soname in needs:
        hit = next((os.path.join(d, soname) for d in dirs
                    if os.path.isfile(os.path.join(d, soname))), None)
        if hit is None and _loadable(soname):
            hit = soname  # resolvable through LD_LIBRARY_PATH / ld.so.cache
        (found if hit else missing).append(hit or soname)
    return found, missing


def _loadable(soname: str) -> bool:
    import ctypes.util
    return ctypes.util.find_library(soname.split(".so")[0][3:]) is not None and _try(soname)


def _try(soname: str) -> bool:
    try:
        ctypes.CDLL(soname)
        return True
    except OSError:
        return False


def runtime_lib_dirs(kind: str) -> List[str]:
    env = os.environ
    dirs = [d for d in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]
    if kind == "cuda":
        for var in ("CUDA_HOME", "CUDA_PATH"):
            if env.get(var):
                dirs += [os.path.join(env[var], "lib64"), os.path.join(env[var], "lib")]
        dirs += sorted(glob.glob("/usr/local/cuda*/lib64"), reverse=True)
        dirs += sorted(glob.glob("/usr/local/cuda*/lib"), reverse=True)
        dirs += ["/usr/lib/wsl/lib", "/usr/lib/x86_64-linux-gnu"]
        for sp in sys.path:  # PyTorch-style nvidia-* wheels
            dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "cu1*", "lib")), reverse=True)
            dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib")))
    else:
        for var in ("ROCM_PATH", "HIP_PATH"):
            if env.get(var):
                dirs.append(os.path.join(env[var], "lib"))
        dirs += sorted(glob.glob("/opt/rocm*/lib"), reverse=True)
    return [d for d in dirs if os.path.isdir(d)]


def _arch_supported(gpu: hardware.GPU, requires: Dict[str, Any]) -> bool:
    archs = [str(a) for a in requires.get("archs", [])]
    if not archs:
        return True
    if gpu.vendor == "nvidia":
        have = int(gpu.arch[3:] or 0)
        # CUDA code for sm_XY runs on sm_XZ (Z >= Y) and PTX (if shipped) on newer majors.
        return any(have // 10 == int(a) // 10 and have >= int(a) for a in archs if a.isdigit())
    return gpu.arch in archs


def plan_gpu(vendor: str, finding: hardware.Finding, variant: Optional[Variant],
             libs: Callable[[str, Dict[str, Any]], Tuple[List[str], List[str]]]
             ) -> Tuple[Optional[hardware.GPU], Optional[str], List[str]]:
    """(GPU to use, problem, runtime libs) for one vendor; pure apart from ``libs``."""
    kind = KIND_OF[vendor]
    if not finding.gpus:
        return None, finding.problem or f"no {vendor} GPU found", []
    gpu = max(finding.gpus, key=lambda g: g.memory)
    if variant is None:
        return None, (f"{gpu.name} found, but this pyfile carries no {TITLE[kind]} variant "
                      f"(build one with scripts/build-variant.sh {kind} and pack it with "
                      f"pyfile build --backend {kind}=DIR)"), []
    if not _arch_supported(gpu, variant.requires):
        return None, (f"{gpu.name} is {gpu.arch}, which the {TITLE[kind]} variant has no kernels "
                      f"for (built for {', '.join(map(str, variant.requires.get('archs', [])))})"
                      ), []
    found, missing = libs(kind, variant.requires)
    if missing:
        hint = ("pip install nvidia-cuda-runtime nvidia-cublas, or the CUDA 13 toolkit"
                if kind == "cuda" else "install ROCm 6 (hip, rocblas, hipblas)")
        return None, (f"{gpu.name} found, but the {TITLE[kind]} runtime libraries are missing: "
                      f"{', '.join(missing)} ({hint})"), []
    return gpu, None, found


def select(source: ModelSource, gpu_flag: str, verbose: bool = False,
           manifest: Optional[Manifest] = None, archive_path: Optional[str] = None,
           n_gpu_layers: Optional[int] = None, n_layers: Optional[int] = None,
           root: str = "/") -> Selection:
    """Load the best usable backend into this process and describe it."""
    llama_cpp = import_llama_cpp()
    from . import logs
    logs.route(llama_cpp, verbose)  # ggml logs while loading backends; quiet unless -v
    engine = getattr(llama_cpp, "__version__", "?")
    verdicts = cpu.Verdicts()  # one read of the verdict file serves CPU and GPU choices
    chosen, notes = cpu.choose(llama_cpp, source.path, source.offset, source.name,
                               source.size, engine, verdicts)
    variants = installed_variants(llama_cpp)
    variants.update(packed_variants(manifest))
    reasons: List[str] = []
    explicit = gpu_flag in KIND_OF
    vendors = [] if gpu_flag == "cpu" else ([gpu_flag] if explicit else ["nvidia", "amd"])
    gpu_choice = None
    for vendor in vendors:
        finding = (hardware.find_nvidia(root) if vendor == "nvidia" else hardware.find_amd(root))
        kind = KIND_OF[vendor]
        gpu, problem, libs = plan_gpu(vendor, finding, variants.get(kind), find_runtime_libs)
        if gpu is not None:
            variant = variants[kind]
            if variant.path is None:
                variant.path = _extract(archive_path, variant)
            ngl = 999 if n_gpu_layers is None or n_gpu_layers < 0 else n_gpu_layers
            key = cpu.verdict_key(engine, kind, cpu.file_id(variant.path), gpu.name,
                                  str(finding.driver), source.name, str(source.size), str(ngl))
            seen = verdicts.get(key)
            if seen is None:
                ok, why = cpu.run_probe({"preload": libs, "backends": [p for p in (
                    chosen.path, variant.path) if p], "path": source.path,
                    "offset": source.offset, "extra": chosen.extra_bufts, "ngl": ngl})
                verdicts.put(key, {"ok": ok, "why": why, "variant": kind})
            else:
                ok, why = bool(seen.get("ok")), str(seen.get("why"))
            if ok:
                gpu_choice = (kind, gpu, variant, libs, ngl)
                break
            problem = f"the {TITLE[kind]} variant failed its first computation on {gpu.name} ({why})"
        if explicit:
            raise BackendError(f"--gpu {gpu_flag}: {problem}")
        reasons.append(problem or f"no {vendor} GPU")
    cpu.load(chosen)
    if gpu_choice is not None:
        kind, gpu, variant, libs, ngl = gpu_choice
        for lib in libs:
            ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
        if not cpu.load_backend(variant.path):
            raise BackendError(f"the {TITLE[kind]} variant failed to load ({variant.path})")
        total = (n_layers + 1) if n_layers else None
        layers = (f"{min(ngl, total)}/{total} layers" if total else
                  ("all layers" if ngl >= 999 else f"{ngl} layers"))
        return Selection(kind, f"{gpu.describe()}; {layers} offloaded", ngl, chosen.extra_bufts)
    extra = [chosen.label]
    if notes:
        extra.append("skipped: " + "; ".join(notes))
    if gpu_flag == "cpu":
        extra.append("GPU disabled by --gpu")
    elif all(r.startswith("no ") and r.endswith("GPU found") for r in reasons):
        extra.append("no NVIDIA or AMD GPU found")
    else:
        extra += [r for r in reasons if not (r.startswith("no ") and r.endswith("GPU found"))]
    return Selection("cpu", "; ".join(extra), 0, chosen.extra_bufts)


def _extract(archive_path: Optional[str], variant: Variant) -> str:
    from .archive import Archive
    from .extract import extract
    if archive_path is None:
        raise BackendError(f"the {variant.kind} variant is packed but no archive is open")
    with Archive.open(archive_path) as arch:
        folder = extract(arch, variant.packed)
    return os.path.join(folder, LIB_OF[variant.kind])


def report(sel: Selection) -> None:
    sys.stderr.write(f"pyfile: {sel.line()}\n")
    sys.stderr.flush()
