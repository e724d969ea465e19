"""``pyfile build``: stub + zip (runtime, .args, aligned weights, manifest), atomically."""

from __future__ import annotations

import contextlib
import os
import zipfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from . import __version__, elf, gguf, stub
from .atomic import atomic_output
from .runtime.container import argsfile
from .runtime.container.archive import ARGS_NAME, LOCAL_SIG
from .runtime.backend.choice import LIB_OF, VARIANTS_MEMBER
from .runtime.backend.compile import SOURCES_TAR
from .runtime.backend.engine import ENGINE_VERSION, GGUF_MAGIC
from .runtime.container.bundle import INTERPRETER_KIND
from .runtime.container.manifest import MANIFEST_NAME, Manifest
from .runtime.errors import InputError, UsageError
from .zipwriter import Entry, ZipWriter, deflate, smaller_deflate

if TYPE_CHECKING:  # the variants' module is imported when a build gets to them
    from .carried import Carried
    from .variants import VariantDir

#: 64 KiB: a page on every system (4, 16 and 64 KiB pages), and it makes the kernel's copy of
#: the weights a third faster here (source and output offsets congruent modulo the page
#: cache's large folios: 0.28 s instead of 0.42 s per GiB; at 4096 they are not).
DEFAULT_ALIGN = 1 << 16
MIN_ALIGN = 32  # llama.cpp needs the GGUF data 32-byte aligned in the file to mmap it
MAX_ALIGN = 1 << 20

Progress = Optional[Callable[[int], None]]


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


def runtime_sources() -> List[Tuple[str, bytes]]:
    """The pure-Python runtime that travels inside every pyfile, as (member, source)."""
    import pyfile
    root = os.path.dirname(os.path.abspath(pyfile.__file__))
    out = [("pyfile/__init__.py", _read(os.path.join(root, "__init__.py")))]
    for folder, dirs, files in os.walk(os.path.join(root, "runtime")):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
        rel = os.path.relpath(folder, root).replace(os.sep, "/")
        out += [(f"pyfile/{rel}/{name}", _read(os.path.join(folder, name)))
                for name in sorted(files) if not name.startswith(".") and not name.endswith(".pyc")]
    return out


#: A runtime member ready to write: (name, size, CRC-32, SHA-256, stored bytes or None,
#: raw deflate stream or None).
Prepared = Tuple[str, int, int, str, Optional[bytes], Optional[bytes]]


def runtime_members(carried_python: Optional[Tuple[str, str]] = None) -> List[Prepared]:
    """The runtime's sources and their bytecode for this interpreter (:func:`stub.bytecode`)
    and for ``carried_python`` ((path, identity) of the carried interpreter that runs here:
    :func:`stub.foreign_bytecode`) with their digests and deflate streams, kept in the
    build cache as one object keyed by the sources and the interpreters: a warm build reads
    the sources and one file instead of hashing, compressing and loading ~60 members."""
    import hashlib
    import marshal
    from importlib.util import MAGIC_NUMBER
    from . import buildcache
    from .runtime.container.archive import crc32

    sources = runtime_sources()
    h = hashlib.sha256(MAGIC_NUMBER + f"{stub.MARSHAL_VERSION}|deflate6".encode())
    for name, data in sources:
        h.update(b"\0%s\0%d\0" % (name.encode(), len(data)) + data)
    if carried_python:
        h.update(f"carried:{carried_python[1]}".encode())

    def make() -> bytes:
        out = []
        # A file that carries its interpreter needs no bytecode for the builder's own.
        own = [] if carried_python else stub.bytecode(sources)
        foreign = stub.foreign_bytecode(carried_python[0], sources) if carried_python else []
        foreign = [(n, d) for n, d in foreign if n not in {m for m, _ in own}]  # same tag
        for name, data in sources + own + foreign:
            deflated = smaller_deflate(data)  # kept alone when it pays, else the bytes
            out.append((name, len(data), crc32(data), hashlib.sha256(data).hexdigest(),
                        data if deflated is None else None, deflated))
        return marshal.dumps(out)

    key = f"{h.hexdigest()}.runtime"
    try:
        return [tuple(m) for m in marshal.loads(buildcache.remembered(key, make))]
    except (ValueError, EOFError, TypeError):  # a damaged cache entry: make it again
        return [tuple(m) for m in marshal.loads(make())]


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
            from .runtime.container.archive import Archive
            with Archive.open(path, require_manifest=False) as arch:
                m = arch.member(info.filename)
            src = Source(path, name, path, m.offset, m.size)
            src.info = gguf.read(path, m.offset, m.size)
            yield src
            return
        import shutil
        import tempfile
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


def pair_projectors(sources: List[Source], models: Dict[str, Dict],
                    default_model: Optional[str] = None) -> Dict[str, str]:
    """Which model each projector among ``sources`` belongs to: the nearest model before
    it (in ``sources``, else ``default_model``); projector member -> model member.

    ``models`` holds the summaries of the models already in the file. Raises
    :class:`InputError` for a projector with no model before it, or one whose embeddings
    are not as wide as its model's (llama.cpp would refuse it at the user's first image:
    "mismatch between text model and mmproj")."""
    known = dict(models)
    last = default_model
    pairs: Dict[str, str] = {}
    for src in sources:
        if src.info is None:
            continue
        if not src.info.is_projector:
            known[src.name] = src.info.summary()
            last = src.name
            continue
        if last is None:
            raise InputError(f"{src.path}: a multimodal projector (mmproj) needs a model: "
                             f"give the model first")
        width = src.info.summary()["projector"]["projection_dim"]
        wants = known[last].get("embedding_length")
        if width != wants:
            raise InputError(f"{src.path}: this projector makes embeddings {width} wide but "
                             f"{last} takes {wants}; it belongs to another model")
        pairs[src.name] = last
    return pairs


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
    arches: Optional[str] = None  # "x86_64,aarch64"; None = every carried interpreter


def build(model: str, output: str, extras: List[str] = (), args_text: str = "",
          align: int = DEFAULT_ALIGN, progress: Progress = None,
          on_start: Optional[Callable[[int], None]] = None,
          backends: List[str] = (), runtime: Optional[RuntimeOptions] = None,
          sha256: bool = False, gpu_variants: "bool | Sequence[str]" = True,
          mmproj: Optional[str] = None) -> BuildResult:
    """Write ``output``: stub, model, extras, ``__main__.py``, ``.args``, runtime sources,
    GPU variants, runtime bundle, manifest.

    GPU variants: those given as ``backends`` (``KIND=DIR``) and, unless ``gpu_variants``
    is False, every published one (:mod:`pyfile.variants`), or those of the kinds it lists.
    The inputs and options are checked before the output is opened; the weights are copied
    by the kernel in the background from then on, while the runtime and variants are
    prepared and written after them (the output is a temp file until everything succeeded).
    ``on_start`` receives the number of bytes that will be copied (for a progress bar).
    Every member gets a CRC-32
    (the zip's own check); every member but the model and extra files also a SHA-256 in
    the manifest, and those too with ``sha256`` (one more pass over the weights: SHA-256
    runs at 0.9 GB/s here, a third of the copy's speed).

    Several GGUF models may be given (``model`` is the default one); a multimodal
    projector (``mmproj``, or a projector GGUF among ``extras``) is paired with ``model``
    (one among ``extras`` with the model named before it) once its width is checked.
    """
    runtime = runtime or RuntimeOptions()
    check_align(align)
    argsfile.parse(args_text, env={})  # syntax check now, not at the user's first run
    epoch = source_date_epoch()
    variants: Dict[str, VariantDir] = {}
    if backends:
        from .variants import read_specs
        variants = read_specs(list(backends))
    from . import wheels
    pythons = wheels.parse_pythons(runtime.pythons)
    from . import carried
    # A default file carries its interpreter (one per machine) and the runtime for it; a
    # --python or --slim one runs on a Python found on the target.
    carry_notes: List[str] = []
    carry = carried.for_build(runtime.arches, runtime.slim, runtime.pythons, carry_notes)
    if carry:
        pythons = [carried.PYTHON_MINOR]
    _check_output(output, [model, *extras, *([mmproj] if mmproj else [])])
    workdir = os.path.dirname(os.path.abspath(output))
    with contextlib.ExitStack() as stack:
        sources = [stack.enter_context(open_source(model, workdir))]
        if sources[0].info is not None and sources[0].info.is_projector:
            raise InputError(f"{model}: this is a multimodal projector (mmproj), not a "
                             f"model: give it with --mmproj after the model")
        if mmproj:
            proj = stack.enter_context(open_source(mmproj, workdir))
            if proj.info is None or not proj.info.is_projector:
                raise InputError(f"--mmproj {mmproj}: not a multimodal projector (its "
                                 f"architecture is {proj.info and proj.info.architecture!r}, "
                                 f"not 'clip')")
            sources.append(proj)
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
        pairs = pair_projectors(sources, {})
        if on_start:
            on_start(sum(s.size for s in sources))
        with atomic_output(output) as f:
            head = stub.render()
            f.write(head)
            w = ZipWriter(f, epoch=epoch)
            try:
                notes = _write_members(w, sources, args_text, align, progress, variants,
                                       runtime, pythons, gpu_variants, sha256, pairs, carry)
            except BaseException:
                w.abort()
                raise
            if carry:  # the stub learns where its interpreters are (same length: in place)
                f.flush()
                os.pwrite(f.fileno(), stub.carried_table(carried.stub_table(w.entries, carry)),
                          stub.carried_offset(head))
            size = f.tell()
    return BuildResult(output, size, w.entries, carry_notes + notes)


def _write_members(w: ZipWriter, sources: List[Source], args_text: str, align: int,
                   progress: Progress, variants: Dict[str, VariantDir],
                   runtime: RuntimeOptions, pythons: List[str],
                   gpu_variants: "bool | Sequence[str]",
                   sha256: bool, pairs: Dict[str, str],
                   carry: Sequence["Carried"] = ()) -> List[str]:
    """Every member and the central directory; the notes for the user.

    The weights come first, right after the stub, and are copied in the background: the
    kernel copy (the bulk of a build) starts before anything else is prepared, and
    everything else is written after the weights meanwhile. (The kernel serialises writes
    to one file, so the runtime bundle's copy queues behind the weights'.)"""
    kinds: Dict[str, Tuple[str, int]] = {}  # member -> (manifest kind, alignment)
    for src in sources:
        w.start_stream(src.name, src.file, src.offset, src.size, align=align,
                       progress=progress, origin=src.path, sha256=sha256)
        kinds[src.name] = (member_kind(src), align)
    w.add_bytes("__main__.py", stub.main_source())
    w.add_bytes(ARGS_NAME, args_text.encode("utf-8"), compress=False)
    kinds.update({"__main__.py": ("main", 1), ARGS_NAME: ("args", 1)})

    notes: List[str] = []
    if gpu_variants:
        from .variants import published
        wanted = LIB_OF if gpu_variants is True else list(gpu_variants)
        skip = list(variants) + [k for k in LIB_OF if k not in wanted]
        variants = {**published(ENGINE_VERSION, skip, notes), **variants}
    rt_bundle = None
    if not runtime.slim:
        from . import bundle, engines
        allow = runtime.allow_unportable_engine
        if carry:  # the runtime of each carried interpreter, on its machine's engine
            engine: object = {c.arch: engines.find_engine(
                runtime.engine_wheel if c.arch == "x86_64" else None, allow, c.arch)
                for c in carry}
        else:
            engine = engines.find_engine(runtime.engine_wheel, allow)
        rt_bundle = bundle.assemble(engine, pythons, runtime.wheel_dir)
        if not runtime.allow_unportable_engine:
            bundle.check_targets(rt_bundle)
    here = [c for c in carry if c.arch == os.uname().machine]
    for name, size, crc, digest, data, deflated in runtime_members(
            (os.path.join(here[0].tree(), "bin", "python3"), here[0].sha256) if here else None):
        w.add_prepared(name, data, size, crc, digest, deflated)
        kinds[name] = ("runtime", 1)
    variant_records = {}
    for kind, v in sorted(variants.items()):
        members = []
        if v.requires.get("compile"):  # sources: one tar, unpacked by the target's compiler
            name = f"{VARIANTS_MEMBER}/{kind}/{SOURCES_TAR}"
            w.add_bytes(name, _sources_tar(v.folder, v.libs))
            kinds[name] = ("variant", 1)
            members.append(name)
        else:
            for lib in v.libs:
                name = f"{VARIANTS_MEMBER}/{kind}/{lib}"
                size, crc, digest, deflated = _library(os.path.join(v.folder, lib))
                w.add_prepared(name, None, size, crc, digest, deflated)
                kinds[name] = ("variant", 1)
                members.append(name)
        variant_records[kind] = {"members": members, "requires": v.requires}
    if rt_bundle is not None:
        # At a 64 KiB boundary like the weights: the kernel copies it twice as fast.
        w.start_stream(rt_bundle.member, rt_bundle.path, 0, os.path.getsize(rt_bundle.path),
                       align=DEFAULT_ALIGN, sha256=not rt_bundle.sha256)  # known: not redone
        kinds[rt_bundle.member] = ("runtime-bundle", DEFAULT_ALIGN)
    known_sha: Dict[str, str] = {}
    from .carried import members as carried_members
    for name, path, size, sha in carried_members(list(carry)):  # where the stub's dd can
        w.start_stream(name, path, 0, size, align=DEFAULT_ALIGN, sha256=False)  # seek to
        kinds[name] = (INTERPRETER_KIND, DEFAULT_ALIGN)
        known_sha[name] = sha

    man = Manifest(tool=f"pyfile {__version__}", source_date_epoch=w.epoch,
                   engine=rt_bundle.engine if rt_bundle is not None else None)
    for entry in w.wait():  # the weights' copies end here
        kind, member_align = kinds[entry.name]
        if kind == "runtime-bundle" and rt_bundle.sha256:
            entry.sha256 = rt_bundle.sha256
        entry.sha256 = known_sha.get(entry.name, entry.sha256)
        man.add_member(entry, kind, member_align)
    record_models(man, sources, pairs)
    man.variants = variant_records
    man.runtimes = [t.record() for t in rt_bundle.targets] if rt_bundle is not None else []
    man.default_model = sources[0].name
    w.add_bytes(MANIFEST_NAME, man.to_bytes())
    w.close()
    return notes


def member_kind(src: Source) -> str:
    """The manifest kind of an input: "model", "mmproj" (a projector) or "file"."""
    if src.info is None:
        return "file"
    return "mmproj" if src.info.is_projector else "model"


def record_models(man: Manifest, sources: List[Source], pairs: Dict[str, str]) -> None:
    """Put the models' and projectors' summaries into the manifest, projectors paired."""
    for src in sources:
        if src.info is not None and not src.info.is_projector:
            man.models[src.name] = src.info.summary()
    for src in sources:
        if src.name in pairs:
            man.pair(pairs[src.name], src.name, src.info.summary())


def _sources_tar(folder: str, files: List[str]) -> bytes:
    """``files`` (relative to ``folder``) as one tar, the same bytes for the same sources:
    sorted, no times, owners or modes of the builder's."""
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for rel in sorted(files):
            data = _read(os.path.join(folder, rel))
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _library(path: str) -> Tuple[int, int, str, bytes]:
    """(size, CRC-32, SHA-256, raw deflate stream) of a GPU variant's library: the digests
    from :func:`pyfile.variants.library`, the deflate stream (1.5 s for the 29 MB Vulkan
    library) kept in the build cache by the content's SHA-256."""
    from . import buildcache
    from .variants import library

    try:
        lib = library(path)
    except elf.ELFError as e:
        raise InputError(f"{path}: not a shared library ({e})") from None

    return lib.size, lib.crc32, lib.sha256, buildcache.remembered(
        f"{lib.sha256}.deflate6", lambda: deflate(_read(path)))
