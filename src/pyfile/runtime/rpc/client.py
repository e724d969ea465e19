"""The client side: ggml's RPC library, and workers added to this process as devices on
which llama.cpp places layers."""

from __future__ import annotations

import ctypes
import os
from typing import Any, List, Tuple

from ..errors import BackendError
from .protocol import check_worker


def rpc_library(llama_cpp: Any) -> ctypes.CDLL:
    from ..backend.cpu import variant_dirs
    for d in variant_dirs(llama_cpp):
        path = os.path.join(d, "libggml-rpc.so")
        if os.path.isfile(path):
            return ctypes.CDLL(path)
    raise BackendError("this engine was built without the RPC backend (GGML_RPC=ON)")


def add_workers(llama_cpp: Any, endpoints: List[Tuple[str, int]]) -> List[str]:
    """Check each worker, then register it with ggml as a device for this process."""
    versions = [check_worker(h, p) for h, p in endpoints]
    lib = rpc_library(llama_cpp)
    lib.ggml_backend_rpc_add_server.restype = ctypes.c_void_p
    lib.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
    ggml = ctypes.CDLL("libggml.so.0")
    ggml.ggml_backend_register.argtypes = [ctypes.c_void_p]
    names = []
    for (host, port), version in zip(endpoints, versions):
        reg = lib.ggml_backend_rpc_add_server(f"{host}:{port}".encode())
        if not reg:
            raise BackendError(f"RPC worker {host}:{port}: registration failed")
        ggml.ggml_backend_register(reg)
        names.append(f"{host}:{port}")
    return names
