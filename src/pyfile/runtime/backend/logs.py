"""llama.cpp's log, on stderr only with ``-v``.

llama-cpp-python 0.3.36 routes llama.cpp's log through a callback whose level table predates
ggml's current enum (NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5): it reads WARN as
ERROR, so warnings such as "n_ctx_seq (16384) > n_ctx_train (8192)" reach stderr even with
``verbose=False``, breaking the run modes' promise of one line on stderr. This callback
replaces it: everything with ``-v``, nothing otherwise (pyfile reports failures itself).
"""

from __future__ import annotations

import sys
from typing import Any

_callback: Any = None  # kept alive: llama.cpp holds a raw pointer to it


def route(llama_cpp: Any, verbose: bool) -> None:
    """Install the callback on the loaded engine (call again to change ``verbose``)."""
    global _callback
    from llama_cpp._logger import set_verbose
    set_verbose(verbose)  # llama-cpp-python's own Python-side logging

    _callback = stderr_callback(llama_cpp, verbose)
    llama_cpp.llama_log_set(_callback, None)


def stderr_callback(llama_cpp: Any, verbose: bool) -> Any:
    """A ggml log callback that writes to stderr with ``-v`` and drops the log otherwise
    (llama.cpp's and libmtmd's take the same type); the caller keeps it alive."""
    def log(level: int, text: bytes, user_data: Any) -> None:
        if verbose:
            sys.stderr.write(text.decode("utf-8", "replace"))
            sys.stderr.flush()
    return llama_cpp.llama_log_callback(log)
