"""Split a model across machines with llama.cpp's own RPC backend (ggml-rpc).

Workers run ggml's RPC server on their local backend (``--rpc-worker``); the main process
adds them as devices (``--rpc host:port,...``) and llama.cpp places layers on them. The RPC
protocol has no authentication: workers bind loopback unless told otherwise and warn when
they do not.

ggml's RPC client aborts the process when a worker cannot be reached or fails its handshake,
so every worker is checked from Python first (TCP connect + the protocol's HELLO, version
compared) and a problem is a one-line error instead.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import struct
import sys
import threading
from typing import Any, List, Tuple

from .errors import BackendError, UsageError

PROTO_MAJOR, PROTO_MINOR = 7, 0  # ggml-rpc.h of the engine we ship
CMD_HELLO = 14
CAPS_SIZE = 24
DEFAULT_PORT = 50052


def parse_endpoints(text: str) -> List[Tuple[str, int]]:
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"--rpc {item!r}: expected HOST:PORT")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise UsageError("--rpc needs at least one HOST:PORT")
    return out


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed the connection")
        data += chunk
    return data


def check_worker(host: str, port: int, timeout: float = 5.0) -> str:
    """Connect and say HELLO; return the worker's protocol version or raise BackendError."""
    where = f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(bytes([CMD_HELLO]) + struct.pack("<Q", CAPS_SIZE) + b"\0" * CAPS_SIZE)
            size = struct.unpack("<Q", _recv(s, 8))[0]
            if size != 4 + CAPS_SIZE:
                raise BackendError(f"RPC worker {where} answered HELLO with {size} bytes: "
                                   f"not a compatible ggml RPC server")
            major, minor, patch = _recv(s, 4)[:3]
    except OSError as e:
        raise BackendError(f"RPC worker {where} is unreachable ({e.strerror or e})") from None
    if major != PROTO_MAJOR or minor > PROTO_MINOR:
        raise BackendError(f"RPC worker {where} speaks protocol {major}.{minor}.{patch}, this "
                           f"engine {PROTO_MAJOR}.{PROTO_MINOR}: run the same pyfile version")
    return f"{major}.{minor}.{patch}"


def rpc_library(llama_cpp: Any) -> ctypes.CDLL:
    from .cpu import variant_dirs
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


def serve_worker(llama_cpp: Any, host: str, port: int, gpu_kind: str) -> int:
    """Run ggml's RPC server on this machine's chosen backend until SIGINT/SIGTERM."""
    lib = rpc_library(llama_cpp)
    ggml = ctypes.CDLL("libggml.so.0")
    ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    dev = ggml.ggml_backend_dev_by_type(1 if gpu_kind != "cpu" else 0)  # GPU or CPU device
    if not dev:
        raise BackendError("no device to serve")
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.stderr.write("pyfile: warning: the RPC protocol is unauthenticated: anyone who can "
                         f"reach {host}:{port} can run computations on this machine\n")
    try:  # fail early and clearly on a busy port (ggml would only print and return)
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    lib.ggml_backend_rpc_start_server.argtypes = [ctypes.c_char_p, ctypes.c_char_p,
                                                  ctypes.c_size_t, ctypes.c_size_t,
                                                  ctypes.POINTER(ctypes.c_void_p)]
    devices = (ctypes.c_void_p * 1)(dev)
    threads = max(1, os.cpu_count() or 1)
    endpoint = f"{host}:{port}".encode()
    done = threading.Event()

    def run() -> None:
        lib.ggml_backend_rpc_start_server(endpoint, None, threads, 1, devices)
        done.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    sys.stderr.write(f"pyfile: RPC worker listening on {host}:{port} "
                     f"({'GPU' if gpu_kind != 'cpu' else 'CPU'} device; Ctrl-C stops)\n")
    sys.stderr.flush()
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # ggml prints a banner on stdout
    threading.Thread(target=run, daemon=True).start()
    while not done.wait(0.5):
        pass
    sys.stderr.write("pyfile: RPC worker stopped\n")
    sys.stderr.flush()
    os._exit(0)  # the server thread cannot be joined; nothing else to clean up


CHILD_ENV = "PYFILE_RPC_CHILD"


def supervise(path: str, argv: List[str], endpoints: List[Tuple[str, int]]) -> int:
    """Run this pyfile again as a child and turn ggml's abort on a lost worker into an error.

    ggml's RPC client aborts the whole process when a worker disappears mid-run; a child
    process keeps that abort from becoming ours. Standard streams are shared with the child
    (chat stays interactive); only the exit status is interpreted here.
    """
    import subprocess
    env = dict(os.environ)
    env[CHILD_ENV] = "1"
    env["GGML_NO_BACKTRACE"] = "1"  # ggml would otherwise attach gdb to print a backtrace
    env["PYFILE_PYTHON"] = sys.executable
    proc = subprocess.Popen([path, *argv], env=env)
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:  # the child got the same Ctrl-C; wait for it to finish
            continue
    if code >= 0:
        return code
    lost = []
    for host, port in endpoints:
        try:
            check_worker(host, port, timeout=2)
        except BackendError:
            lost.append(f"{host}:{port}")
    if code == -signal.SIGABRT or lost:
        raise BackendError(f"RPC worker {', '.join(lost) or 'connection'} stopped answering "
                           f"during the run; the run was aborted (restart the worker and "
                           f"try again)")
    raise BackendError(f"the run ended with signal {-code}")
