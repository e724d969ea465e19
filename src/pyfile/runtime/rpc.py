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
from typing import Any, Callable, Dict, List, Tuple

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
    from .ready import READY_FD_ENV, announce
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


CHILD_ENV = "PYFILE_RPC_CHILD"


def _child_env() -> Dict[str, str]:
    """Environment of a supervised engine child: the same Python, no gdb backtrace on abort."""
    return dict(os.environ, **{CHILD_ENV: "1", "GGML_NO_BACKTRACE": "1",
                               "PYFILE_PYTHON": sys.executable})


def supervise(path: str, argv: List[str], endpoints: List[Tuple[str, int]]) -> int:
    """Run this pyfile again as a child and turn ggml's abort on a lost worker into an error.

    ggml's RPC client aborts the whole process when a worker disappears mid-run; a child
    process keeps that abort from becoming ours. Standard streams are shared with the child
    (chat stays interactive); only the exit status is interpreted here.
    """
    import subprocess
    proc = subprocess.Popen([path, *argv], env=_child_env())
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:  # the child got the same Ctrl-C; wait for it to finish
            continue
        except BaseException:  # SIGTERM (main.Terminated) or worse: the child stops with us
            proc.terminate()
            proc.wait()
            raise
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


def supervise_server(path: str, argv: List[str], endpoints: List[Tuple[str, int]],
                     host: str, port: int) -> int:
    """``--server --rpc``: keep serving when a worker dies.

    The HTTP server runs in a child process on a private loopback port; this process owns
    the public socket and relays bytes. When ggml aborts the child because a worker
    vanished, a request that got no answer yet receives an OpenAI-style 503 naming the
    worker, and the child is restarted with the workers that still answer (or locally).
    """
    import asyncio
    import json as _json
    import subprocess

    from . import ready as channel

    state: dict = {"proc": None, "port": None, "endpoints": list(endpoints), "lost": [],
                   "stopping": False}
    ready = threading.Event()

    def spawn() -> None:
        rpc_arg = ",".join(f"{h}:{p}" for h, p in state["endpoints"]) or "none"
        # The child shares our stderr (its log lines reach the user as they are) and
        # reports its private port on the readiness channel.
        proc, where = channel.start([path, *argv, "--rpc", rpc_arg, "--host", "127.0.0.1",
                                     "--port", "0", "--nobrowser"], env=_child_env(),
                                    timeout=None, stdin=subprocess.DEVNULL)
        state["proc"] = proc
        if where is not None:
            state["port"] = where["port"]
            ready.set()

    def watch() -> None:
        while not state["stopping"]:
            spawn()
            code = state["proc"].wait()
            ready.clear()
            if state["stopping"]:
                return
            alive = []
            for h, p in state["endpoints"]:
                try:
                    check_worker(h, p, timeout=2)
                    alive.append((h, p))
                except BackendError:
                    state["lost"].append(f"{h}:{p}")
            state["endpoints"] = alive
            state["diagnosed"] = state["proc"]  # the relay may now name the lost worker
            sys.stderr.write(f"pyfile: the engine stopped (exit {code}); RPC worker(s) "
                             f"{', '.join(state['lost']) or '?'} lost; restarting "
                             f"{'with ' + str(len(alive)) + ' worker(s)' if alive else 'locally'}\n")
            sys.stderr.flush()

    def error_response() -> bytes:
        from .server_errors import error_body
        body = _json.dumps(error_body(
            503, f"RPC worker {', '.join(state['lost']) or '(unknown)'} stopped answering; "
                 f"this request was aborted and the server is restarting without it",
            "server_error", "rpc_worker_lost")).encode()
        return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: " + str(len(body)).encode()
                + b"\r\n\r\n" + body)

    async def pipe(src: Any, dst: Any) -> bool:
        """Copy bytes until EOF or a broken connection; True if any were copied."""
        copied = False
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                dst.write(data)
                copied = True
                await dst.drain()
        except (OSError, ConnectionError):
            pass
        return copied

    async def relay(reader: Any, writer: Any) -> None:
        try:
            await _relay(reader, writer)
        except asyncio.CancelledError:  # shutting down
            writer.close()

    async def _relay(reader: Any, writer: Any) -> None:
        while not ready.is_set():
            await asyncio.sleep(0.1)
        proc = state["proc"]
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", state["port"])
        except OSError:
            writer.close()
            return
        task = asyncio.ensure_future(pipe(reader, up_w))
        sent = await pipe(up_r, writer)
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass
        if not sent:
            for _ in range(50):  # did the engine die under this request?
                if proc.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            if proc.poll() is not None:
                for _ in range(100):  # let the watcher find out which worker went away
                    if state.get("diagnosed") is proc:
                        break
                    await asyncio.sleep(0.05)
                try:
                    writer.write(error_response())
                    await writer.drain()
                except (OSError, ConnectionError):
                    pass
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(relay, host, port)
        shown = server.sockets[0].getsockname()[1]
        threading.Thread(target=watch, daemon=True).start()
        await asyncio.get_running_loop().run_in_executor(None, ready.wait)
        sys.stderr.write(f"pyfile: serving the web chat at http://{host}:{shown}/ and the "
                         f"OpenAI API at http://{host}:{shown}/v1 (layers on RPC workers "
                         f"{', '.join(f'{h}:{p}' for h, p in endpoints)}; Ctrl-C stops)\n")
        sys.stderr.flush()
        local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        local = f"[{local}]" if ":" in local else local
        channel.announce(host, shown, f"http://{local}:{shown}/")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        state["stopping"] = True
        server.close()
        if state["proc"] is not None and state["proc"].poll() is None:
            state["proc"].terminate()
            state["proc"].wait()

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        pass
    sys.stderr.write("pyfile: server stopped\n")
    return 0


def standalone_worker(host: str, port: int) -> int:
    """``pyfile worker``: an RPC worker from the installed engine, with no model file.

    Without a model there is nothing to probe a CPU variant with, so the worker itself runs
    in a child process: if the chosen variant dies (SIGILL on a host that hides AMX state),
    the verdict is remembered and the worker restarts on the next variant.
    """
    import subprocess
    from . import cpu
    from .engine import import_llama_cpp
    from .ready import delegated_fds
    llama_cpp = import_llama_cpp()
    verdicts = cpu.Verdicts()
    engine = getattr(llama_cpp, "__version__", "?")
    for c in cpu.candidates(llama_cpp):
        key = cpu.verdict_key(engine, c.variant, cpu.file_id(c.path), "rpc-worker")
        if (verdicts.get(key) or {}).get("ok") is False:
            continue
        child = subprocess.Popen([sys.executable, "-c",
                                  "import sys; from pyfile.runtime import rpc; "
                                  "sys.exit(rpc._worker_child(*sys.argv[1:]))",
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
    from . import cpu
    from .engine import import_llama_cpp
    llama_cpp = import_llama_cpp()
    from . import logs
    logs.route(llama_cpp, False)
    if variant != "builtin" and not cpu.load_backend(variant):
        return 3
    return serve_worker(llama_cpp, host, int(port), "cpu")
