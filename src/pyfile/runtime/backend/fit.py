"""Whether a GPU variant fits this machine, decided before it is unpacked or loaded: the GPU's
architecture against the code the variant carries, the driver's version against the one the
variant was built for, the system's glibc against the library's. Each check returns what a
user can act on; ggml itself would abort on an uncovered GPU or fail with a loader error.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from . import hardware
from ..container.versions import parse

#: The oldest Linux driver of each CUDA major (NVIDIA's compatibility tables).
CUDA_DRIVER_FLOOR = {12: "525", 13: "580"}


def _cc(text: str) -> Tuple[int, str]:
    """"sm_86" -> (86, ""); "120a" -> (120, "a"): a compute capability and its suffix."""
    digits = "".join(c for c in text if c.isdigit())
    return (int(digits) if digits else 0), text[len(text.rstrip("af")):]


def compute_capability(arch: str) -> int:
    """"sm_86" -> 86, "sm_120a" -> 120."""
    return _cc(arch)[0]


def sm_ok(gpu: hardware.GPU, archs: List[str]) -> bool:
    """Whether a variant built for ``archs`` (CMake's spellings: "86-real" machine code,
    "90-virtual" PTX, "75" both) has code this GPU runs. Machine code for sm_XY runs on
    sm_XZ with Z >= Y (an "a"/"f" feature build only on its own XY); PTX is compiled by the
    driver for any GPU at least as new."""
    if not archs:
        return True
    have = _cc(gpu.arch)[0] if gpu.arch.startswith("sm_") else 0
    for spec in archs:
        arch, _, form = spec.partition("-")
        cc, suffix = _cc(arch)
        if not cc:
            continue
        if form in ("", "real") and (have == cc if suffix else
                                     have // 10 == cc // 10 and have >= cc):
            return True
        if form in ("", "virtual") and have >= cc:
            return True
    return False


def cuda_driver(finding: hardware.Finding, requires: Dict[str, Any]) -> Optional[str]:
    """Why this machine's NVIDIA driver cannot run the variant (None when it can): the
    variant's CUDA runtime and its PTX need a driver that supports that CUDA version."""
    need = requires.get("cuda")
    if not isinstance(need, str) or finding.api is None:
        return None
    try:
        major, minor = parse(need)[:2]
    except ValueError:
        return None
    if finding.api >= major * 1000 + minor * 10:
        return None
    have = f"{finding.api // 1000}.{finding.api % 1000 // 10}"
    driver = f"the NVIDIA driver {finding.driver}" if finding.driver else "the NVIDIA driver"
    floor = CUDA_DRIVER_FLOOR.get(major)
    fix = f"update the driver to {floor} or newer" if floor else "update the driver"
    return f"{driver} supports CUDA {have}, the CUDA variant needs CUDA {need} ({fix})"


def glibc(requires: Dict[str, Any], title: str) -> Optional[str]:
    """Why this system's glibc is too old for the variant (None when it is not)."""
    need, have = requires.get("glibc"), hardware.glibc_version()
    if not isinstance(need, str) or not have or need == "none":
        return None
    try:
        if parse(have)[:2] >= parse(need)[:2]:
            return None
    except ValueError:
        return None
    return f"the {title} variant needs glibc {need}, this system has {have}"


def gfx_ok(gpu: hardware.GPU, archs: List[str]) -> bool:
    return not archs or gpu.arch in archs


def vulkan_ok(gpu: hardware.GPU, archs: List[str]) -> bool:
    """ggml's Vulkan backend needs Vulkan 1.2 (``archs`` would list API versions)."""
    try:
        major, minor = parse(gpu.arch.split()[-1])
    except ValueError:
        return False
    return (major, minor) >= (1, 2) and (not archs or gpu.arch.split()[-1] in archs)
