"""Choose the compute backend at run time and say which, and why, in one line.

The GPU backends are one registry, :data:`BACKENDS`: a record per backend (its ``--gpu``
names, library, device finder, runtime libraries, architecture check, install hint), from
which the ``--gpu`` choices, the packable variant kinds and the order of ``--gpu auto`` come.
That order: an NVIDIA GPU with a CUDA variant, an AMD GPU with a ROCm variant, a real
(discrete or integrated) GPU through Vulkan, then the best CPU variant. Each GPU choice must
pass the same child-process probe as CPU variants (the real model's first computation), so
a driver or kernel failure ends in a fallback (``auto``) or a clear error (explicit
``--gpu``), never a crash. Verdicts are cached per machine, driver, variant and model.
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from . import cpu
from . import fit
from . import hardware
from .engine import ModelSource, import_llama_cpp
from ..errors import BackendError
from ..container.manifest import Manifest

if TYPE_CHECKING:
    from .compile import Toolchain
    from ..container.archive import Archive


@dataclass(frozen=True)
class Backend:
    """One GPU backend: everything the launcher, the options and the builder know about it.

    Adding a backend is one record in :data:`BACKENDS` and one finder in ``hardware``.
    """

    kind: str  # variant kind: manifest key, --backend KIND=DIR, "backend KIND (...)" line
    gpu: str  # the --gpu value that asks for it
    aliases: Tuple[str, ...]  # other --gpu spellings
    title: str  # for messages: "CUDA"
    device: str  # whose GPUs, for "no ... GPU found": "NVIDIA"
    lib: str  # the ggml backend module a variant of this kind must contain
    find: Callable[[str, Mapping[str, str], bool], hardware.Finding]  # (root, env, explicit)
    needs: Tuple[str, ...]  # runtime libraries, when the variant's variant.json does not say
    lib_dirs: Callable[[Mapping[str, str]], List[str]]  # where users have those libraries
    arch_ok: Callable[[hardware.GPU, List[str]], bool]  # (GPU, the variant's archs)
    hint: str  # how to install missing runtime libraries
    driver_ok: Callable[[hardware.Finding, Dict[str, Any]], Optional[str]] = lambda f, r: None
    devices_env: Optional[str] = None  # ggml's device filter, set to the devices chosen
    made_by: Optional[str] = None  # the make target that builds it; `pyfile build` notes
    # in one line when none was built


def _env_dirs(env: Mapping[str, str]) -> List[str]:
    return [d for d in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]


def _cuda_dirs(env: Mapping[str, str]) -> List[str]:
    dirs = _env_dirs(env)
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if env.get(var):
            dirs += [os.path.join(env[var], "lib64"), os.path.join(env[var], "lib")]
    dirs += sorted(glob.glob("/usr/local/cuda*/lib64"), reverse=True)
    dirs += sorted(glob.glob("/usr/local/cuda*/lib"), reverse=True)
    dirs += ["/usr/lib/wsl/lib", "/usr/lib/x86_64-linux-gnu"]
    for sp in sys.path:  # PyTorch-style nvidia-* wheels
        dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "cu1*", "lib")), reverse=True)
        dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib")))
    return dirs


def _rocm_dirs(env: Mapping[str, str]) -> List[str]:
    dirs = _env_dirs(env)
    for var in ("ROCM_PATH", "HIP_PATH"):
        if env.get(var):
            dirs.append(os.path.join(env[var], "lib"))
    return dirs + sorted(glob.glob("/opt/rocm*/lib"), reverse=True)


def _system_dirs(env: Mapping[str, str]) -> List[str]:
    return _env_dirs(env) + ["/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64",
                             "/usr/lib", "/usr/lib/wsl/lib"]


BACKENDS: Tuple[Backend, ...] = (
    Backend("cuda", "nvidia", ("cuda", "cublas"), "CUDA", "NVIDIA", "libggml-cuda.so",
            lambda root, env, explicit: hardware.find_nvidia(root, env),
            ("libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13"), _cuda_dirs, fit.sm_ok,
            "pip install nvidia-cuda-runtime nvidia-cublas, or the CUDA 13 toolkit",
            driver_ok=fit.cuda_driver, made_by="make gpu"),
    Backend("rocm", "amd", ("rocm", "hip"), "ROCm", "AMD", "libggml-hip.so",
            lambda root, env, explicit: hardware.find_amd(root, env),
            ("libamdhip64.so.6",), _rocm_dirs, fit.gfx_ok,
            "install ROCm 6.1 or newer (its hipcc compiles the backend on first use)",
            made_by="make setup"),
    Backend("vulkan", "vulkan", ("vk",), "Vulkan", "Vulkan", "libggml-vulkan.so",
            lambda root, env, explicit: hardware.find_vulkan(root, env, explicit=explicit),
            ("libvulkan.so.1",), _system_dirs, fit.vulkan_ok,
            "install the Vulkan loader: libvulkan1 on Debian/Ubuntu, vulkan-loader on Fedora",
            devices_env="GGML_VK_VISIBLE_DEVICES", made_by="make setup"),
)
#: The folder of the file that holds packed variants (``<this>/<kind>/<files>``).
VARIANTS_MEMBER = ".pyfile/variants"
#: --gpu values that mean "no GPU".
CPU_NAMES = ("cpu", "disable", "disabled", "none")
#: Packable variant kinds and the library each must contain.
LIB_OF: Dict[str, str] = {b.kind: b.lib for b in BACKENDS}


def get(name: str) -> Backend:
    """The backend for a kind ("cuda") or a --gpu value or alias ("nvidia", "hip")."""
    for b in BACKENDS:
        if name in (b.kind, b.gpu, *b.aliases):
            return b
    raise KeyError(name)


def gpu_choices() -> Dict[str, str]:
    """Every accepted --gpu spelling -> its canonical value ("auto", "cpu" or a backend's)."""
    out = {"auto": "auto"}
    out.update((n, "cpu") for n in CPU_NAMES)
    for b in BACKENDS:
        out.update((n, b.gpu) for n in (b.gpu, b.kind, *b.aliases))
    return out


@dataclass
class Variant:
    """A GPU variant available to this run: installed beside the engine or packed in the file."""

    kind: str
    requires: Dict[str, Any]
    path: Optional[str] = None  # the library on disk (after extraction for packed ones)
    packed: List[Tuple[str, str]] = field(default_factory=list)  # (member, relative path)


@dataclass
class Selection:
    kind: str  # "cpu" or a backend's kind ("cuda", "rocm", "vulkan")
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
            prefix = f"{VARIANTS_MEMBER}/{kind}/"
            files = [(m, m[len(prefix):] if m.startswith(prefix) else m.rsplit("/", 1)[-1])
                     for m in spec.get("members", []) if isinstance(m, str)]
            out[kind] = Variant(kind, dict(spec.get("requires", {})), None, files)
    return out


def find_runtime_libs(kind: str, requires: Dict[str, Any],
                      search: Optional[List[str]] = None) -> Tuple[List[str], List[str]]:
    """Locate the GPU runtime libraries where users have them; return (found, missing)."""
    backend = get(kind)
    # variant.json's list, even an empty one (a CUDA variant that needs only the driver)
    needs = requires["needs"] if isinstance(requires.get("needs"), list) else list(backend.needs)
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
    """Existing folders where a backend's runtime libraries may be, most specific first."""
    return [d for d in get(kind).lib_dirs(os.environ) if os.path.isdir(d)]


def plan_gpu(backend: Union[Backend, str], finding: hardware.Finding, variant: Optional[Variant],
             libs: Callable[[str, Dict[str, Any]], Tuple[List[str], List[str]]]
             ) -> Tuple[Optional[hardware.GPU], Optional[str], List[str]]:
    """(GPU to use, problem, runtime libs) for one backend; pure apart from ``libs``."""
    be = backend if isinstance(backend, Backend) else get(backend)
    if not finding.gpus:
        return None, finding.problem or f"no {be.device} GPU found", []
    gpu = max(finding.gpus, key=lambda g: g.memory)
    if variant is None:
        return None, (f"{gpu.name} found, but this pyfile carries no {be.title} variant "
                      f"(build one with scripts/build-variant.sh {be.kind}, then build the "
                      f"pyfile again)"), []
    archs = [str(a) for a in variant.requires.get("archs", [])]
    if not be.arch_ok(gpu, archs):
        built = f" (built for {', '.join(archs)})" if archs else ""
        return None, (f"{gpu.name} is {gpu.arch}, which the {be.title} variant has no kernels "
                      f"for{built}"), []
    problem = be.driver_ok(finding, variant.requires) or fit.glibc(variant.requires, be.title)
    if problem:
        return None, problem, []
    found, missing = libs(be.kind, variant.requires)
    if missing:
        return None, (f"{gpu.name} found, but the {be.title} runtime libraries are missing: "
                      f"{', '.join(missing)} ({be.hint})"), []
    return gpu, None, found


@dataclass
class _Choice:
    backend: Backend
    gpu: hardware.GPU
    count: int  # devices of the chosen class (ggml uses them all)
    variant: Variant
    libs: List[str]
    ngl: int


def select(source: ModelSource, gpu_flag: str, verbose: bool = False,
           manifest: Optional[Manifest] = None, archive_path: Optional[str] = None,
           n_gpu_layers: Optional[int] = None, n_layers: Optional[int] = None,
           root: Optional[str] = None, recompile: bool = False) -> Selection:
    """Load the best usable backend into this process and describe it.

    ``gpu_flag`` is "auto", "cpu" or a backend's --gpu value. ``auto`` tries the backends
    in :data:`BACKENDS` order, then the CPU; an explicit backend that cannot be used raises
    :class:`BackendError` naming what is missing.
    """
    root = root or hardware.system_root()
    llama_cpp = import_llama_cpp()
    from . import logs
    logs.route(llama_cpp, verbose)  # ggml logs while loading backends; quiet unless -v
    engine = getattr(llama_cpp, "__version__", "?")
    verdicts = cpu.Verdicts()  # one read of the verdict file serves CPU and GPU choices
    chosen, notes = cpu.choose(llama_cpp, source.path, source.offset, source.name,
                               source.size, engine, verdicts)
    variants = installed_variants(llama_cpp)
    variants.update(packed_variants(manifest))
    # ggml's GPU sources ("compile": "ggml-cuda"), carried under the ROCm kind; they build
    # CUDA too (compile/)
    sources = next((v for v in variants.values() if v.requires.get("compile")), None)
    explicit = gpu_flag not in ("auto", "cpu")
    order = () if gpu_flag == "cpu" else ((get(gpu_flag),) if explicit else BACKENDS)
    absent: List[Backend] = []  # no such hardware at all: summarised, not explained
    reasons: List[str] = []  # hardware there but not usable: each says why
    choice: Optional[_Choice] = None
    for be in order:
        finding = be.find(root, os.environ, explicit)
        choice, problem = _attempt(be, finding, variants.get(be.kind), sources, source,
                                   chosen, engine, verdicts, archive_path, n_gpu_layers,
                                   recompile)
        if choice is not None:
            break
        if explicit:
            raise BackendError(f"--gpu {gpu_flag}: {problem}")
        if finding.present:
            reasons.append(f"{be.title}: {problem}")
        else:
            absent.append(be)
    cpu.load(chosen)
    if choice is not None:
        for lib in choice.libs:
            ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
        if not cpu.load_backend(choice.variant.path or ""):
            raise BackendError(f"the {choice.backend.title} variant failed to load "
                               f"({choice.variant.path})")
        ngl = choice.ngl
        total = (n_layers + 1) if n_layers else None
        layers = (f"{min(ngl, total)}/{total} layers" if total else
                  ("all layers" if ngl >= 999 else f"{ngl} layers"))
        more = f" (+{choice.count - 1} more)" if choice.count > 1 else ""
        built = choice.variant.requires.get("built")
        return Selection(choice.backend.kind, "; ".join(
            [f"{choice.gpu.describe()}{more}; {layers} offloaded",
             *([f"built here by {built}"] if built else []), *reasons]), ngl,
            chosen.extra_bufts)
    extra = [chosen.label]
    if notes:
        extra.append("skipped: " + "; ".join(notes))
    if gpu_flag == "cpu":
        extra.append("GPU disabled by --gpu")
    else:
        extra += reasons
        if absent and not reasons:
            names = [b.device for b in absent]
            extra.append("no " + (" or ".join(names) if len(names) < 3 else
                                  ", ".join(names[:-1]) + " or " + names[-1]) + " GPU found")
    return Selection("cpu", "; ".join(extra), 0, chosen.extra_bufts)


def _attempt(be: Backend, finding: hardware.Finding, variant: Optional[Variant],
             sources: Optional[Variant], source: ModelSource, chosen: cpu.Candidate,
             engine: str, verdicts: cpu.Verdicts, archive_path: Optional[str],
             n_gpu_layers: Optional[int], recompile: bool = False
             ) -> Tuple[Optional[_Choice], Optional[str]]:
    """Plan one backend and run (or recall) its probe: (choice, None) or (None, problem).

    ``sources`` are the GPU sources the file carries: a backend with a compiler for them
    (``compile.TOOLCHAINS``) is compiled here when the file has nothing else for it (ROCm),
    when its prebuilt variant cannot serve this GPU, with ``--recompile``, or when an earlier
    run compiled it."""
    gpu, problem, libs = plan_gpu(be, finding, variant, find_runtime_libs)
    if variant is not None and variant is sources:
        if gpu is None:
            return None, problem
        from .compile import CompileError  # only files carrying sources need the compiler
        try:
            variant = _compile(be, archive_path, sources, finding, gpu, recompile)
        except CompileError as e:
            return None, f"cannot compile the {be.title} backend here ({e})"
    elif sources is not None and finding.gpus and _compiles(be):
        from .compile import CompileError
        best = max(finding.gpus, key=lambda g: g.memory)
        try:  # a usable prebuilt variant is replaced only by one compiled already or asked for
            built: Optional[Variant] = (
                _compiled_earlier(be, archive_path, sources, best)
                if gpu is not None and not recompile else
                _compile(be, archive_path, sources, finding, best, recompile))
        except CompileError as e:
            built = None
            if gpu is None:
                problem = f"{problem}; cannot compile one here ({e})"
        if built is not None:
            gpu, variant, libs = best, built, []
    if gpu is None or variant is None:
        return None, problem
    set_env = be.devices_env is not None and be.devices_env not in os.environ
    if set_env:  # ggml's own filter: only the devices we chose (children inherit it)
        os.environ[str(be.devices_env)] = ",".join(str(g.index) for g in finding.gpus)
    if variant.path is None:
        variant.path = _extract(archive_path, variant)
    ngl = 999 if n_gpu_layers is None or n_gpu_layers < 0 else n_gpu_layers
    key = cpu.verdict_key(engine, be.kind, cpu.file_id(variant.path), gpu.name,
                          str(finding.driver), source.name, str(source.size), str(ngl),
                          os.environ.get(be.devices_env or "", ""))
    seen = verdicts.get(key)
    if seen is None:
        ok, why = cpu.run_probe({"preload": libs, "backends": [p for p in (
            chosen.path, variant.path) if p], "path": source.path,
            "offset": source.offset, "extra": chosen.extra_bufts, "ngl": ngl})
        verdicts.put(key, {"ok": ok, "why": why, "variant": be.kind})
    else:
        ok, why = bool(seen.get("ok")), str(seen.get("why"))
    if ok:
        return _Choice(be, gpu, len(finding.gpus), variant, libs, ngl), None
    if set_env:
        os.environ.pop(str(be.devices_env), None)
    return None, f"the {be.title} variant failed its first computation on {gpu.name} ({why})"


def _compiles(be: Backend) -> bool:
    from .compile import TOOLCHAINS
    return be.kind in TOOLCHAINS


def _compile(be: Backend, archive_path: Optional[str], sources: Variant,
             finding: hardware.Finding, gpu: hardware.GPU, force: bool) -> Variant:
    """The backend compiled from the carried sources for ``gpu`` (see ``compile``): from the
    cache or compiled now (``force``: compiled again). Raises ``CompileError``."""
    from . import compile
    from ..container.extract import extract, folder_key
    tc = compile.TOOLCHAINS[be.kind].find(os.environ)
    tc.check(finding, gpu)
    with _open_sources(archive_path) as arch:  # one opening: their digest, then their folder
        source_key = folder_key(arch, sources.packed)
        folder = extract(arch, sources.packed)
    llama_cpp = import_llama_cpp()
    base = os.path.join(os.path.dirname(os.path.abspath(llama_cpp.__file__)), "lib",
                        "libggml-base.so")
    lib = compile.compiled(tc, gpu, os.path.join(folder, compile.SOURCES_TAR), source_key,
                           base, force)
    return _built(be, tc, lib)


def _compiled_earlier(be: Backend, archive_path: Optional[str], sources: Variant,
                      gpu: hardware.GPU) -> Optional[Variant]:
    """What an earlier run compiled for ``gpu`` with this machine's compiler, or None (no
    compiler: nothing more is done, this runs at every start on such a machine)."""
    from . import compile
    from ..container.extract import folder_key
    path = compile.TOOLCHAINS[be.kind].locate(os.environ)
    if path is None:
        return None
    tc = compile.TOOLCHAINS[be.kind].at(path)
    with _open_sources(archive_path) as arch:
        lib = compile.cached(tc, folder_key(arch, sources.packed), gpu)
    return _built(be, tc, lib) if lib else None


def _open_sources(archive_path: Optional[str]) -> "Archive":
    """The file that carries the sources, opened."""
    from .compile import CompileError
    from ..container.archive import Archive
    if archive_path is None:
        raise CompileError("the sources are packed but no archive is open")
    return Archive.open(archive_path)


def _built(be: Backend, tc: "Toolchain", lib: str) -> Variant:
    """A library compiled on this machine, named in the backend line ("built here by ...")."""
    return Variant(be.kind, {"built": f"{tc.program} {tc.version}"}, lib)


def _extract(archive_path: Optional[str], variant: Variant) -> str:
    """A packed variant's library, unpacked (once) into the native cache."""
    from ..container.archive import Archive
    from ..container.extract import extract
    if archive_path is None:
        raise BackendError(f"the {variant.kind} variant is packed but no archive is open")
    with Archive.open(archive_path) as arch:
        folder = extract(arch, variant.packed)
    return os.path.join(folder, LIB_OF[variant.kind])


def report(sel: Selection) -> None:
    sys.stderr.write(f"pyfile: {sel.line()}\n")
    sys.stderr.flush()
