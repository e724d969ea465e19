"""What a GPU compiler must tell the build: a :class:`Toolchain` is one compiler found on this
machine (its path and version) and the commands that build ggml's backend with it for one
GPU. ``hipcc.py`` and ``nvcc.py`` hold the two there are."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from typing import List, Mapping, Optional

from ..hardware import GPU, Finding
from ...errors import CompileError


class Toolchain:
    """A compiler for one backend kind; subclasses fill in the class attributes and the
    methods below."""

    kind: str = ""  # the backend it builds (a ``choice.Backend`` kind): "rocm", "cuda"
    program: str = ""  # "hipcc", "nvcc"
    platform: str = ""  # what its version numbers: "ROCm", "CUDA"
    library: str = ""  # the module it links: "libggml-hip.so"
    install: str = ""  # what a user without it installs
    version_pattern: str = ""  # finds the version in ``--version``'s answer (group 1)
    version_name: str = ""  # for "did not name ...": "a HIP version"
    prefix: str = ""  # where its installers put it: "/opt" (for /opt/rocm)

    def __init__(self, path: str, version: str) -> None:
        self.path, self.version = path, version

    @classmethod
    def tops(cls, env: Mapping[str, str], prefix: str) -> List[Optional[str]]:
        """Installation folders to look in after PATH, most specific first."""
        raise NotImplementedError

    @classmethod
    def locate(cls, env: Mapping[str, str], prefix: Optional[str] = None) -> Optional[str]:
        """The compiler on PATH, else in the first of :meth:`tops` that has ``bin/<it>``;
        None when this machine has none (``prefix`` replaces :attr:`prefix`, for tests)."""
        found = shutil.which(cls.program, path=env.get("PATH", os.defpath))
        if found:
            return found
        for top in cls.tops(env, prefix or cls.prefix):
            if top and os.access(os.path.join(top, "bin", cls.program), os.X_OK):
                return os.path.join(top, "bin", cls.program)
        return None

    @classmethod
    def read_version(cls, path: str) -> str:
        m = re.search(cls.version_pattern, ask([path, "--version"]))
        if not m:
            raise CompileError(f"{path} --version did not name {cls.version_name}")
        return m.group(1).rstrip(".")

    @classmethod
    def find(cls, env: Mapping[str, str], **where: str) -> "Toolchain":
        """The compiler this machine has; :class:`CompileError` saying what to install when
        there is none or it does not answer."""
        path = cls.locate(env, **where)
        if path is None:
            raise CompileError(f"no {cls.program} found; {cls.install}")
        return cls.at(path)

    @classmethod
    def at(cls, path: str) -> "Toolchain":
        """The compiler at ``path``, its version asked."""
        return cls(path, cls.read_version(path))

    @property
    def what(self) -> str:
        """For messages: "the CUDA 13.0.88 backend"."""
        return f"the {self.platform} {self.version} backend"

    def key(self, source_key: str, gpu: GPU) -> str:
        """The compiled library's cache key: the sources, this compiler, the GPU target."""
        text = f"{self.kind}|{source_key}|{self.version}|{gpu.arch}"
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def check(self, finding: Finding, gpu: GPU) -> None:
        """:class:`CompileError` when what this compiler makes could not run on ``gpu``."""

    def units(self, folder: str) -> List[str]:
        """The translation units to compile (relative to the unpacked sources)."""
        raise NotImplementedError

    def compile_command(self, folder: str, gpu: GPU, unit: str, obj: str) -> List[str]:
        raise NotImplementedError

    def link_command(self, gpu: GPU, objects: List[str], ggml_base: str, lib: str) -> List[str]:
        raise NotImplementedError


def ask(argv: List[str]) -> str:
    """A compiler's answer to a question (``--version``): stdout and stderr together;
    :class:`CompileError` when it cannot run or fails."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CompileError(f"{' '.join(argv)} failed ({e})") from None
    if r.returncode != 0:
        raise CompileError(f"{' '.join(argv)} failed: {last_error(r.stderr)}")
    return r.stdout + r.stderr


def last_error(text: str) -> str:
    """The line of a compiler's output that says what went wrong."""
    lines = [ln.strip() for ln in text.splitlines() if "error" in ln.lower()]
    return (lines or [ln.strip() for ln in text.splitlines() if ln.strip()] or ["no output"])[0]
