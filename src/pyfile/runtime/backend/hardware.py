"""What GPUs this machine has, found without loading any GPU library into this process.

Every function takes ``root`` (default ``/``) and ``env`` so tests can point them at a
simulated ``/proc``, ``/sys`` and ``/dev`` tree. The only code that touches a driver is
:data:`CUDA_PROBE` and :data:`VULKAN_PROBE`, each run in a child process so a broken driver
cannot crash us.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

from ..container import versions

GiB = 1 << 30


@dataclass
class GPU:
    vendor: str  # "nvidia", "amd" (CUDA/ROCm finders) or "vulkan"
    index: int  # the device's index for its API (CUDA ordinal, KFD node, Vulkan device)
    name: str
    memory: int  # bytes
    arch: str  # "sm_90", "gfx1100", "Vulkan 1.3"
    integrated: bool = False
    software: bool = False  # a CPU pretending to be a GPU (Mesa's lavapipe/llvmpipe)

    def describe(self) -> str:
        kind = ", software" if self.software else (", integrated" if self.integrated else "")
        return f"{self.name}, {self.memory / GiB:.0f} GiB, {self.arch}{kind}"


@dataclass
class Finding:
    """What was found for one vendor: usable GPUs, or why there are none."""

    vendor: str
    gpus: List[GPU] = field(default_factory=list)
    problem: Optional[str] = None  # why none is usable, in words a user can act on
    present: bool = False  # some sign of this vendor's hardware or driver
    driver: Optional[str] = None
    api: Optional[int] = None  # the newest CUDA version the driver supports (12040 = 12.4)


#: Lets tests (and anyone reproducing a report) show the finders a simulated machine: a
#: folder holding ``proc/``, ``sys/`` and ``dev/`` as the real ones would.
ROOT_ENV = "PYFILE_HARDWARE_ROOT"


def system_root(env: Mapping[str, str] = os.environ) -> str:
    return env.get(ROOT_ENV) or "/"


def glibc_version() -> Optional[str]:
    """This process's glibc ("2.31"), None on another C library."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return None
    name, _, version = text.partition(" ")
    return version if name == "glibc" and version else None


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


def _run_probe(code: str, what: str, env: Optional[Mapping[str, str]], timeout: float
               ) -> Dict[str, Any]:
    """Run a driver probe in a child process; its last stdout line is JSON."""
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=timeout, env=dict(env) if env is not None else None,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"the {what} driver did not answer within {timeout:.0f} s"}
    if r.returncode != 0:
        return {"error": f"the {what} driver probe crashed (exit {r.returncode})"}
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"the {what} driver probe gave no answer"}


def run_cuda_probe(env: Optional[Mapping[str, str]] = None, timeout: float = 60) -> Dict[str, Any]:
    """Ask libcuda (in a child process) for devices; returns the probe's JSON."""
    return _run_probe(CUDA_PROBE, "CUDA", env, timeout)


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
    if isinstance(answer.get("driver_cuda"), int) and answer["driver_cuda"] > 0:
        f.api = answer["driver_cuda"]
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
        major, minor, step = versions.parse(value)
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


# -- Vulkan ---------------------------------------------------------------------------------

# Runs in a child process: the Vulkan loader's view of the devices, through the C API with
# ctypes (only the leading fields of the property structs are read; the buffers are larger
# than the structs). Fails soft: every outcome is one JSON line.
VULKAN_PROBE = r"""
import ctypes, json, struct, sys
C = ctypes
try:
    vk = C.CDLL("libvulkan.so.1")
except OSError as e:
    print(json.dumps({"error": "loader", "detail": str(e)})); sys.exit(0)
class App(C.Structure):
    _fields_ = [("sType", C.c_int), ("pNext", C.c_void_p), ("name", C.c_char_p),
                ("version", C.c_uint32), ("engine", C.c_char_p), ("engineVersion", C.c_uint32),
                ("apiVersion", C.c_uint32)]
class Info(C.Structure):
    _fields_ = [("sType", C.c_int), ("pNext", C.c_void_p), ("flags", C.c_uint32),
                ("app", C.POINTER(App)), ("nLayers", C.c_uint32), ("layers", C.c_void_p),
                ("nExtensions", C.c_uint32), ("extensions", C.c_void_p)]
app = App(0, None, b"pyfile", 1, b"pyfile", 1, (1 << 22) | (2 << 12))  # Vulkan 1.2
info = Info(1, None, 0, C.pointer(app), 0, None, 0, None)
inst = C.c_void_p()
vk.vkCreateInstance.argtypes = [C.c_void_p, C.c_void_p, C.c_void_p]
rc = vk.vkCreateInstance(C.byref(info), None, C.byref(inst))
if rc:
    print(json.dumps({"error": "instance", "code": rc})); sys.exit(0)
vk.vkEnumeratePhysicalDevices.argtypes = [C.c_void_p, C.c_void_p, C.c_void_p]
for fn in ("vkGetPhysicalDeviceProperties", "vkGetPhysicalDeviceMemoryProperties",
           "vkGetPhysicalDeviceFeatures2", "vkDestroyInstance"):
    getattr(vk, fn).argtypes = [C.c_void_p, C.c_void_p]
n = C.c_uint32()
vk.vkEnumeratePhysicalDevices(inst, C.byref(n), None)
handles = (C.c_void_p * n.value)()
vk.vkEnumeratePhysicalDevices(inst, C.byref(n), handles)
out = {"devices": []}
for h in handles[:n.value]:
    props = C.create_string_buffer(2048)  # VkPhysicalDeviceProperties: 824 bytes
    vk.vkGetPhysicalDeviceProperties(h, props)
    api, driver, vendor, device, dtype = struct.unpack_from("<5I", props.raw, 0)
    name = props.raw[20:276].split(b"\0")[0].decode("utf-8", "replace")
    mem = C.create_string_buffer(1024)  # VkPhysicalDeviceMemoryProperties: 520 bytes
    vk.vkGetPhysicalDeviceMemoryProperties(h, mem)
    heaps = struct.unpack_from("<I", mem.raw, 260)[0]
    local = [struct.unpack_from("<QI", mem.raw, 264 + 16 * i) for i in range(min(heaps, 16))]
    fp16 = False
    if api >= (1 << 22) | (1 << 12):  # Vulkan 1.1: VkPhysicalDeviceVulkan11Features
        v11 = C.create_string_buffer(256)
        struct.pack_into("<I", v11, 0, 49)
        feats = C.create_string_buffer(512)
        struct.pack_into("<IIQ", feats, 0, 1000059000, 0, C.addressof(v11))
        vk.vkGetPhysicalDeviceFeatures2(h, feats)
        fp16 = struct.unpack_from("<I", v11.raw, 16)[0] != 0  # storageBuffer16BitAccess
    out["devices"].append({"name": name, "type": dtype, "api": api, "driver": driver,
                           "vendor": vendor, "memory": max([s for s, f in local if f & 1] or [0]),
                           "fp16": fp16})
vk.vkDestroyInstance(inst, None)
print(json.dumps(out))
"""

#: VkPhysicalDeviceType, best first for running a model; CPU (4) is a software renderer.
VK_DEVICE_TYPES = {2: "discrete", 1: "integrated", 3: "virtual", 0: "other", 4: "software"}
VK_RESULTS = {-9: "VK_ERROR_INCOMPATIBLE_DRIVER",
              -3: "VK_ERROR_INITIALIZATION_FAILED", -1: "VK_ERROR_OUT_OF_HOST_MEMORY"}
#: Where a real GPU shows up as a device node (Mesa/AMD/Intel, NVIDIA, WSL).
GPU_NODES = ("dev/dri/renderD*", "dev/nvidia[0-9]*", "dev/dxg")


def run_vulkan_probe(env: Optional[Mapping[str, str]] = None, timeout: float = 60
                     ) -> Dict[str, Any]:
    """Ask the Vulkan loader (in a child process) for devices; returns the probe's JSON."""
    return _run_probe(VULKAN_PROBE, "Vulkan", env, timeout)


def _vk_version(api: int) -> str:
    return f"Vulkan {(api >> 22) & 0x7F}.{(api >> 12) & 0x3FF}"


def find_vulkan(root: str = "/", env: Mapping[str, str] = os.environ,
                probe: Callable[[], Dict[str, Any]] = run_vulkan_probe,
                explicit: bool = False) -> Finding:
    """Vulkan devices a model can run on, best class first (discrete, integrated, ...).

    Software devices (lavapipe) count only with ``PYFILE_ALLOW_SOFTWARE_GPU=1``. Without
    that, a machine with no GPU device node is answered without starting the probe unless
    the user asked for Vulkan (``explicit``), so the error can say what the loader sees.
    ``GGML_VK_VISIBLE_DEVICES`` (ggml's own filter) is honoured.
    """
    f = Finding("vulkan")
    software_ok = env.get("PYFILE_ALLOW_SOFTWARE_GPU") == "1"
    nodes = [p for pattern in GPU_NODES for p in glob.glob(os.path.join(root, pattern))]
    if not nodes and not software_ok and not explicit:
        f.problem = "no GPU device node for Vulkan (/dev/dri/renderD*, /dev/nvidia*)"
        return f
    answer = probe()
    if answer.get("error") == "loader":
        f.problem = ("no Vulkan loader: libvulkan.so.1 not found (install it: libvulkan1 on "
                     "Debian/Ubuntu, vulkan-loader on Fedora/Arch)")
        return f
    if answer.get("error") == "instance":
        code = answer.get("code")
        f.problem = (f"no Vulkan device: the Vulkan loader found no usable driver "
                     f"(vkCreateInstance: {VK_RESULTS.get(code, f'VkResult {code}')})")
        return f
    if "error" in answer:
        f.problem = str(answer["error"])
        return f
    devices = answer.get("devices") or []
    f.present = bool(devices)
    f.driver = ",".join(f"{d.get('vendor', 0):x}:{d.get('driver', 0)}" for d in devices) or None
    visible = _visible(env, "GGML_VK_VISIBLE_DEVICES")
    usable: List[GPU] = []
    notes: List[str] = []
    for i, d in enumerate(devices):
        if visible is not None and str(i) not in visible:
            continue
        dtype = int(d.get("type", 0))
        gpu = GPU("vulkan", i, str(d.get("name") or f"Vulkan device {i}"), int(d.get("memory", 0)),
                  _vk_version(int(d.get("api", 0))), dtype == 1, dtype == 4)
        if gpu.software and not software_ok:
            notes.append(f"only a software Vulkan device ({gpu.name}; not used unless "
                         f"PYFILE_ALLOW_SOFTWARE_GPU=1)")
            continue
        if not d.get("fp16"):
            notes.append(f"{gpu.name} lacks 16-bit storage buffers, which ggml's Vulkan "
                         f"backend needs")
            continue
        usable.append(gpu)
    if usable:
        rank = {t: r for r, t in enumerate(VK_DEVICE_TYPES)}
        best = min(rank.get(int(devices[g.index].get("type", 0)), 9) for g in usable)
        f.gpus = [g for g in usable
                  if rank.get(int(devices[g.index].get("type", 0)), 9) == best]
    elif notes:
        f.problem = notes[0]
    elif visible is not None and devices:
        f.problem = "GGML_VK_VISIBLE_DEVICES hides every Vulkan device"
    else:
        f.problem = "the Vulkan loader reports no devices (no Vulkan driver for this GPU?)"
    return f
