"""ggml's RPC protocol as far as pyfile speaks it: the ``--rpc`` endpoint list and the
HELLO handshake that checks a worker before ggml's client (which aborts the process on a
worker it cannot reach) ever sees it."""

from __future__ import annotations

import socket
import struct
from typing import List, Tuple

from ..errors import BackendError, UsageError

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
