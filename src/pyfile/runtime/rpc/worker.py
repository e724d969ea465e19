"""The worker side (``--rpc-worker``, ``pyfile worker``): ggml's RPC server on this machine's
backend. The protocol has no authentication: workers bind loopback unless told otherwise
and warn when they do not."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import threading
from typing import Any, Callable

from ..errors import BackendError, UsageError
from .client import rpc_library
from .protocol import check_worker


#: ggml's ``enum ggml_backend_dev_type`` (ggml-backend.h).
DEV_CPU, DEV_GPU, DEV_IGPU = 0, 1, 2


def worker_device(dev_by_type: Callable[[int], Any], gpu_kind: str) -> Any:
    """The device a worker serves: the CPU, or for a GPU backend its first dedicated GPU,
    else its first integrated one (a laptop's or an APU's Vulkan device is an IGPU)."""
    if gpu_kind == "cpu":
        return dev_by_type(DEV_CPU)
    return dev_by_type(DEV_GPU) or dev_by_type(DEV_IGPU)


def serve_worker(llama_cpp: Any, host: str, port: int, gpu_kind: str) -> int:
    """Run ggml's RPC server on this machine's chosen backend until SIGINT/SIGTERM."""
    lib = rpc_library(llama_cpp)
    ggml = ctypes.CDLL("libggml.so.0")
    ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    dev = worker_device(ggml.ggml_backend_dev_by_type, gpu_kind)
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
    _announce_when_listening(host, port, done)
    while not done.wait(0.5):
        pass
    sys.stderr.write("pyfile: RPC worker stopped\n")
    sys.stderr.flush()
    os._exit(0)  # the server thread cannot be joined; nothing else to clean up


def _announce_when_listening(host: str, port: int, done: threading.Event) -> None:
    """Tell a parent on the readiness channel (ready.py) once ggml's server accepts
    connections: ggml binds inside its own thread and says nothing a program can read."""
    from ..ready import READY_FD_ENV, announce
    if not os.environ.get(READY_FD_ENV):
        return
    local = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    while not done.is_set():
        try:
            check_worker(local, port, timeout=1)  # a real HELLO: the server is up
            break
        except BackendError:
            done.wait(0.05)
    if not done.is_set():
        announce(host, port)


def standalone_worker(host: str, port: int) -> int:
    """``pyfile worker``: an RPC worker from the installed engine, with no model file.

    Without a model there is nothing to probe a CPU variant with, so the worker itself runs
    in a child process: if the chosen variant dies (SIGILL on a host that hides AMX state),
    the verdict is remembered and the worker restarts on the next variant.
    """
    import subprocess
    from ..backend import cpu
    from ..backend.engine import import_llama_cpp
    from ..ready import delegated_fds
    llama_cpp = import_llama_cpp()
    verdicts = cpu.Verdicts()
    engine = getattr(llama_cpp, "__version__", "?")
    for c in cpu.candidates(llama_cpp):
        key = cpu.verdict_key(engine, c.variant, cpu.file_id(c.path), "rpc-worker")
        if (verdicts.get(key) or {}).get("ok") is False:
            continue
        child = subprocess.Popen([sys.executable, "-c",
                                  "import sys; from pyfile.runtime.rpc import worker; "
                                  "sys.exit(worker._worker_child(*sys.argv[1:]))",
                                  c.path or "builtin", host, str(port)],
                                 pass_fds=delegated_fds())
        for sig in (signal.SIGINT, signal.SIGTERM):  # stopping us stops the worker
            signal.signal(sig, lambda s, _f, child=child: child.send_signal(signal.SIGTERM))
        code = child.wait()
        if code in (-signal.SIGILL, -signal.SIGSEGV, -signal.SIGBUS):
            verdicts.put(key, {"ok": False, "why": f"crashed with {signal.Signals(-code).name}",
                               "variant": c.variant})
            sys.stderr.write(f"pyfile: the {c.variant} variant crashed "
                             f"({signal.Signals(-code).name}); restarting on the next one\n")
            continue
        return code if code >= 0 else 1
    raise BackendError("no CPU variant of the engine can run here")


def _worker_child(variant: str, host: str, port: str) -> int:
    from ..backend import cpu
    from ..backend.engine import import_llama_cpp
    llama_cpp = import_llama_cpp()
    from ..backend import logs
    logs.route(llama_cpp, False)
    if variant != "builtin" and not cpu.load_backend(variant):
        return 3
    return serve_worker(llama_cpp, host, int(port), "cpu")
