"""The supervisor: a run with ``--rpc`` happens in a child process, so that ggml's abort on a
lost worker becomes an error (or, for a server, a 503 and a restart) instead of our death.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Tuple

from ..errors import BackendError
from .protocol import check_worker


CHILD_ENV = "PYFILE_RPC_CHILD"

#: Restarts of a server's engine child back off: the first waits RESTART_DELAY_S, each next
#: one twice as long, up to RESTART_DELAY_MAX_S; a child that served for STABLE_S resets the
#: count. After MAX_RESTARTS quick stops in a row (or a child that never started) the server
#: gives up with one line, rather than respawning in a tight loop.
RESTART_DELAY_S = 0.5
RESTART_DELAY_MAX_S = 30.0
STABLE_S = 60.0
MAX_RESTARTS = 5


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

    from .. import ready as channel

    state: dict = {"proc": None, "port": None, "endpoints": list(endpoints), "lost": [],
                   "stopping": False, "ever_ready": False, "gave_up": None}
    # The child listens on 127.0.0.1 but is reached under the public --host name: its Host
    # check must know that name too.
    from ..server.sites import ALLOWED_HOSTS_ENV
    child_env = _child_env()
    child_env[ALLOWED_HOSTS_ENV] = ",".join(x for x in (child_env.get(ALLOWED_HOSTS_ENV),
                                                        host) if x)
    ready = threading.Event()
    settled = threading.Event()  # the first child is serving, or the server gave up
    stopped = threading.Event()  # Ctrl-C / SIGTERM: cut a back-off short
    on_give_up: list = []

    def spawn() -> None:
        rpc_arg = ",".join(f"{h}:{p}" for h, p in state["endpoints"]) or "none"
        # The child shares our stderr (its log lines reach the user as they are) and
        # reports its private port on the readiness channel.
        proc, where = channel.start([path, *argv, "--rpc", rpc_arg, "--host", "127.0.0.1",
                                     "--port", "0", "--nobrowser"], env=child_env,
                                    timeout=None, stdin=subprocess.DEVNULL)
        state["proc"] = proc
        if where is not None:
            state["port"] = where["port"]
            state["ever_ready"] = True
            ready.set()
            settled.set()

    def watch() -> None:
        quick = 0  # stops in a row of children that did not serve for STABLE_S
        while not state["stopping"]:
            began = time.monotonic()
            spawn()
            code = state["proc"].wait()
            ready.clear()
            if state["stopping"]:
                return
            quick = quick + 1 if time.monotonic() - began < STABLE_S else 1
            alive = []
            for h, p in state["endpoints"]:
                try:
                    check_worker(h, p, timeout=2)
                    alive.append((h, p))
                except BackendError:
                    state["lost"].append(f"{h}:{p}")
            state["endpoints"] = alive
            state["diagnosed"] = state["proc"]  # the relay may now name the lost worker
            if not state["ever_ready"] or quick > MAX_RESTARTS:
                state["gave_up"] = (
                    f"the engine stopped (exit {code}) before it served" if not
                    state["ever_ready"] else
                    f"the engine stopped {quick} times in a row, each within {STABLE_S:g} s "
                    f"(last exit {code}; RPC worker(s) lost: "
                    f"{', '.join(state['lost']) or 'none'}); giving up")
                settled.set()
                for fn in on_give_up:
                    fn()
                return
            delay = min(RESTART_DELAY_MAX_S, RESTART_DELAY_S * 2 ** (quick - 1))
            sys.stderr.write(f"pyfile: the engine stopped (exit {code}); RPC worker(s) "
                             f"{', '.join(state['lost']) or '?'} lost; restarting "
                             f"{'with ' + str(len(alive)) + ' worker(s)' if alive else 'locally'}"
                             f" in {delay:g} s\n")
            sys.stderr.flush()
            if stopped.wait(delay):
                return

    def error_response() -> bytes:
        from ..server.errors import error_body
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
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        on_give_up.append(lambda: loop.call_soon_threadsafe(stop.set))
        threading.Thread(target=watch, daemon=True).start()
        await loop.run_in_executor(None, settled.wait)
        if state["gave_up"]:
            server.close()
            return
        sys.stderr.write(f"pyfile: serving the web chat at http://{host}:{shown}/ and the "
                         f"OpenAI API at http://{host}:{shown}/v1 (layers on RPC workers "
                         f"{', '.join(f'{h}:{p}' for h, p in endpoints)}; Ctrl-C stops)\n")
        sys.stderr.flush()
        local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        local = f"[{local}]" if ":" in local else local
        channel.announce(host, shown, f"http://{local}:{shown}/")
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        state["stopping"] = True
        stopped.set()
        server.close()
        if state["proc"] is not None and state["proc"].poll() is None:
            state["proc"].terminate()
            state["proc"].wait()

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        pass
    if state["gave_up"]:
        raise BackendError(state["gave_up"])
    sys.stderr.write("pyfile: server stopped\n")
    return 0
