"""HTTP plumbing: the listening socket, the API key check, the body limit, server-sent events,
the web chat page.

The API key is checked in ONE place (:class:`ApiKey`) for every path except
:data:`PUBLIC_PATHS`, so a new route can never ship without it.
"""

from __future__ import annotations

import contextvars
import hmac
import json
import os
import socket
import sys
import threading
import time
from typing import Any, AsyncIterator, Callable, Dict

from fastapi.responses import StreamingResponse

from ..errors import UsageError
from .errors import APIError, error_body

#: The only paths answered without the API key: the web chat page (it asks for the key
#: itself) and the health probe of load balancers.
PUBLIC_PATHS = frozenset({"/", "/health", "/v1/health"})


def flavor_of(path: str) -> str:
    """Which error shape a path's clients read."""
    return "anthropic" if path.startswith("/v1/messages") else "openai"


def json_response_bytes(status: int, body: Dict[str, Any]) -> tuple:
    data = json.dumps(body).encode()
    return ({"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(data)).encode())]},
            {"type": "http.response.body", "body": data})


class ApiKey:
    """ASGI middleware: with ``--api-key``, every non-public path needs the key.

    Accepted as ``Authorization: Bearer KEY`` (OpenAI, llama-server) or ``x-api-key: KEY``
    (Anthropic's clients).
    """

    def __init__(self, app: Any, key: str) -> None:
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: Dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("method") == "OPTIONS" \
                or scope.get("path", "") in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"")
        bearer = given[7:] if given[:7].lower() == b"bearer " else b""
        other = headers.get(b"x-api-key", b"")
        if hmac.compare_digest(bearer, self.key) or hmac.compare_digest(other, self.key):
            return await self.app(scope, receive, send)
        start, body = json_response_bytes(401, error_body(
            401, "missing or wrong API key (Authorization: Bearer KEY, or x-api-key: KEY)",
            "authentication_error", "invalid_api_key", flavor=flavor_of(scope.get("path", ""))))
        await send(start)
        await send(body)


#: The ASGI ``receive`` of the request being handled (set by :class:`ClientWatch`): after the
#: body, its next message is ``http.disconnect`` when the client goes away.
CURRENT_RECEIVE: "contextvars.ContextVar[Any]" = contextvars.ContextVar("pyfile_receive",
                                                                         default=None)


class ClientWatch:
    """ASGI middleware: lets a handler that waits for a whole generation (no stream) learn
    that its client hung up (:data:`CURRENT_RECEIVE`), so the slot is freed at once instead
    of generating up to its length limit for nobody, as llama-server does too."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        token = CURRENT_RECEIVE.set(receive)
        try:
            await self.app(scope, receive, send)
        finally:
            CURRENT_RECEIVE.reset(token)


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with a 413."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if scope.get("method") == "POST" and b"json" not in headers.get(b"content-type", b""):
            # Accept JSON bodies from clients that do not label them (curl -d, fetch, ...).
            scope = dict(scope)
            scope["headers"] = [(k, v) for k, v in scope.get("headers", [])
                                if k != b"content-type"] + [(b"content-type",
                                                              b"application/json")]
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(scope, send)
        seen = 0

        async def limited() -> Dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._reject(scope, send)

    async def _reject(self, scope: Dict, send: Callable) -> None:
        start, body = json_response_bytes(413, error_body(
            413, f"request body over {self.limit} bytes", code="request_too_large",
            flavor=flavor_of(scope.get("path", ""))))
        await send(start)
        await send(body)


class _TooLarge(Exception):
    pass


def sse_data(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def sse(events: AsyncIterator[bytes], on_close: Callable[[], None],
        flavor: str = "openai") -> StreamingResponse:
    """Stream ``events``; an error mid-stream becomes an error event; ``on_close`` runs when
    the stream ends for any reason (a disconnect included), synchronously: anyio cancels
    every further ``await`` in a cancelled task's ``finally``."""

    async def wrapped() -> AsyncIterator[bytes]:
        try:
            async for chunk in events:
                yield chunk
        except APIError as e:
            if flavor == "anthropic":
                yield b"event: error\n" + sse_data(e.body("anthropic"))
            else:
                yield sse_data(e.body())
                yield b"data: [DONE]\n\n"
        finally:
            on_close()

    return StreamingResponse(wrapped(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def web_chat_html() -> bytes:
    here = os.path.dirname(__file__)
    loader = globals().get("__loader__")
    path = os.path.join(here, "webchat.html")
    if loader is not None and hasattr(loader, "get_data"):
        try:
            return loader.get_data(path)
        except OSError:
            pass
    with open(path, "rb") as f:
        return f.read()


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def open_browser(url: str) -> None:
    """Open the web chat only where a graphical browser can exist (never a text browser)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                 or os.environ.get("WAYLAND_DISPLAY")):
        return
    import webbrowser

    def go() -> None:
        time.sleep(0.5)
        try:
            webbrowser.open(url)
        except Exception:
            pass
    threading.Thread(target=go, daemon=True).start()
