"""What GPUs this machine has, found without loading any GPU library into this process.

Every function takes ``root`` (default ``/``) and ``env`` so tests can point them at a
simulated ``/proc``, ``/sys`` and ``/dev`` tree. The only code that touches a driver is
:data:`CUDA_PROBE`, run in a child process so a broken driver cannot crash us.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

GiB = 1 << 30


@dataclass
class GPU:
    vendor: str  # "nvidia" or "amd"
    index: int
    name: str
    memory: int  # bytes
    arch: str  # "sm_90", "gfx1100"
    integrated: bool = False

    def describe(self) -> str:
        return f"{self.name}, {self.memory / GiB:.0f} GiB, {self.arch}"


@dataclass
class Finding:
    """What was found for one vendor: usable GPUs, or why there are none."""

    vendor: str
    gpus: List[GPU] = field(default_factory=list)
    problem: Optional[str] = None  # why none is usable, in words a user can act on
    present: bool = False  # some sign of this vendor's hardware or driver
    driver: Optional[str] = None


def _read(path: str, limit: int = 1 << 16) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(limit)
    except OSError:
        return None


def _visible(env: Mapping[str, str], *names: str) -> Optional[List[str]]:
    """Device filter from CUDA_VISIBLE_DEVICES-style variables (None = no filter)."""
    for name in names:
        if name in env:
            value = env[name].strip()
            if value in ("", "-1", "none", "NoDevFiles"):
                return []
            return [v.strip() for v in value.split(",") if v.strip()]
    return None


# -- NVIDIA ---------------------------------------------------------------------------------

CUDA_PROBE = r"""
import ctypes, json, sys
out = {"gpus": []}
try:
    cu = ctypes.CDLL("libcuda.so.1")
except OSError as e:
    print(json.dumps({"error": "libcuda.so.1 not found (%s)" % e})); sys.exit(0)
rc = cu.cuInit(0)
if rc:
    print(json.dumps({"error": "cuInit failed with CUDA error %d" % rc, "code": rc})); sys.exit(0)
v = ctypes.c_int()
cu.cuDriverGetVersion(ctypes.byref(v))
out["driver_cuda"] = v.value
n = ctypes.c_int()
cu.cuDeviceGetCount(ctypes.byref(n))
for i in range(n.value):
    dev = ctypes.c_int()
    cu.cuDeviceGet(ctypes.byref(dev), i)
    name = ctypes.create_string_buffer(256)
    cu.cuDeviceGetName(name, 256, dev)
    major, minor = ctypes.c_int(), ctypes.c_int()
    cu.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)
    cu.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)
    mem = ctypes.c_size_t()
    cu.cuDeviceTotalMem_v2(ctypes.byref(mem), dev)
    integrated = ctypes.c_int()
    cu.cuDeviceGetAttribute(ctypes.byref(integrated), 18, dev)
    out["gpus"].append({"name": name.value.decode(errors="replace"), "major": major.value,
                        "minor": minor.value, "memory": mem.value,
                        "integrated": bool(integrated.value)})
print(json.dumps(out))
"""

CUDA_ERRORS = {
    100: "no CUDA-capable device is detected",
    35: "the NVIDIA driver is older than this CUDA runtime needs",
    999: "unknown CUDA error (often missing /dev/nvidia* device nodes in a container)",
    304: "the driver could not be initialised (OS call failed)",
    3: "CUDA is not initialised",
}


def run_cuda_probe(env: Optional[Mapping[str, str]] = None, timeout: float = 60) -> Dict[str, Any]:
    """Ask libcuda (in a child process) for devices; returns the probe's JSON."""
    try:
        r = subprocess.run([sys.executable, "-c", CUDA_PROBE], capture_output=True, text=True,
                           timeout=timeout, env=dict(env) if env is not None else None,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": "the CUDA driver did not answer within a minute"}
    if r.returncode != 0:
        return {"error": f"the CUDA driver probe crashed (exit {r.returncode})"}
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": "the CUDA driver probe gave no answer"}


def find_nvidia(root: str = "/", env: Mapping[str, str] = os.environ,
                probe: Callable[[], Dict[str, Any]] = run_cuda_probe) -> Finding:
    f = Finding("nvidia")
    version = _read(os.path.join(root, "proc/driver/nvidia/version"))
    wsl = os.path.exists(os.path.join(root, "dev/dxg"))
    nodes = sorted(glob.glob(os.path.join(root, "dev/nvidia[0-9]*")))
    if version:
        first = version.splitlines()[0] if version.splitlines() else ""
        parts = [p for p in first.split() if p[:1].isdigit() and "." in p]
        f.driver = parts[0] if parts else "unknown"
    f.present = bool(version or nodes or wsl)
    if not f.present:
        f.problem = "no NVIDIA GPU found"
        return f
    visible = _visible(env, "CUDA_VISIBLE_DEVICES")
    if visible == []:
        f.problem = "CUDA_VISIBLE_DEVICES hides every NVIDIA GPU"
        return f
    if not wsl and not nodes:
        f.problem = ("an NVIDIA driver is loaded but there are no /dev/nvidia* device nodes "
                     "(in a container: run it with the GPUs exposed, e.g. --gpus all)")
        return f
    if not wsl and not version:
        f.problem = "NVIDIA device nodes exist but no driver is loaded (/proc/driver/nvidia)"
        return f
    answer = probe()
    if "error" in answer:
        code = answer.get("code")
        f.problem = f"{answer['error']}" + (f": {CUDA_ERRORS[code]}" if code in CUDA_ERRORS else "")
        return f
    for i, g in enumerate(answer.get("gpus", [])):
        f.gpus.append(GPU("nvidia", i, str(g.get("name", "NVIDIA GPU")), int(g.get("memory", 0)),
                          f"sm_{int(g.get('major', 0))}{int(g.get('minor', 0))}",
                          bool(g.get("integrated"))))
    if not f.gpus:
        f.problem = "the NVIDIA driver reports no devices"
    return f


# -- AMD ------------------------------------------------------------------------------------

def _gfx_name(version: int) -> str:
    """KFD's gfx_target_version (e.g. 90010, 110000) as a gfx name (gfx90a, gfx1100)."""
    major, minor, step = version // 10000, (version // 100) % 100, version % 100
    return f"gfx{major}{minor:x}{step:x}"


def _override_gfx(value: str) -> Optional[str]:
    """HSA_OVERRIDE_GFX_VERSION "10.3.0" -> "gfx1030"."""
    try:
        major, minor, step = (int(x) for x in value.strip().split("."))
    except ValueError:
        return None
    return f"gfx{major}{minor:x}{step:x}"


def find_amd(root: str = "/", env: Mapping[str, str] = os.environ,
             access: Callable[[str, int], bool] = os.access) -> Finding:
    f = Finding("amd")
    nodes = sorted(glob.glob(os.path.join(root, "sys/class/kfd/kfd/topology/nodes/*/properties")),
                   key=lambda p: int(os.path.basename(os.path.dirname(p)) or 0))
    candidates = []
    for path in nodes:
        props: Dict[str, int] = {}
        for line in (_read(path) or "").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                props[parts[0]] = int(parts[1])
        if props.get("simd_count", 0) <= 0 or not props.get("gfx_target_version"):
            continue  # a CPU node
        candidates.append(props)
    f.present = bool(candidates)
    if not candidates:
        f.problem = "no AMD GPU found"
        return f
    version = _read(os.path.join(root, "sys/module/amdgpu/version"))
    f.driver = version.strip() if version else None
    kfd = os.path.join(root, "dev/kfd")
    if not os.path.exists(kfd):
        f.problem = "an AMD GPU is present but /dev/kfd is missing (amdgpu driver not loaded?)"
        return f
    if not access(kfd, os.R_OK | os.W_OK):
        f.problem = ("no permission to use /dev/kfd: add your user to the 'render' and "
                     "'video' groups")
        return f
    visible = _visible(env, "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL")
    override = _override_gfx(env.get("HSA_OVERRIDE_GFX_VERSION", "")) \
        if env.get("HSA_OVERRIDE_GFX_VERSION") else None
    for i, props in enumerate(candidates):
        if visible is not None and str(i) not in visible:
            continue
        minor = props.get("drm_render_minor", -1)
        vram = _read(os.path.join(root, f"sys/class/drm/renderD{minor}/device/mem_info_vram_total"))
        memory = int(vram) if vram and vram.strip().isdigit() else 0
        name_raw = _read(os.path.join(root, f"sys/class/drm/renderD{minor}/device/product_name"))
        arch = override or _gfx_name(props["gfx_target_version"])
        integrated = props.get("cpu_cores_count", 0) > 0 or memory < GiB
        f.gpus.append(GPU("amd", i, (name_raw or "").strip() or f"AMD {arch}", memory, arch,
                          integrated))
    discrete = [g for g in f.gpus if not g.integrated]
    if f.gpus and not discrete and env.get("PYFILE_ALLOW_IGPU") != "1":
        f.problem = ("only an integrated AMD GPU was found (ignored; set PYFILE_ALLOW_IGPU=1 "
                     "to use it)")
        f.gpus = []
    elif discrete and env.get("PYFILE_ALLOW_IGPU") != "1":
        f.gpus = discrete
    if not f.gpus and not f.problem:
        f.problem = "HIP_VISIBLE_DEVICES hides every AMD GPU"
    return f
