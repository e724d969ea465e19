"""Build-time: the wheels of a runtime's Python packages, per CPython version.

The engine is one build for every Python; numpy, pydantic-core and markupsafe are compiled
per CPython version, and the pure-Python packages may resolve to other releases on old
versions. So each supported version gets its own set of wheels, downloaded once from the
package index (``pip download`` for that target) into the build cache and reused, or taken
offline from a folder of wheels (``--wheels DIR``).

pip evaluates environment markers against the interpreter running it, not the target, so
after the download the closure is checked again with the target's markers and anything
missing (``exceptiongroup`` for anyio on 3.9/3.10, for example) is fetched too.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import sys
import tempfile
import zipfile
from typing import Dict, List, Optional, Sequence, Set, Tuple

from . import buildcache
from .runtime.container import versions
from .runtime.errors import InputError, UsageError

#: Every CPython the package index has wheels of numpy and pydantic-core for.
SUPPORTED_PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13", "3.14")
#: What a pyfile imports at run time besides the engine (their dependencies come along).
DEPENDENCIES = ("numpy", "jinja2", "diskcache", "typing-extensions", "fastapi", "uvicorn",
                "pillow")
#: The pure-Python stack is pinned to releases that still support 3.9, so every target runs
#: the same server code and the versions share one copy of each file. (Left to itself, pip
#: picks FastAPI 0.128 / Starlette 0.49 for 3.9 and FastAPI 0.165 / Starlette 1.x for 3.14.)
PINS = ("annotated-doc==0.0.5", "annotated-types==0.7.0", "anyio==4.12.1", "click==8.1.8",
        "diskcache==5.6.3", "exceptiongroup==1.3.2", "fastapi==0.128.8", "h11==0.16.0",
        "idna==3.20", "jinja2==3.1.6", "markupsafe==3.0.4", "pydantic==2.13.5",
        "pydantic-core==2.46.5", "starlette==0.49.3", "typing-extensions==4.16.0",
        "typing-inspection==0.4.2", "uvicorn==0.39.0",
        # Images are decoded by Pillow (a pixel cap and a format allow-list) before the
        # engine sees them; 11.3 is the last release with wheels for 3.9 through 3.14.
        "pillow==11.3.0")
#: numpy is compiled per CPython; one release for 3.10-3.13 lets those four share its
#: Python files and its OpenBLAS (64.7 instead of 74.3 MB of numpy in the file).
NUMPY = {"3.9": "2.0.2", "3.10": "2.2.6", "3.11": "2.2.6", "3.12": "2.2.6", "3.13": "2.2.6",
         "3.14": "2.5.5"}
#: Wheels that load on glibc 2.17+ or 2.28+ (the newest tag below the promised 2.31).
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
MACHINES = ("x86_64", "aarch64")


def platforms(machine: str = "x86_64") -> Tuple[str, ...]:
    """The wheel platform tags for ``machine`` (the same glibc floors on every machine)."""
    return tuple(p.replace("x86_64", machine) for p in PLATFORMS)
MAX_ROUNDS = 5


def parse_pythons(text: Optional[str]) -> List[str]:
    """``--python 3.10,3.12`` -> ["3.10", "3.12"]; None -> every supported version."""
    if not text:
        return list(SUPPORTED_PYTHONS)
    out: List[str] = []
    for part in text.split(","):
        v = part.strip()
        if v not in SUPPORTED_PYTHONS:
            raise UsageError(f"--python {text}: {v or '(empty)'} is not one of "
                             f"{', '.join(SUPPORTED_PYTHONS)}")
        if v not in out:
            out.append(v)
    return sorted(out, key=versions.parse)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _target_env(python: str, machine: str = "x86_64") -> Dict[str, str]:
    return {"python_version": python, "python_full_version": f"{python}.0",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "implementation_version": f"{python}.0", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": machine, "os_name": "posix",
            "platform_release": "", "platform_version": "", "extra": ""}


def _requirements(wheel: str) -> List[str]:
    with zipfile.ZipFile(wheel) as zf:
        meta = next((n for n in zf.namelist() if n.endswith(".dist-info/METADATA")), None)
        text = zf.read(meta).decode("utf-8", "replace") if meta else ""
    return re.findall(r"^Requires-Dist: (.+)$", text, re.M)


def missing_requirements(folder: str, python: str, machine: str = "x86_64") -> List[str]:
    """Requirements of the wheels in ``folder`` that apply to ``python`` but have no wheel."""
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    have: Set[str] = {_norm(os.path.basename(w).split("-")[0])
                      for w in glob.glob(os.path.join(folder, "*.whl"))}
    env = _target_env(python, machine)
    out: List[str] = []
    for wheel in sorted(glob.glob(os.path.join(folder, "*.whl"))):
        for text in _requirements(wheel):
            req = Requirement(text)
            if req.marker is not None and not Marker(str(req.marker)).evaluate(env):
                continue
            if _norm(req.name) not in have and str(req) not in out:
                out.append(f"{req.name}{req.specifier}")
    return out


def _download(python: str, names: Sequence[str], dest: str, find_links: Optional[str],
              machine: str = "x86_64") -> None:
    abi = "cp" + python.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
           "--only-binary", ":all:", "--python-version", python, "--implementation", "cp",
           "--abi", abi, "--abi", "abi3", "--abi", "none", "-d", dest]
    for p in platforms(machine):
        cmd += ["--platform", p]
    if find_links:
        cmd += ["--no-index", "--find-links", find_links]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as pins:
        pins.write("\n".join([*PINS, f"numpy=={NUMPY[python]}"]) + "\n")
    try:
        import subprocess
        proc = subprocess.run(cmd + ["-c", pins.name] + list(names), capture_output=True,
                              text=True)
    finally:
        os.unlink(pins.name)
    if proc.returncode:
        said = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")] or \
            proc.stderr.strip().splitlines()[-1:]
        where = f"the folder {find_links}" if find_links else "the package index"
        raise InputError(f"cannot get the {machine} wheels for CPython {python} from {where} "
                         f"({' '.join(said)[:300]}); give --wheels DIR with them, or "
                         f"narrow --python")


def fetch(python: str, wheel_dir: Optional[str] = None, machine: str = "x86_64") -> str:
    """A folder holding every wheel CPython ``python`` on ``machine`` needs (cached unless
    ``wheel_dir``)."""
    if wheel_dir is not None and not os.path.isdir(wheel_dir):
        raise UsageError(f"--wheels {wheel_dir}: not a folder")
    key = hashlib.sha256("|".join([python, *DEPENDENCIES, *PINS, NUMPY[python],
                                   *platforms(machine),
                                   os.path.abspath(wheel_dir or "")]).encode()).hexdigest()[:16]
    tag = "" if machine == "x86_64" else f"-{machine}"
    target = os.path.join(buildcache.folder("wheels"),
                          f"cp{python.replace('.', '')}{tag}-{key}")
    if os.path.isdir(target):
        return target
    try:
        with buildcache.publishing(target) as work:
            _fill(python, work, wheel_dir, machine)
    except OSError:  # no writable cache: a private folder for this build only
        work = tempfile.mkdtemp(prefix="pyfile-wheels-")
        _fill(python, work, wheel_dir, machine)
        return work
    return target


def _fill(python: str, work: str, wheel_dir: Optional[str], machine: str) -> None:
    _download(python, DEPENDENCIES, work, wheel_dir, machine)
    for _ in range(MAX_ROUNDS):
        missing = missing_requirements(work, python, machine)
        if not missing:
            return
        _download(python, missing, work, wheel_dir, machine)
    raise InputError(f"the wheels for CPython {python} never close over their requirements "
                     f"(still missing: {', '.join(missing_requirements(work, python, machine))})")


def wheel_tags(name: str) -> Tuple[str, str, str]:
    """(python tag, abi tag, platform tag) of a wheel's file name."""
    parts = os.path.basename(name)[:-4].split("-")
    return parts[-3], parts[-2], parts[-1]


__all__ = ["SUPPORTED_PYTHONS", "DEPENDENCIES", "MACHINES", "platforms", "parse_pythons",
           "fetch",
           "missing_requirements", "wheel_tags"]
