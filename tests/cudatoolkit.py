"""A CUDA toolkit as a user has one, for the nvcc compile path: this machine's nvcc (a toolkit
made from NVIDIA's wheels, which has no cuBLAS) with NVIDIA's cuBLAS wheel added, laid out
like /usr/local/cuda (bin/, include/, lib/, lib64 -> lib, targets/x86_64-linux/). Built once
as a tree of links under ~/.cache/pyfile-dev/, keyed by the nvcc and cuBLAS versions; the
same tree without cuBLAS is a toolkit that lacks it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from pyfile.runtime.backend.compile import Nvcc

#: cuBLAS for CUDA 13 (nvidia-cublas on the package index).
CUBLAS_VERSION = "13.1.1.3"
DEV = Path(os.path.expanduser("~/.cache/pyfile-dev"))


def machine_nvcc() -> Nvcc:
    """This machine's nvcc; the tests of the nvcc path need one (CI's machine has it)."""
    nvcc = Nvcc.find(os.environ)
    assert nvcc.layout().top, "nvcc --dryrun named no TOP"
    return nvcc


def toolkit(cublas: bool = True) -> Path:
    """The toolkit folder (its bin/nvcc is a link that nvcc resolves relative to it)."""
    nvcc = machine_nvcc()
    top = Path(os.path.realpath(nvcc.layout().top))
    name = f"cuda-toolkit-{nvcc.version}" + (f"-cublas-{CUBLAS_VERSION}" if cublas else "")
    folder = DEV / name
    if (folder / "bin" / "nvcc").exists():
        return folder
    work = DEV / f".{name}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    _mirror(top, work)
    if cublas:
        wheel = _cublas_wheel()
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                parts = info.filename.split("/")
                if parts[:2] != ["nvidia", "cu13"] or parts[2] not in ("include", "lib") \
                        or info.is_dir():
                    continue
                dest = work / parts[2] / parts[-1]
                with z.open(info) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        for so in ("libcublas", "libcublasLt"):  # the link-time names a toolkit has
            os.symlink(f"{so}.so.13", work / "lib" / f"{so}.so")
    os.replace(work, folder)
    return folder


def _mirror(top: Path, dest: Path) -> None:
    """``top`` as links: folders made, links copied as they are (relative ones then point
    inside ``dest``), files linked; include/ and lib/ are real folders to add to."""
    for folder, dirs, files in os.walk(top):
        rel = Path(folder).relative_to(top)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in list(dirs) + files:
            src = Path(folder) / name
            if src.is_symlink():
                os.symlink(os.readlink(src), dest / rel / name)
                if name in dirs:
                    dirs.remove(name)
            elif name in files:
                os.symlink(src, dest / rel / name)


def _cublas_wheel() -> Path:
    tools = DEV / "tools" / f"cublas-{CUBLAS_VERSION}"
    have = list(tools.glob("nvidia_cublas-*.whl"))
    if not have:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                            f"nvidia-cublas=={CUBLAS_VERSION}", "-d", str(tools)],
                           capture_output=True, text=True, timeout=1800)
        assert r.returncode == 0, r.stderr
        have = list(tools.glob("nvidia_cublas-*.whl"))
    return have[0]
