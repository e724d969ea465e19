"""Images into a loaded model: llama.cpp's libmtmd (through the engine's ctypes bindings).

A :class:`Projector` binds one multimodal projector (an "mmproj" GGUF, a member of the
pyfile) to one loaded model. libmtmd opens the projector by path only (twice: its GGUF
reader and an ifstream), so the member is copied into an anonymous memory file (memfd) and
named as ``/proc/self/fd/N``; the projector's weights are read into libmtmd's own buffers
while it loads, so the memfd is closed right after and nothing is left on disk.

:meth:`Projector.tokenize` turns a prompt whose images are marked by :data:`MARKER` into
text and image :class:`Piece` runs; the pictures were decoded and checked by
:mod:`pyfile.runtime.server.images` (libmtmd's own decoder never sees user bytes). Every
cell of the context gets a cache key (a token id, or an image's content id and index), so a
conversation that repeats an image finds its cells in the cache instead of encoding it
again. :meth:`Projector.eval_image` encodes one image into a context (the server's
scheduler calls it for a slot); :meth:`Projector.prefill` does a whole prompt for the
terminal modes' ``Llama``, whose token history then holds a stand-in token for each image
cell, so its own prefix check sees an exact hit and it samples as usual.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

from ..errors import EngineError, InputError
from ..container.manifest import Manifest
from .engine import ModelSource

#: Where an image goes in a prompt given to :meth:`Projector.prefill`: random per process,
#: so no text a user sends can name an image slot.
MARKER = f"<__pyfile_image_{secrets.token_hex(8)}__>"

#: One cell of the context: a text token id, or (image id, index) for an image's cells.
Cell = Union[int, Tuple[str, int]]


class VisionError(InputError):
    """An image the model cannot take: no projector, or libmtmd refused it."""


def _mtmd() -> Any:
    try:
        from llama_cpp import mtmd_cpp
    except (ImportError, OSError) as e:
        raise EngineError(f"this engine has no libmtmd (images need it): {e}") from None
    return mtmd_cpp


_log_callback: Any = None  # kept alive: libmtmd holds a raw pointer to it


def _route_logs(m: Any, verbose: bool) -> None:
    """libmtmd's log (it echoes every prompt piece) on stderr only with ``-v``, as
    llama.cpp's (:mod:`.logs`)."""
    global _log_callback
    from llama_cpp import llama_cpp as L

    from .logs import stderr_callback
    _log_callback = stderr_callback(L, verbose)
    m.mtmd_log_set(_log_callback, None)
    m.mtmd_helper_log_set(_log_callback, None)


def projector_path(source: ModelSource) -> Tuple[str, int]:
    """A path libmtmd can open for ``source``: the file itself when it stands alone, else
    a memfd holding a copy of the member (path, fd to close after loading or -1)."""
    if not source.embedded:
        return source.path, -1
    fd = os.memfd_create("pyfile-mmproj", os.MFD_CLOEXEC)
    try:
        with open(source.path, "rb") as src:
            os.ftruncate(fd, source.size)
            done = 0
            while done < source.size:
                want = min(64 << 20, source.size - done)
                try:  # the kernel copies (sendfile works between any two filesystems)
                    n = os.sendfile(fd, src.fileno(), source.offset + done, want)
                except OSError:
                    src.seek(source.offset + done)
                    n = os.write(fd, src.read(min(1 << 20, want)))
                if n <= 0:
                    raise EngineError(f"{source.path}: the projector {source.name} is "
                                      f"truncated")
                done += n
    except BaseException:
        os.close(fd)
        raise
    return f"/proc/self/fd/{fd}", fd


def projector_source(path: str, manifest: Optional[Manifest], model: str,
                     override: Optional[str] = None) -> Optional[ModelSource]:
    """Where ``model``'s projector is: ``override`` (``--mmproj FILE``), else the member
    the manifest pairs with it in the pyfile at ``path``; None for a text-only model."""
    if override:
        if not os.path.isfile(override):
            raise InputError(f"--mmproj {override}: no such file")
        return ModelSource(os.path.abspath(override), 0, os.path.getsize(override),
                           os.path.basename(override))
    name = manifest.mmproj(model) if manifest is not None else None
    if name is None:
        return None
    entry = manifest.entry(name) or {}
    return ModelSource(os.path.abspath(path), int(entry["offset"]), int(entry["size"]), name)


@dataclass
class Stats:
    """What the last :meth:`Projector.prefill` did (for logs, timings and tests)."""

    images: int = 0  # images in the prompt
    encoded: int = 0  # of them, encoded now (the others came from the cache)
    cached_cells: int = 0  # cells reused from the context
    encode_s: float = 0.0  # time spent encoding and decoding images
    prompt_cells: int = 0


@dataclass
class Piece:
    """A run of a tokenized prompt: text tokens, or one image (``chunk`` is libmtmd's,
    valid while its :class:`Pieces` is open; ``cells`` are its positions' cache keys)."""

    cells: List[Cell]
    image: Optional[str] = None  # the picture's content id
    chunk: Any = None

    @property
    def tokens(self) -> List[int]:
        return self.cells  # type: ignore[return-value]  (text pieces hold token ids)


class Pieces:
    """A prompt tokenized by libmtmd (text and image pieces); :meth:`close` frees it."""

    def __init__(self, m: Any, handle: Any, pieces: List[Piece]) -> None:
        self._m, self._handle, self.pieces = m, handle, pieces

    @property
    def cells(self) -> List[Cell]:
        return [c for p in self.pieces for c in p.cells]

    @property
    def images(self) -> int:
        return sum(1 for p in self.pieces if p.image is not None)

    def piece_at(self, cell: Cell) -> Piece:
        """The image piece whose first cell is ``cell``."""
        for p in self.pieces:
            if p.image is not None and p.cells[0] == cell:
                return p
        raise KeyError(cell)

    @staticmethod
    def boundary(cells: List[Cell], keep: int) -> int:
        """``keep`` cached cells moved back to the start of the image it would cut (an
        image is reused whole or read again)."""
        if keep < len(cells) and not isinstance(cells[keep], int):
            return keep - cells[keep][1]  # type: ignore[index]
        return keep

    @staticmethod
    def text_run(cells: List[Cell]) -> List[Cell]:
        """The text tokens ``cells`` starts with, up to the next image."""
        for j, c in enumerate(cells):
            if not isinstance(c, int):
                return cells[:j]
        return cells

    def close(self) -> None:
        if self._handle is not None:
            self._m.mtmd_input_chunks_free(self._handle)
            self._handle = None

    def __del__(self) -> None:  # pragma: no cover
        with contextlib.suppress(Exception):
            self.close()


class Projector:
    """A multimodal projector bound to one loaded model (``llama_model*``). Tokenizing may
    run in any thread (under :attr:`lock`); evaluating images belongs to the thread that
    owns the context, as libmtmd's helpers say."""

    def __init__(self, model: Any, source: ModelSource, threads: Optional[int] = None,
                 verbose: bool = False) -> None:
        m = _mtmd()
        self._m = m
        self.name = source.name
        params = m.mtmd_context_params_default()
        params.use_gpu = False  # the CPU: the GPU variants' devices are not libmtmd's to pick
        params.print_timings = verbose
        params.warmup = False
        params.n_threads = threads or max(1, (os.cpu_count() or 2) // 2)
        path, fd = projector_path(source)
        try:
            from llama_cpp._utils import suppress_stdout_stderr
            with suppress_stdout_stderr(disable=verbose):
                ctx = m.mtmd_init_from_file(path.encode(), model, params)
        finally:
            if fd >= 0:
                os.close(fd)
        if not ctx:
            raise EngineError(f"{source.name}: libmtmd could not load the projector for this "
                              f"model; run with -v for llama.cpp's log")
        _route_logs(m, verbose)  # after loading: libmtmd takes llama.cpp's logger then
        self.ctx = ctx
        self.vision = bool(m.mtmd_support_vision(ctx))
        self.lock = threading.Lock()
        self.encoded = 0  # images encoded so far (a cache hit does not count)
        self.encode_s = 0.0

    def close(self) -> None:
        if self.ctx:
            self._m.mtmd_free(self.ctx)
            self.ctx = None

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order
        with contextlib.suppress(Exception):
            self.close()

    def tokenize(self, prompt: str, pictures: Sequence[Any], add_special: bool = True,
                 parse_special: bool = True) -> Pieces:
        """``prompt`` (one :data:`MARKER` per picture) as text and image pieces."""
        pieces = prompt.split(MARKER)
        if len(pieces) != len(pictures) + 1:
            raise VisionError(f"{len(pictures)} image(s) but {len(pieces) - 1} image "
                              f"place(s) in the prompt")
        if pictures and not self.vision:
            raise VisionError(f"{self.name}: this projector takes no images")
        m = self._m
        bitmaps, keep, parts = [], [], []
        with self.lock:
            handle = m.mtmd_input_chunks_init()
            try:
                for i, text in enumerate(pieces):
                    if text:
                        raw = text.encode("utf-8")
                        t = m.mtmd_input_text(raw, len(raw), add_special, parse_special)
                        keep += [raw, t]
                        parts.append(m.mtmd_input_part(ctypes.pointer(t), None))
                    if i < len(pictures):
                        pic = pictures[i]
                        buf = (ctypes.c_ubyte * len(pic.rgb)).from_buffer_copy(pic.rgb)
                        bmp = m.mtmd_bitmap_init(pic.width, pic.height, buf)
                        if not bmp:
                            raise VisionError(f"image {i + 1}: libmtmd refused the bitmap")
                        bitmaps.append(bmp)
                        m.mtmd_bitmap_set_id(bmp, pic.id.encode())
                        parts.append(m.mtmd_input_part(None, bmp))
                if not parts:
                    raise VisionError("the prompt is empty")
                arr = (ctypes.POINTER(m.mtmd_input_part) * len(parts))(
                    *[ctypes.pointer(p) for p in parts])
                rc = m.mtmd_tokenize_from_parts(self.ctx, handle, arr, len(parts),
                                                add_special)
                if rc != 0:
                    raise VisionError(f"libmtmd could not prepare the prompt (error {rc})")
                out = []
                for i in range(m.mtmd_input_chunks_size(handle)):
                    chunk = m.mtmd_input_chunks_get(handle, i)
                    if m.mtmd_input_chunk_get_type(chunk) == m.MTMD_INPUT_CHUNK_TYPE_TEXT:
                        count = ctypes.c_size_t()
                        ptr = m.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                        out.append(Piece([int(ptr[j]) for j in range(count.value)]))
                    else:
                        ident = (m.mtmd_input_chunk_get_id(chunk) or b"").decode()
                        npos = int(m.mtmd_input_chunk_get_n_pos(chunk))
                        out.append(Piece([(ident, j) for j in range(npos)], ident, chunk))
            except BaseException:
                m.mtmd_input_chunks_free(handle)
                raise
            finally:
                for bmp in bitmaps:
                    m.mtmd_bitmap_free(bmp)
        return Pieces(m, handle, out)

    def eval_image(self, piece: Piece, lctx: Any, n_past: int, seq_id: int,
                   n_batch: int) -> int:
        """Encode ``piece``'s image and decode it into ``lctx`` at ``n_past`` for sequence
        ``seq_id``; the position after it. Raises :class:`VisionError`."""
        from llama_cpp import llama_cpp as L
        t0 = time.perf_counter()
        new_n = L.llama_pos(0)
        rc = self._m.mtmd_helper_eval_chunk_single(self.ctx, lctx, piece.chunk, n_past, seq_id,
                                                   n_batch, False, ctypes.byref(new_n))
        if rc != 0:
            raise VisionError(f"the model could not take the image (libmtmd error {rc})")
        self.encoded += 1
        self.encode_s += time.perf_counter() - t0
        return int(new_n.value)

    # -- the terminal modes: one llama-cpp-python Llama -------------------------------------

    def prefill(self, llm: Any, prompt: str, pictures: Sequence[Any],
                add_special: bool = True) -> Stats:
        """Put ``prompt`` (images at :data:`MARKER`, one per picture) into ``llm``'s
        context, reusing the cached cells it starts with. Afterwards
        ``llm.input_ids[:llm.n_tokens]`` is the prompt to sample after."""
        pieces = self.tokenize(prompt, pictures, add_special)
        try:
            return self._prefill(llm, pieces.pieces)
        finally:
            pieces.close()

    def _prefill(self, llm: Any, plan: List[Piece]) -> Stats:
        wanted: List[Cell] = [c for p in plan for c in p.cells]
        if len(wanted) >= llm.n_ctx():
            raise VisionError(f"the prompt is {len(wanted)} tokens, the context holds "
                              f"{llm.n_ctx()}; raise -c/--ctx-size")
        if plan[-1].image is not None:
            raise VisionError("the prompt must end with text after its last image")
        # The cells the context holds: ours, then what the Llama generated after them.
        mine: List[Cell] = getattr(llm, "pyfile_cells", [])
        held = list(mine[:llm.n_tokens])
        held += [int(t) for t in llm.input_ids[len(held):llm.n_tokens]]
        reuse = 0
        for piece in plan:
            k = 0
            while k < len(piece.cells) and reuse + k < len(held) and \
                    held[reuse + k] == piece.cells[k]:
                k += 1
            if k == len(piece.cells):
                reuse += k
                continue
            if piece.image is None:  # a text piece's matching head counts; an image's not
                reuse += k
            break
        if reuse >= len(wanted):
            reuse = len(wanted) - 1  # decode the last token again: its logits are needed
        stats = Stats(images=sum(1 for p in plan if p.image is not None),
                      cached_cells=reuse, prompt_cells=len(wanted))
        if reuse < llm.n_tokens:
            llm._ctx.kv_cache_seq_rm(-1, reuse, -1)
        llm.n_tokens = reuse
        llm.pyfile_cells = list(wanted[:reuse])
        standin = max(0, int(llm.token_eos()))
        pos = 0
        for piece in plan:
            start, pos = pos, pos + len(piece.cells)
            if pos <= reuse:
                continue
            if piece.image is None:
                llm.eval(piece.tokens[max(0, reuse - start):])
            else:
                t0 = time.perf_counter()
                try:
                    new_n = self.eval_image(piece, llm._ctx.ctx, llm.n_tokens, 0, llm.n_batch)
                except VisionError:
                    llm._ctx.kv_cache_seq_rm(-1, llm.n_tokens, -1)
                    raise
                llm.input_ids[llm.n_tokens:new_n] = standin
                llm.n_tokens = new_n
                stats.encoded += 1
                stats.encode_s += time.perf_counter() - t0
            llm.pyfile_cells = list(wanted[:llm.n_tokens])
        return stats


def load_projector(model: Any, source: ModelSource, threads: Optional[int] = None,
                   verbose: bool = False) -> Projector:
    """A :class:`Projector` for a loaded ``llama_model*`` from ``source`` (raises
    :class:`EngineError`)."""
    return Projector(model, source, threads, verbose)


__all__ = ["MARKER", "Piece", "Pieces", "Projector", "Stats", "VisionError",
           "load_projector", "projector_path"]
