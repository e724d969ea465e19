"""The readiness channel: how a program that starts a pyfile server learns where it listens.

The line on stderr (``pyfile: serving the web chat at ...``) is for people and may change.
A program that needs the address opens a pipe, passes its write end to the child and names
it in ``PYFILE_READY_FD``. Once the server (``--server``) or RPC worker (``--rpc-worker``)
accepts connections on its port, it writes one JSON line to that descriptor and closes it::

    {"host": "127.0.0.1", "port": 8080, "url": "http://127.0.0.1:8080/"}

(``url`` is null for an RPC worker.) End of file without a line means the child stopped
before it was ready. :func:`start` does all of this for a parent; the RPC supervisor, the
tests and the benchmarks use it.
"""

from __future__ import annotations

import json
import os
import select
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

if TYPE_CHECKING:
    import subprocess

#: Names the descriptor a server reports its address on (set by the parent, read once).
READY_FD_ENV = "PYFILE_READY_FD"


def announce(host: str, port: int, url: Optional[str] = None) -> None:
    """Report this process's listening address on the channel, if the parent opened one.

    Called once the port accepts connections. The variable is removed so that children
    of this process never write to a descriptor they do not own.
    """
    value = os.environ.pop(READY_FD_ENV, None)
    if not value:
        return
    try:
        fd = int(value)
    except ValueError:
        return
    line = json.dumps({"host": host, "port": port, "url": url}) + "\n"
    try:
        os.write(fd, line.encode("utf-8"))
    except OSError:
        pass  # the parent went away; nothing to report to
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def delegated_fds() -> Tuple[int, ...]:
    """``pass_fds`` for a child that will serve in this process's place (so that it can
    announce): the channel's descriptor when there is an open one."""
    value = os.environ.get(READY_FD_ENV, "")
    if not value.isdigit():
        return ()
    try:
        os.fstat(int(value))
    except OSError:
        return ()
    return (int(value),)


def start(cmd: List[str], env: Optional[Dict[str, str]] = None,
          timeout: Optional[float] = 120, **popen: Any) -> Tuple["subprocess.Popen[Any]", Optional[Dict[str, Any]]]:
    """Start ``cmd`` with a readiness channel; return the process and its announcement.

    The announcement is None when the child ended, or ``timeout`` seconds passed (None:
    no limit), before it was ready; the child is left running then: the caller decides.
    """
    import subprocess
    r, w = os.pipe()
    try:
        child_env = dict(os.environ if env is None else env, **{READY_FD_ENV: str(w)})
        proc = subprocess.Popen(cmd, env=child_env, pass_fds=(w,), **popen)
    finally:
        os.close(w)
    try:
        return proc, _read_announcement(r, timeout)
    finally:
        os.close(r)


def _read_announcement(fd: int, timeout: Optional[float]) -> Optional[Dict[str, Any]]:
    deadline = None if timeout is None else time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return None
        if not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        data += chunk
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
