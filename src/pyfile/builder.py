"""``pyfile build``: stub + zip (runtime, .args, aligned weights, manifest), atomically."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Dict, Iterator, List, Optional, Tuple

from . import __version__, gguf, stub
from .atomic import atomic_output
from .runtime import argsfile
from .runtime.archive import ARGS_NAME, LOCAL_SIG
from .runtime.backends import LIB_OF
from .runtime.engine import ENGINE_VERSION, GGUF_MAGIC
from .runtime.manifest import MANIFEST_NAME, Manifest
from .variants import VariantDir, published, read_specs
from .runtime.errors import InputError, UsageError
from .zipwriter import Entry, ZipWriter

#: 64 KiB: a page on every system (4, 16 and 64 KiB pages), and it makes the kernel's copy of
#: the weights a third faster here (source and output offsets congruent modulo the page
#: cache's large folios: 0.28 s instead of 0.42 s per GiB; at 4096 they are not).
DEFAULT_ALIGN = 1 << 16
MIN_ALIGN = 32  # llama.cpp needs the GGUF data 32-byte aligned in the file to mmap it
MAX_ALIGN = 1 << 20

Progress = Optional[Callable[[int], None]]
#: GPU variants that can be packed, and the library each must contain (the runtime's registry).
VARIANT_KINDS = LIB_OF


@dataclass
class Source:
    """Bytes to be copied into the pyfile: a region of a file on disk."""

    path: str  # what the user named (for messages)
    name: str  # member name in the pyfile
    file: str  # file holding the bytes
    offset: int
    size: int
    info: Optional[gguf.GGUFInfo] = None


@dataclass
class BuildResult:
    output: str
    size: int
    entries: List[Entry] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)  # one line each, for the user


def source_date_epoch() -> Optional[int]:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"SOURCE_DATE_EPOCH must be an integer, got {value!r}") from None


def check_align(align: int) -> int:
    if align < MIN_ALIGN or align > MAX_ALIGN or align & (align - 1):
        raise UsageError(f"--align must be a power of two between {MIN_ALIGN} and {MAX_ALIGN}, "
                         f"got {align}")
    return align


def runtime_files() -> List[Tuple[str, bytes]]:
    """The pure-Python runtime that travels inside every pyfile, as (member, bytes)."""
    import pyfile
    root = os.path.dirname(os.path.abspath(pyfile.__file__))
    out = [("pyfile/__init__.py", _read(os.path.join(root, "__init__.py")))]
    rt = os.path.join(root, "runtime")
    for name in sorted(os.listdir(rt)):
        full = os.path.join(rt, name)
        if os.path.isfile(full) and not name.startswith("."):
            out.append((f"pyfile/runtime/{name}", _read(full)))
    return out + stub.bytecode(out)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@contextlib.contextmanager
def open_source(path: str, workdir: str, want_gguf: bool = True) -> Iterator[Source]:
    """Resolve an input: a GGUF (or any file), or a zip that delivers one.

    A zip member stored uncompressed is read in place; a compressed one (Deflate or
    Windows Explorer's Deflate64) is extracted to a temp file in ``workdir`` first.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        size = os.path.getsize(path)
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    if want_gguf and head != GGUF_MAGIC and (head == LOCAL_SIG
                                                   or zipfile.is_zipfile(path)):
        with _zip_source(path, workdir) as src:
            yield src
        return
    src = Source(path, os.path.basename(path), path, 0, size)
    if want_gguf or head == GGUF_MAGIC:
        src.info = gguf.read(path)
    yield src


@contextlib.contextmanager
def _zip_source(path: str, workdir: str) -> Iterator[Source]:
    try:
        import zipfile_deflate64  # noqa: F401  (registers Deflate64 with zipfile)
    except ImportError:  # pragma: no cover - a declared dependency
        pass
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable zip: {e}") from None
    with zf:
        ggufs = [i for i in zf.infolist()
                 if i.filename.lower().endswith(".gguf") and not i.is_dir()]
        if len(ggufs) != 1:
            found = ", ".join(i.filename for i in ggufs) or "none"
            raise InputError(f"{path}: a zip given as a model must hold exactly one .gguf "
                             f"(found: {found})")
        info = ggufs[0]
        name = os.path.basename(info.filename)
        if info.compress_type == zipfile.ZIP_STORED:
            from .runtime.archive import Archive
            with Archive.open(path, require_manifest=False) as arch:
                m = arch.member(info.filename)
            src = Source(path, name, path, m.offset, m.size)
            src.info = gguf.read(path, m.offset, m.size)
            yield src
            return
        fd, tmp = tempfile.mkstemp(dir=workdir, prefix=".pyfile-extract-", suffix=".gguf")
        try:
            with os.fdopen(fd, "wb") as out, zf.open(info) as member:
                shutil.copyfileobj(member, out, 1 << 20)
            src = Source(path, name, tmp, 0, os.path.getsize(tmp))
            src.info = gguf.read(tmp)
            yield src
        except (zipfile.BadZipFile, NotImplementedError, EOFError) as e:
            raise InputError(f"{path}: cannot extract {info.filename}: {e}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _check_output(output: str, inputs: List[str]) -> None:
    if os.path.isdir(output):
        raise UsageError(f"{output}: is a directory; give a file name with -o")
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise InputError(f"{output}: the folder {parent} does not exist")
    for p in inputs:
        if os.path.exists(output) and os.path.exists(p) and os.path.samefile(output, p):
            raise UsageError(f"{output}: the output would overwrite the input {p}")


@dataclass
class RuntimeOptions:
    """How to assemble the runtime that travels inside the file."""

    slim: bool = False  # carry none: the target needs llama-cpp-python installed
    pythons: Optional[str] = None  # "3.10,3.12"; None = every supported CPython
    wheel_dir: Optional[str] = None  # build offline from this folder of wheels
    engine_wheel: Optional[str] = None  # pack this llama-cpp-python wheel
    allow_unportable_engine: bool = False  # pack a native/new-glibc engine anyway


def build(model: str, output: str, extras: List[str] = (), args_text: str = "",
          align: int = DEFAULT_ALIGN, progress: Progress = None,
          on_start: Optional[Callable[[int], None]] = None,
          backends: List[str] = (), runtime: Optional[RuntimeOptions] = None,
          sha256: bool = False, gpu_variants: bool = True) -> BuildResult:
    """Write ``output``: stub, ``__main__.py``, ``.args``, runtime, model, extras, manifest.

    GPU variants: those given as ``backends`` (``KIND=DIR``) and, unless ``gpu_variants``
    is False, every published one (:mod:`pyfile.variants`). Everything is validated before
    the first byte is written; ``on_start`` receives the number of bytes that will be
    copied (for a progress bar). Every member gets a CRC-32
    (the zip's own check); every member but the model and extra files also a SHA-256 in
    the manifest, and those too with ``sha256`` (one more pass over the weights: SHA-256
    runs at 0.9 GB/s here, a third of the copy's speed).
    """
    runtime = runtime or RuntimeOptions()
    check_align(align)
    argsfile.parse(args_text, env={})  # syntax check now, not at the user's first run
    epoch = source_date_epoch()
    notes: List[str] = []
    variants = read_specs(list(backends))
    if gpu_variants:
        variants.update(published(ENGINE_VERSION, list(variants), notes))
    from . import wheels
    pythons = wheels.parse_pythons(runtime.pythons)
    _check_output(output, [model, *extras])
    workdir = os.path.dirname(os.path.abspath(output))
    with contextlib.ExitStack() as stack:
        sources = [stack.enter_context(open_source(model, workdir))]
        for extra in extras:
            sources.append(stack.enter_context(open_source(extra, workdir, want_gguf=False)))
        names = [s.name for s in sources]
        for reserved in (ARGS_NAME, MANIFEST_NAME, "__main__.py"):
            if reserved in names:
                raise UsageError(f"{reserved}: this member name is reserved")
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise UsageError(f"two inputs share the member name {sorted(dupes)[0]!r}; "
                             f"rename one of them")
        # Read every small input now, so that an OSError inside atomic_output can only be
        # about writing the output.
        rt_bundle = None
        if not runtime.slim:
            from . import bundle, engines
            engine = engines.find_engine(runtime.engine_wheel, runtime.allow_unportable_engine)
            rt_bundle = bundle.assemble(engine, pythons, runtime.wheel_dir)
            if not runtime.allow_unportable_engine:
                bundle.check_targets(rt_bundle)
        fixed = Fixed(stub.render(), stub.main_source(), runtime_files(), {
            kind: [(lib, _read(os.path.join(v.folder, lib))) for lib in v.libs]
            for kind, v in variants.items()}, rt_bundle)
        if on_start:
            on_start(sum(s.size for s in sources))
        with atomic_output(output) as f:
            entries = write_archive(f, sources, args_text, align, epoch, progress, variants,
                                    fixed, sha256)
            size = f.tell()
    return BuildResult(output, size, entries, notes)


def _deflated(data: bytes, level: int = 6) -> bytes:
    """Raw deflate of a GPU variant library, kept in the build cache by content: a 29 MB
    Vulkan library takes 1.5 s to deflate, and every build packs the same one."""
    import hashlib
    import zlib
    from . import buildcache

    def make() -> bytes:
        c = zlib.compressobj(level, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush()

    return buildcache.remembered(f"{hashlib.sha256(data).hexdigest()}.deflate{level}", make)


@dataclass
class Fixed:
    """The small inputs of a build, read before the output is opened."""

    stub: bytes
    main: bytes
    runtime: List[Tuple[str, bytes]]
    variant_libs: Dict[str, List[Tuple[str, bytes]]]
    bundle: Any = None  # pyfile.bundle.Bundle, or None for a slim file


def write_archive(f: BinaryIO, sources: List[Source], args_text: str, align: int,
                  epoch: Optional[int], progress: Progress,
                  variants: Dict[str, VariantDir], fixed: Fixed,
                  sha256: bool = False) -> List[Entry]:
    f.write(fixed.stub)
    w = ZipWriter(f, epoch=epoch)
    man = Manifest(tool=f"pyfile {__version__}", source_date_epoch=epoch,
                   engine=fixed.bundle.engine if fixed.bundle is not None else None)
    man.add_member(w.add_bytes("__main__.py", fixed.main), "main")
    man.add_member(w.add_bytes(ARGS_NAME, args_text.encode("utf-8"), compress=False), "args")
    for name, data in fixed.runtime:
        man.add_member(w.add_bytes(name, data), "runtime")
    for src in sources:
        with open(src.file, "rb") as inp:
            inp.seek(src.offset)
            entry = w.add_stream(src.name, inp, src.size, align=align, progress=progress,
                                 origin=src.path, sha256=sha256)
        man.add_member(entry, "model" if src.info is not None else "file", align)
        if src.info is not None:
            man.models[src.name] = src.info.summary()
    for kind, v in sorted(variants.items()):
        members = []
        for lib, data in fixed.variant_libs[kind]:
            name = f".pyfile/variants/{kind}/{lib}"
            man.add_member(w.add_bytes(name, data, level=6, deflated=_deflated(data)),
                           "variant")
            members.append(name)
        man.variants[kind] = {"members": members, "requires": v.requires}
    if fixed.bundle is not None:
        b = fixed.bundle
        with open(b.path, "rb") as inp:  # its SHA-256 is known: only the CRC-32 is taken
            entry = w.add_stream(b.member, inp, os.path.getsize(b.path), align=64,
                                 sha256=not b.sha256)
        man.add_member(dataclasses.replace(entry, sha256=b.sha256 or entry.sha256),
                       "runtime-bundle", 64)
        man.runtimes = [t.record() for t in b.targets]
    man.default_model = sources[0].name
    w.add_bytes(MANIFEST_NAME, man.to_bytes())
    w.close()
    return w.entries
