"""The supervisor: a run with ``--rpc`` happens in a child process, so that ggml's abort on a
lost worker becomes an error (or, for a server, a 503 and a restart: :mod:`.relay`) instead
of our death; and the restart policy a server's relay follows.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Dict, List, Tuple

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


def child_env() -> Dict[str, str]:
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
    proc = subprocess.Popen([path, *argv], env=child_env())
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
    """``--server --rpc``: keep serving when a worker dies (:class:`.relay.ServerRelay`)."""
    from .relay import ServerRelay
    return ServerRelay(path, argv, endpoints, host, port).run()
