"""The engine: llama-cpp-python, with the weights read in place from the pyfile.

The one adapter: llama.cpp can load a GGUF from an open ``FILE*`` positioned at the
GGUF's first byte (``llama_model_load_from_file_ptr``) and mmaps it in place when the
data is 32-byte aligned. ``Llama`` only knows paths, so :func:`create_llama` sets the
pending :class:`ModelSource` for this thread and a subclass of llama-cpp-python's
``_internals.LlamaModel`` (installed once) loads from that ``FILE*`` instead of the path.
Everything else about ``Llama`` is untouched, so every feature keeps working.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import EngineError, EngineVersionError

#: The one llama-cpp-python version the adapter below was written against: it subclasses
#: ``_internals.LlamaModel`` with a copy of that version's private constructor.
ENGINE_VERSION = "0.3.36"
ENGINE_REQUIREMENT = f"llama-cpp-python=={ENGINE_VERSION}"
#: The first four bytes of every GGUF file (``GGUF_MAGIC`` in llama.cpp's gguf.h). The one
#: definition: build-time code imports it from here.
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelSource:
    """Where a GGUF lives: ``size`` bytes at ``offset`` in ``path`` (offset 0 = a plain file)."""

    path: str
    offset: int
    size: int
    name: str

    @property
    def embedded(self) -> bool:
        return self.offset != 0


def import_llama_cpp() -> Any:
    """Import llama_cpp, or say exactly what to install.

    Raises :class:`EngineError` when it is missing or its library does not load, and
    :class:`EngineVersionError` when it is any version but :data:`ENGINE_VERSION`.
    """
    try:
        import llama_cpp
    except ImportError:
        raise EngineError(
            f"the inference engine is missing: install it with "
            f"'{sys.executable} -m pip install {ENGINE_REQUIREMENT}' "
            f"(or run a pyfile built with its runtime inside)") from None
    except OSError as e:
        raise EngineError(f"llama-cpp-python is installed but its library failed to load: "
                          f"{e}") from None
    check_engine_version(llama_cpp)
    return llama_cpp


def check_engine_version(llama_cpp: Any) -> None:
    """Refuse any llama-cpp-python but :data:`ENGINE_VERSION` before touching its internals."""
    found = getattr(llama_cpp, "__version__", None)
    if found != ENGINE_VERSION:
        where = os.path.dirname(os.path.dirname(getattr(llama_cpp, "__file__", "") or "?"))
        raise EngineVersionError(
            f"llama-cpp-python {found or '(no version)'} is installed in {where}, but pyfile "
            f"runs only with {ENGINE_VERSION} (it loads models through that version's "
            f"internals): install it with '{sys.executable} -m pip install "
            f"{ENGINE_REQUIREMENT}', or run a pyfile built with its runtime inside")


class _Libc:
    """fdopen/fseeko/fclose from the C library llama.cpp itself uses."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fdopen = libc.fdopen
        self.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
        self.fdopen.restype = ctypes.c_void_p
        self.fseeko = libc.fseeko
        self.fseeko.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
        self.fseeko.restype = ctypes.c_int
        self.fclose = libc.fclose
        self.fclose.argtypes = [ctypes.c_void_p]
        self.fclose.restype = ctypes.c_int


_libc: Optional[_Libc] = None


@contextlib.contextmanager
def open_file_ptr(path: str, offset: int) -> Any:
    """A C ``FILE*`` opened read-only on ``path`` and positioned at ``offset``."""
    global _libc
    if _libc is None:
        _libc = _Libc()
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise EngineError(f"{path}: cannot open: {e.strerror}") from None
    fp = _libc.fdopen(fd, b"rb")
    if not fp:
        os.close(fd)
        raise EngineError(f"{path}: fdopen failed (errno {ctypes.get_errno()})")
    try:
        if _libc.fseeko(fp, offset, os.SEEK_SET) != 0:
            raise EngineError(f"{path}: cannot seek to offset {offset}")
        yield fp
    finally:
        _libc.fclose(fp)  # the model keeps its own mapping of the file


def load_model_from_source(source: ModelSource, params: Any) -> Any:
    """``llama_model*`` for ``source`` (None if llama.cpp refused it)."""
    from llama_cpp import llama_cpp as L
    if not source.embedded:
        return L.llama_model_load_from_file(source.path.encode("utf-8"), params)
    with open_file_ptr(source.path, source.offset) as fp:
        return L.llama_model_load_from_file_ptr(fp, params)


_pending = threading.local()
_adapter_installed = False
_adapter_lock = threading.Lock()


def _install_adapter() -> None:
    """Make ``Llama`` load the pending :class:`ModelSource` of this thread (once per process)."""
    global _adapter_installed
    with _adapter_lock:
        if _adapter_installed:
            return
        import llama_cpp
        import llama_cpp._internals as internals
        from llama_cpp import llama_cpp as L
        check_engine_version(llama_cpp)  # the constructor below is 0.3.36's
        from llama_cpp._utils import suppress_stdout_stderr

        base = internals.LlamaModel

        class SourceLlamaModel(base):  # type: ignore[misc, valid-type]
            """``LlamaModel`` that loads a GGUF embedded at an offset in a bigger file."""

            def __init__(self, *, path_model: str, params: Any, verbose: bool = True) -> None:
                source = getattr(_pending, "source", None)
                if source is None or source.path != path_model:
                    super().__init__(path_model=path_model, params=params, verbose=verbose)
                    return
                # Mirrors LlamaModel.__init__ of llama-cpp-python 0.3.36, with the FILE* load.
                self.path_model = path_model
                self.params = params
                self.verbose = verbose
                self._exit_stack = contextlib.ExitStack()
                self.sampler = None
                self.custom_samplers = []
                with suppress_stdout_stderr(disable=verbose):
                    model = load_model_from_source(source, params)
                if model is None:
                    raise ValueError(f"Failed to load model {source.name} from {path_model}")
                vocab = L.llama_model_get_vocab(model)
                if vocab is None:
                    L.llama_model_free(model)
                    raise ValueError(f"Failed to get vocab from model {source.name}")
                self.model = model
                self.vocab = vocab

                def free_model() -> None:
                    if self.model is None:
                        return
                    L.llama_model_free(self.model)
                    self.model = None

                self._exit_stack.callback(free_model)

        internals.LlamaModel = SourceLlamaModel
        _adapter_installed = True


def create_llama(source: ModelSource, **kwargs: Any) -> Any:
    """A ``llama_cpp.Llama`` for ``source``; ``kwargs`` go to ``Llama`` unchanged."""
    llama_cpp = import_llama_cpp()
    _install_adapter()
    _pending.source = source
    try:
        return llama_cpp.Llama(model_path=source.path, **kwargs)
    except ValueError as e:
        raise EngineError(f"{source.name}: llama.cpp could not load the model ({e}); "
                          f"run with -v for llama.cpp's log") from None
    finally:
        _pending.source = None
