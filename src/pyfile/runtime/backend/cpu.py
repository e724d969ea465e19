"""CPU variants of the engine (ggml's dynamically loaded CPU backends), chosen safely.

ggml ships one ``libggml-cpu-<variant>.so`` per x86-64 microarchitecture level and scores
each against CPUID. Its top pick can still die with SIGILL (the AMX variant does on hosts
whose hypervisor hides AMX state), so the first time a variant is used on a machine, a
child process runs the real model's first computation with it. A crash there marks the
variant bad and the next one is tried; the verdict is remembered in the cache, keyed by
CPU, engine build, variant and model.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from ..errors import BackendError

PROBE_TIMEOUT = 300

#: What each variant adds, for the one-line report.
VARIANT_FEATURES = {
    "x64": "baseline x86-64", "sse42": "SSE4.2", "sandybridge": "AVX", "ivybridge": "AVX+F16C",
    "piledriver": "AVX+FMA", "haswell": "AVX2", "skylakex": "AVX-512",
    "cannonlake": "AVX-512 VBMI", "cascadelake": "AVX-512 VNNI",
    "icelake": "AVX-512 VBMI+VNNI", "cooperlake": "AVX-512 BF16", "zen4": "AVX-512 BF16+VBMI",
    "alderlake": "AVX-VNNI", "sapphirerapids": "AMX",
}

# Runs in a child process: load the backends, load the model from its offset, decode a batch.
PROBE = r"""
import ctypes, json, os, sys
spec = json.loads(sys.argv[1])
from llama_cpp import llama_cpp as L
_quiet = L.llama_log_callback(lambda level, text, user: None)
L.llama_log_set(_quiet, None)
for lib in spec["preload"]:
    ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
if spec["backends"]:
    ggml = ctypes.CDLL("libggml.so.0")
    ggml.ggml_backend_load.restype = ctypes.c_void_p
    ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
    for lib in spec["backends"]:
        reg = ggml.ggml_backend_load(lib.encode())
        if not reg:
            sys.exit(3)
        if not ggml.ggml_backend_reg_dev_count(reg):  # loaded, but its driver gave no device
            sys.exit(7)
libc = ctypes.CDLL(None)
libc.fdopen.restype = ctypes.c_void_p
libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
libc.fseeko.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
libc.fclose.argtypes = [ctypes.c_void_p]
fp = libc.fdopen(os.open(spec["path"], os.O_RDONLY), b"rb")
libc.fseeko(fp, spec["offset"], 0)
mp = L.llama_model_default_params()
mp.n_gpu_layers = spec["ngl"]
mp.use_extra_bufts = spec["extra"]
model = L.llama_model_load_from_file_ptr(fp, mp)
libc.fclose(fp)
if not model:
    sys.exit(4)
cp = L.llama_context_default_params()
cp.n_ctx, cp.n_batch, cp.n_ubatch = 256, 64, 64
cp.n_threads = cp.n_threads_batch = 2
ctx = L.llama_init_from_model(model, cp)
if not ctx:
    sys.exit(5)
n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
n = 16
tokens = (L.llama_token * n)(*[(7 * i + 1) % n_vocab for i in range(n)])
sys.exit(0 if L.llama_decode(ctx, L.llama_batch_get_one(tokens, n)) == 0 else 6)
"""


@dataclass
class Candidate:
    variant: str  # "builtin" when the engine was not built with loadable CPU variants
    path: Optional[str]
    score: int
    extra_bufts: bool = True

    @property
    def label(self) -> str:
        feats = VARIANT_FEATURES.get(self.variant)
        name = "built-in CPU backend" if self.variant == "builtin" else f"{self.variant} variant"
        return f"{name}, {feats}" if feats else name


def variant_dirs(llama_cpp_module: Any) -> List[str]:
    """Where loadable CPU variants may live for this llama_cpp install."""
    pkg = os.path.dirname(os.path.abspath(llama_cpp_module.__file__))
    dirs = []
    override = os.environ.get("PYFILE_BACKEND_DIR")
    if override:
        dirs.append(override)
    lib_path = os.environ.get("LLAMA_CPP_LIB_PATH")
    if lib_path:
        dirs.append(lib_path)
    dirs += [os.path.join(pkg, "lib"), os.path.join(os.path.dirname(pkg), "bin")]
    return dirs


def find_variants(dirs: List[str]) -> Dict[str, str]:
    found: Dict[str, str] = {}
    for d in dirs:
        for path in sorted(glob.glob(os.path.join(d, "libggml-cpu-*.so"))):
            name = os.path.basename(path)[len("libggml-cpu-"):-len(".so")]
            found.setdefault(name, path)
    return found


def score(path: str) -> int:
    """ggml's own CPUID score for a variant (0 = this CPU lacks what it needs)."""
    try:
        lib = ctypes.CDLL(path)
        fn = lib.ggml_backend_score
    except (OSError, AttributeError):
        return 0
    fn.restype = ctypes.c_int
    fn.argtypes = []
    return int(fn())


def candidates(llama_cpp_module: Any, verdicts: Optional["Verdicts"] = None
               ) -> List[Candidate]:
    """Runnable CPU candidates, best first.

    Scoring loads every variant library (14 dlopens, ~20 ms a start); with ``verdicts`` the
    scores are remembered per CPU and set of variant files, so later starts load only the
    chosen one.
    """
    forced = os.environ.get("PYFILE_CPU_VARIANT")
    variants = find_variants(variant_dirs(llama_cpp_module))
    if not variants:
        return [Candidate("builtin", None, 1, True), Candidate("builtin", None, 1, False)]
    if forced:
        if forced not in variants:
            raise BackendError(f"PYFILE_CPU_VARIANT={forced}: no such CPU variant "
                               f"(have: {', '.join(sorted(variants))})")
        return [Candidate(forced, variants[forced], 1)]
    key = verdict_key("scores", *(f"{n}={file_id(p)}" for n, p in sorted(variants.items())))
    known = (verdicts.get(key) or {}).get("scores") if verdicts is not None else None
    if not (isinstance(known, dict) and set(known) == set(variants)
            and all(isinstance(v, int) for v in known.values())):
        known = {name: score(path) for name, path in variants.items()}
        if verdicts is not None:
            verdicts.put(key, {"scores": known})
    scored = [Candidate(name, path, known[name]) for name, path in variants.items()]
    ranked = sorted((c for c in scored if c.score > 0), key=lambda c: -c.score)
    if not ranked:
        raise BackendError("none of the engine's CPU variants can run on this CPU")
    return ranked


# -- verdict cache ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _cpu_signature() -> str:
    """Read once per process: every verdict key of a run needs it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [ln for ln in f.read(1 << 20).splitlines()
                     if ln.startswith(("model name", "flags", "vendor_id"))]
    except OSError:
        lines = []
    import platform
    return "\n".join(sorted(set(lines))) + platform.machine()


def file_id(path: Optional[str]) -> str:
    """Identity of a library file for verdict keys (size and mtime; 'builtin' for none)."""
    if not path:
        return "builtin"
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{int(st.st_mtime)}"


def verdict_key(*parts: str) -> str:
    raw = "|".join([_cpu_signature(), *parts])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


class Verdicts:
    """A small JSON file of probe results; unwritable caches degrade to memory only."""

    def __init__(self, path: Optional[str] = None) -> None:
        from ..container.paths import run_cache
        self.path = path or os.path.join(run_cache(), "verdicts.json")
        self.data: Dict[str, Dict[str, Any]] = {}
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            if isinstance(data, dict):
                self.data = {k: v for k, v in data.items() if isinstance(v, dict)}
        except (OSError, ValueError):
            pass

    def get(self, key: str) -> Optional[Dict[str, Any]]:
        return self.data.get(key)

    def put(self, key: str, value: Dict[str, Any]) -> None:
        self.data[key] = value
        from ..container.atomic import write_bytes
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            write_bytes(self.path, json.dumps(self.data, indent=1, sort_keys=True).encode())
        except OSError:
            pass  # a read-only or full cache only costs a probe next time


def run_probe(spec: Dict[str, Any]) -> Tuple[bool, str]:
    """Run the model's first computation in a child process with the given backends."""
    cmd = [sys.executable, "-c", PROBE, json.dumps(spec)]
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return True, "probe timed out (assumed usable)"
    if r.returncode == 0:
        return True, "ok"
    if r.returncode < 0:
        import signal
        try:
            name = signal.Signals(-r.returncode).name
        except ValueError:
            name = f"signal {-r.returncode}"
        return False, f"crashed with {name}"
    reasons = {3: "would not load", 4: "could not load the model", 5: "no context",
               6: "decode failed", 7: "it loaded, but its driver reported no device"}
    if r.returncode not in reasons:  # the probe itself broke: no verdict on the variant
        tail = r.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise BackendError(f"the backend probe failed to run (exit {r.returncode}: {tail[0]})")
    return False, reasons[r.returncode]


def probe(c: Candidate, path: str, offset: int) -> Tuple[bool, str]:
    return run_probe({"preload": [], "backends": [c.path] if c.path else [], "path": path,
                      "offset": offset, "extra": c.extra_bufts, "ngl": 0})


def choose(llama_cpp_module: Any, model_path: str, offset: int, model_name: str,
           model_size: int, engine_version: str, verdicts: Optional[Verdicts] = None
           ) -> Tuple[Candidate, List[str]]:
    """The best candidate that passes (or once passed) its probe, and notes on the rest."""
    verdicts = verdicts or Verdicts()
    notes: List[str] = []
    for c in candidates(llama_cpp_module, verdicts):
        key = verdict_key(engine_version, c.variant, file_id(c.path), str(c.extra_bufts),
                          model_name, str(model_size))
        seen = verdicts.get(key)
        if seen is None:
            ok, why = probe(c, model_path, offset)
            verdicts.put(key, {"ok": ok, "why": why, "variant": c.variant})
        else:
            ok, why = bool(seen.get("ok")), str(seen.get("why", ""))
        if ok:
            return c, notes
        notes.append(f"{c.variant}{'' if c.extra_bufts else ' (no repack)'} {why}")
    raise BackendError("no CPU variant of the engine can run this model here: "
                       + "; ".join(notes))


def load_backend(path: str) -> bool:
    """Register a backend library (CPU variant, CUDA, ROCm) with ggml in this process."""
    ggml = ctypes.CDLL("libggml.so.0")
    ggml.ggml_backend_load.restype = ctypes.c_void_p
    ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
    return bool(ggml.ggml_backend_load(path.encode()))


def load(c: Candidate) -> None:
    """Register the chosen CPU variant with ggml in this process."""
    if c.path is not None and not load_backend(c.path):
        raise BackendError(f"the {c.variant} CPU variant failed to load ({c.path})")
