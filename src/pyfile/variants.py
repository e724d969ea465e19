"""GPU variants a build packs: the ones named with ``--backend KIND=DIR`` and, by default,
every one that ``scripts/build-variant.sh`` (run by ``make setup`` for Vulkan) published.

Published variants live in ``$PYFILE_VARIANTS/KIND/`` (default
``~/.cache/pyfile-dev/variants/KIND/``, the same folder the script writes): the backend's
library and its ``variant.json`` (what it needs at run time and which engine it was built
for). The kinds and their libraries come from the runtime's backend registry.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from . import buildcache, elf
from .engines import PROMISED_GLIBC
from .runtime.backend.choice import BACKENDS, LIB_OF
from .runtime.container import paths, versions
from .runtime.errors import InputError, UsageError

#: Where published variants are looked for (shared with scripts/build-variant.sh).
VARIANTS_ENV = "PYFILE_VARIANTS"
#: The file a source variant (compiled on the target) must hold: ggml's GPU backend.
COMPILE_ENTRY = os.path.join("ggml", "src", "ggml-cuda", "ggml-cuda.cu")
#: Newest glibc a library packed by default may need: the one every pyfile promises.
GLIBC_MAX = PROMISED_GLIBC


@dataclass
class VariantDir:
    """One variant to pack: its folder, the shared libraries in it and its variant.json."""

    kind: str
    folder: str
    libs: List[str]
    requires: Dict[str, Any] = field(default_factory=dict)


def variants_dir(env: Optional[Dict[str, str]] = None) -> str:
    """``$PYFILE_VARIANTS``, else ``${XDG_CACHE_HOME:-~/.cache}/pyfile-dev/variants``."""
    env = os.environ if env is None else env
    return env.get(VARIANTS_ENV) or os.path.join(paths.dev_cache(env), "variants")


def read_dir(kind: str, folder: str, what: str) -> VariantDir:
    """Check and read one variant folder; ``what`` names it in errors."""
    if not os.path.isdir(folder):
        raise InputError(f"{what}: {folder} is not a folder")
    requires: Any = {}
    meta = os.path.join(folder, "variant.json")
    if os.path.isfile(meta):
        try:
            with open(meta, encoding="utf-8") as f:
                requires = json.load(f)
        except ValueError as e:
            raise InputError(f"{meta}: not valid JSON: {e}") from None
    requires = requires if isinstance(requires, dict) else {}
    if requires.get("compile"):  # sources the target compiles on first use: every file
        files = sorted(os.path.relpath(os.path.join(d, n), folder)
                       for d, _, names in os.walk(folder) for n in names if n != "variant.json")
        if COMPILE_ENTRY not in files:
            raise InputError(f"{what}: {folder} has no {COMPILE_ENTRY}")
        return VariantDir(kind, folder, files, requires)
    libs = sorted(n for n in os.listdir(folder)
                  if (n.endswith(".so") or ".so." in n) and os.path.isfile(os.path.join(folder, n)))
    if LIB_OF[kind] not in libs:
        raise InputError(f"{what}: {folder} has no {LIB_OF[kind]}")
    return VariantDir(kind, folder, libs, requires)


def read_specs(specs: List[str]) -> Dict[str, VariantDir]:
    """``--backend KIND=DIR`` options -> kind: variant."""
    out: Dict[str, VariantDir] = {}
    for spec in specs:
        kind, sep, folder = spec.partition("=")
        if not sep or kind not in LIB_OF:
            raise UsageError(f"--backend {spec!r}: expected KIND=DIR with KIND one of "
                             f"{', '.join(LIB_OF)}")
        out[kind] = read_dir(kind, folder, f"--backend {spec}")
    return out


def published(engine: Optional[str], skip: List[str], notes: List[str],
              env: Optional[Dict[str, str]] = None) -> Dict[str, VariantDir]:
    """Variants published in :func:`variants_dir` (kinds in ``skip`` left out).

    A variant built for another engine version than ``engine`` (when known) is left out:
    ggml refuses a backend from another build; so is one that needs a newer glibc than
    :data:`GLIBC_MAX` (``--backend`` still packs it). Each kind that ``make setup`` builds but
    that is missing adds a one-line note to ``notes``.
    """
    root = variants_dir(env)
    out: Dict[str, VariantDir] = {}
    for b in BACKENDS:
        if b.kind in skip:
            continue
        folder = os.path.join(root, b.kind)
        if not (os.path.isfile(os.path.join(folder, b.lib))
                or os.path.isfile(os.path.join(folder, COMPILE_ENTRY))):
            if b.made_by:
                notes.append(f"this file carries no {b.title} variant (none built in {root}; "
                             f"`{b.made_by}` or scripts/build-variant.sh {b.kind} builds it)")
            continue
        v = read_dir(b.kind, folder, f"{VARIANTS_ENV} {b.kind}")
        built_for = str(v.requires.get("engine", ""))
        if engine and built_for and built_for != f"llama-cpp-python {engine}":
            notes.append(f"left out the {b.title} variant in {folder}: built for {built_for}, "
                         f"this engine is llama-cpp-python {engine}")
            continue
        if v.requires.get("compile"):  # sources: nothing to read from a library
            out[b.kind] = v
            continue
        try:  # what the library needs, read from it (variant.json's word is not taken)
            glibc = library(os.path.join(folder, b.lib)).glibc
        except elf.ELFError as e:
            notes.append(f"left out the {b.title} variant in {folder}: {b.lib} is not a "
                         f"shared library ({e})")
            continue
        v.requires = {**v.requires, "glibc": glibc}
        if versions.parse_or(glibc) > GLIBC_MAX:
            notes.append(f"left out the {b.title} variant in {folder}: it needs GLIBC_{glibc}, "
                         f"newer than the {'.'.join(map(str, GLIBC_MAX))} a pyfile runs on "
                         f"(--backend {b.kind}={folder} packs it anyway)")
            continue
        out[b.kind] = v
    return out


@dataclass(frozen=True)
class Library:
    """What a build needs to know of a variant's library without reading it again."""

    size: int
    crc32: int
    sha256: str
    glibc: str  # the newest GLIBC_ symbol version it needs ("2.27"; "none")


def library(path: str) -> Library:
    """:class:`Library` facts of ``path``, kept in the build cache by the file's
    :func:`~pyfile.buildcache.identity`. A 29 MB Vulkan library takes 50 ms to read and
    hash, and every build packs the same one. Raises :class:`~pyfile.elf.ELFError` for a
    file that is not a 64-bit ELF shared library."""
    import hashlib
    from .runtime.container.archive import crc32
    try:
        ident = buildcache.identity(path)
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None

    def facts() -> bytes:
        with open(path, "rb") as f:
            data = f.read()
        glibc = elf.version_text(elf.read_needs(data).newest("GLIBC"))
        return json.dumps({"size": len(data), "crc32": crc32(data),
                           "sha256": hashlib.sha256(data).hexdigest(), "glibc": glibc}).encode()

    key = hashlib.sha256(ident.encode()).hexdigest()
    return Library(**json.loads(buildcache.remembered(f"{key}.library", facts)))
