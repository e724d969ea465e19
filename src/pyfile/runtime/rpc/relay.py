"""``--server --rpc``: a server that keeps serving when an RPC worker dies.

The HTTP server runs in a child process on a private loopback port; this process owns the
public socket and relays bytes (:class:`ServerRelay`). When ggml aborts the child because a
worker vanished, a request that got no answer yet receives an OpenAI-style 503 naming the
worker, and the child is restarted with the workers that still answer (or locally), backing
off as :mod:`.supervisor` says and giving up with one line after too many quick stops.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from typing import Any, List, Optional, Tuple

from .. import ready as channel
from ..errors import BackendError
from . import supervisor as policy  # the restart policy's numbers, read when used
from .protocol import check_worker


class ServerRelay:
    """The public socket, the engine child behind it, and the watcher that restarts it."""

    def __init__(self, path: str, argv: List[str], endpoints: List[Tuple[str, int]],
                 host: str, port: int) -> None:
        from ..server.sites import ALLOWED_HOSTS_ENV
        self.path, self.argv, self.host, self.port = path, argv, host, port
        self.workers = list(endpoints)          # as given, for the start line
        self.endpoints = list(endpoints)        # the ones still answering
        self.lost: List[str] = []
        self.proc: Optional[subprocess.Popen] = None
        self.child_port: Optional[int] = None
        self.diagnosed: Optional[subprocess.Popen] = None  # the child whose loss is explained
        self.stopping = False
        self.ever_ready = False
        self.gave_up: Optional[str] = None
        # The child listens on 127.0.0.1 but is reached under the public --host name: its
        # Host check must know that name too.
        self.env = policy.child_env()
        self.env[ALLOWED_HOSTS_ENV] = ",".join(
            x for x in (self.env.get(ALLOWED_HOSTS_ENV), host) if x)
        self.ready = threading.Event()     # a child serves now
        self.settled = threading.Event()   # the first child is serving, or the server gave up
        self.stopped = threading.Event()   # Ctrl-C / SIGTERM: cut a back-off short
        self._on_give_up: List[Any] = []

    def run(self) -> int:
        """Serve until SIGINT/SIGTERM (0) or raise :class:`BackendError` when it gave up."""
        try:
            asyncio.run(self._main())
        except asyncio.CancelledError:
            pass
        if self.gave_up:
            raise BackendError(self.gave_up)
        sys.stderr.write("pyfile: server stopped\n")
        return 0

    # -- the engine child (a thread) ------------------------------------------------------------

    def _spawn(self) -> None:
        rpc_arg = ",".join(f"{h}:{p}" for h, p in self.endpoints) or "none"
        # The child shares our stderr (its log lines reach the user as they are) and
        # reports its private port on the readiness channel.
        proc, where = channel.start([self.path, *self.argv, "--rpc", rpc_arg, "--host",
                                     "127.0.0.1", "--port", "0", "--nobrowser"],
                                    env=self.env, timeout=None, stdin=subprocess.DEVNULL)
        self.proc = proc
        if where is not None:
            self.child_port = where["port"]
            self.ever_ready = True
            self.ready.set()
            self.settled.set()

    def _watch(self) -> None:
        quick = 0  # stops in a row of children that did not serve for STABLE_S
        while not self.stopping:
            began = time.monotonic()
            self._spawn()
            assert self.proc is not None
            code = self.proc.wait()
            self.ready.clear()
            if self.stopping:
                return
            quick = quick + 1 if time.monotonic() - began < policy.STABLE_S else 1
            alive = self._still_answering()
            self.diagnosed = self.proc  # the relay may now name the lost worker
            if not self.ever_ready or quick > policy.MAX_RESTARTS:
                self.gave_up = (
                    f"the engine stopped (exit {code}) before it served" if not
                    self.ever_ready else
                    f"the engine stopped {quick} times in a row, each within "
                    f"{policy.STABLE_S:g} s "
                    f"(last exit {code}; RPC worker(s) lost: "
                    f"{', '.join(self.lost) or 'none'}); giving up")
                self.settled.set()
                for fn in self._on_give_up:
                    fn()
                return
            delay = min(policy.RESTART_DELAY_MAX_S,
                        policy.RESTART_DELAY_S * 2 ** (quick - 1))
            sys.stderr.write(f"pyfile: the engine stopped (exit {code}); RPC worker(s) "
                             f"{', '.join(self.lost) or '?'} lost; restarting "
                             f"{'with ' + str(len(alive)) + ' worker(s)' if alive else 'locally'}"
                             f" in {delay:g} s\n")
            sys.stderr.flush()
            if self.stopped.wait(delay):
                return

    def _still_answering(self) -> List[Tuple[str, int]]:
        """Check every worker again; the lost ones are remembered, the rest kept."""
        alive = []
        for h, p in self.endpoints:
            try:
                check_worker(h, p, timeout=2)
                alive.append((h, p))
            except BackendError:
                self.lost.append(f"{h}:{p}")
        self.endpoints = alive
        return alive

    # -- the public socket (the event loop) -------------------------------------------------------

    def _error_response(self) -> bytes:
        from ..server.errors import error_body
        body = json.dumps(error_body(
            503, f"RPC worker {', '.join(self.lost) or '(unknown)'} stopped answering; "
                 f"this request was aborted and the server is restarting without it",
            "server_error", "rpc_worker_lost")).encode()
        return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: " + str(len(body)).encode()
                + b"\r\n\r\n" + body)

    @staticmethod
    async def _pipe(src: Any, dst: Any) -> bool:
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

    async def _relay(self, reader: Any, writer: Any) -> None:
        try:
            await self._relay_one(reader, writer)
        except asyncio.CancelledError:  # shutting down
            writer.close()

    async def _relay_one(self, reader: Any, writer: Any) -> None:
        while not self.ready.is_set():
            await asyncio.sleep(0.1)
        proc = self.proc
        assert proc is not None
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.child_port)
        except OSError:
            writer.close()
            return
        task = asyncio.ensure_future(self._pipe(reader, up_w))
        sent = await self._pipe(up_r, writer)
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass
        if not sent and await self._died_under_request(proc):
            try:
                writer.write(self._error_response())
                await writer.drain()
            except (OSError, ConnectionError):
                pass
        writer.close()

    async def _died_under_request(self, proc: subprocess.Popen) -> bool:
        """Whether the child ended under a request that got no answer; then wait (briefly)
        for the watcher to find out which worker went away, so the 503 can name it."""
        for _ in range(50):
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        if proc.poll() is None:
            return False
        for _ in range(100):
            if self.diagnosed is proc:
                break
            await asyncio.sleep(0.05)
        return True

    async def _main(self) -> None:
        server = await asyncio.start_server(self._relay, self.host, self.port)
        shown = server.sockets[0].getsockname()[1]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._on_give_up.append(lambda: loop.call_soon_threadsafe(stop.set))
        threading.Thread(target=self._watch, daemon=True).start()
        await loop.run_in_executor(None, self.settled.wait)
        if self.gave_up:
            server.close()
            return
        host = self.host
        sys.stderr.write(f"pyfile: serving the web chat at http://{host}:{shown}/ and the "
                         f"OpenAI API at http://{host}:{shown}/v1 (layers on RPC workers "
                         f"{', '.join(f'{h}:{p}' for h, p in self.workers)}; Ctrl-C stops)\n")
        sys.stderr.flush()
        local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        local = f"[{local}]" if ":" in local else local
        channel.announce(host, shown, f"http://{local}:{shown}/")
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        self.stopping = True
        self.stopped.set()
        server.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()
