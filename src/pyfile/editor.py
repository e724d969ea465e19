"""Edit a pyfile in place without rewriting the weights: ``args --set`` and ``add``.

New members, a new manifest and a new central directory are appended after the current
end of the file; the old ``.args``/manifest bytes stay behind as dead space (llamafile's
zipalign works the same way). The cost is O(new data), not O(model size). If anything
fails, even Ctrl-C, the file is truncated back to its old length, which is the old,
valid archive. An edit holds the file's exclusive lock throughout; runs hold the shared one
while they read the zip directory, ``.args`` and the manifest.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Dict, Iterator, List, Optional

from .builder import (DEFAULT_ALIGN, check_align, member_kind, open_source, pair_projectors,
                      record_models, source_date_epoch)
from .runtime.container import argsfile
from .runtime.container.archive import ARGS_NAME, Archive, own
from .runtime.container.manifest import MANIFEST_NAME
from .runtime.errors import InputError, UsageError
from .zipwriter import Entry, ZipWriter

Progress = Optional[Callable[[int], None]]


def _existing_entries(arch: Archive, drop: set) -> List[Entry]:
    out = []
    for info in arch.zf.infolist():
        if info.filename in drop:
            continue
        m = arch.members[info.filename]
        y, mo, d, h, mi, s = info.date_time
        out.append(Entry(info.filename, m.header_offset, m.offset, m.compressed_size, m.size,
                         m.crc32, m.method, (h << 11) | (mi << 5) | (s // 2),
                         ((y - 1980) << 9) | (mo << 5) | d, _sha(arch, info.filename),
                         (info.external_attr >> 16) & 0o7777 or 0o644))
    return out


def _sha(arch: Archive, name: str) -> str:
    entry = arch.manifest_entry(name)
    return entry.get("sha256", "") if entry else ""


@contextlib.contextmanager
def _editing(path: str) -> Iterator[None]:
    """Hold the pyfile's exclusive lock for a whole edit, from reading its directory to
    the flushed new end: a run (or ``inspect``) reading it, or a second edit, waits; so
    does this edit for them (see ``Archive.open``)."""
    try:
        f = open(path, "rb")
    except OSError:
        yield  # Archive.open says why in one line
        return
    with f:
        own(f)
        yield


def _append(path: str, replace: Dict[str, bytes], add: List[str], align: int,
            progress: Progress, mmproj: Optional[str] = None) -> None:
    with Archive.open(path, lock=False) as arch:  # the caller holds _editing(path)
        man = arch.manifest
        man.members = [r for r in man.members if r["name"] not in replace]
        existing = _existing_entries(arch, set(replace) | {MANIFEST_NAME})
        end = arch.file_size
    epoch = source_date_epoch()
    workdir = os.path.dirname(os.path.abspath(path))
    with contextlib.ExitStack() as stack:
        if mmproj:
            add = [mmproj, *add]
        sources = [stack.enter_context(open_source(p, workdir, want_gguf=False)) for p in add]
        if mmproj and (sources[0].info is None or not sources[0].info.is_projector):
            raise InputError(f"--mmproj {mmproj}: not a multimodal projector (a GGUF whose "
                             f"architecture is 'clip')")
        taken = {e.name for e in existing} | set(replace) | {MANIFEST_NAME}
        for src in sources:
            if src.name in taken:
                raise UsageError(f"{path} already holds a member named {src.name!r}")
            taken.add(src.name)
        pairs = pair_projectors(sources, man.models, man.default_model)
        try:
            f = open(path, "r+b")
        except OSError as e:
            raise InputError(f"{path}: cannot open for writing: {e.strerror or e}") from None
        with f:
            try:
                f.seek(end)
                w = ZipWriter(f, epoch=epoch, existing=existing)
                for name, data in replace.items():
                    man.add_member(w.add_bytes(name, data, compress=False), "args")
                for src in sources:
                    entry = w.add_stream(src.name, src.file, src.offset, src.size,
                                         align=align, progress=progress, origin=src.path)
                    man.add_member(entry, member_kind(src), align)
                record_models(man, sources, pairs)
                if epoch is not None:
                    man.source_date_epoch = epoch
                w.add_bytes(MANIFEST_NAME, man.to_bytes())
                w.close()
                f.flush()
                os.fsync(f.fileno())
            except BaseException as e:
                f.truncate(end)
                if isinstance(e, OSError):
                    raise InputError(f"{path}: write failed, file left unchanged: "
                                     f"{e.strerror or e}") from None
                raise


def set_args(path: str, args_text: str) -> None:
    """Replace the baked ``.args`` of ``path`` in place."""
    argsfile.parse(args_text, env={})
    with _editing(path):
        _append(path, {ARGS_NAME: args_text.encode("utf-8")}, [], DEFAULT_ALIGN, None)


def add_files(path: str, files: List[str], align: int = DEFAULT_ALIGN,
              progress: Progress = None, mmproj: Optional[str] = None) -> None:
    """Append ``files`` (a second model, an mmproj, a prompt file...) to ``path``.

    A projector (mmproj) is paired with the model added before it, else with the file's
    default model; one whose width does not match that model is refused (nothing
    written)."""
    check_align(align)
    if not files and not mmproj:
        raise UsageError("nothing to add")
    with _editing(path):
        _append(path, {}, files, align, progress, mmproj)

