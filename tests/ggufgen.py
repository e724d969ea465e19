"""Tiny GGUF files for tests, written with the ``gguf`` package (random weights)."""

from __future__ import annotations

import struct
from typing import Optional

import numpy as np

from pyfile.runtime.backend.engine import GGUF_MAGIC


def write_tiny(path: str, *, n_tensors: int = 3, seed: int = 0, name: str = "tiny",
               alignment: Optional[int] = None, big_tensor: int = 0) -> str:
    """A small but well-formed GGUF (not runnable): a few f32 tensors and some metadata."""
    import gguf
    w = gguf.GGUFWriter(path, "llama")
    w.add_name(name)
    w.add_context_length(256)
    w.add_block_count(1)
    w.add_embedding_length(16)
    w.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    if alignment:
        w.add_custom_alignment(alignment)
    rng = np.random.default_rng(seed)
    for i in range(n_tensors):
        w.add_tensor(f"t{i}", rng.standard_normal((4, 32)).astype(np.float32))
    if big_tensor:
        w.add_tensor("big", np.zeros(big_tensor // 4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def header(n_tensors: int, n_kv: int, version: int = 3, magic: bytes = GGUF_MAGIC) -> bytes:
    """Just a GGUF header: for hostile-count and truncation tests."""
    return magic + struct.pack("<IQQ", version, n_tensors, n_kv)


def gguf_string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def write_sparse(path: str, size: int) -> str:
    """A well-formed GGUF of about ``size`` bytes whose one big tensor is a hole (quick to
    make at any size; reads as zeros)."""
    import gguf
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("sparse")
    n = max(32, size // 4 // 32 * 32)
    w.add_tensor_info("big", [n], np.dtype(np.float32), n * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with open(path, "r+b") as f:
        data_start = -(-f.seek(0, 2) // 32) * 32  # GGUF's default alignment
        f.truncate(data_start + n * 4)
    return path
