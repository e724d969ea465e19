"""HTTP plumbing: the listening socket, the Host/Origin guard, the API key check, the body
limit, server-sent events, the web chat page.

Every request passes, in this order: :class:`SiteGuard` (Host and Origin allow-lists of
:mod:`.sites`, CORS, content types; 403 before routing and before the body is read),
:class:`BodyLimit` (413), :class:`ApiKey` (401), :class:`ClientWatch`, then the routes. The
API key is checked in ONE place for every path except :data:`PUBLIC_PATHS`, so a new route
can never ship without it.
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
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Union

from fastapi.responses import StreamingResponse

from ..errors import UsageError
from .errors import APIError, error_body
from .sites import ALLOWED_HOSTS_ENV, SitePolicy

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


async def send_error(scope: Dict, send: Callable, status: int, message: str,
                     type_: str = "invalid_request_error", code: Optional[str] = None) -> None:
    """Answer a request from a middleware: an HTTP error in its API's shape, or a refused
    WebSocket handshake (the server answers it with a 403)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    start, body = json_response_bytes(status, error_body(
        status, message, type_, code, flavor=flavor_of(scope.get("path", ""))))
    await send(start)
    await send(body)


def _header(scope: Dict, name: bytes) -> Optional[bytes]:
    for k, v in scope.get("headers") or ():
        if k == name:
            return v
    return None


def _count(scope: Dict, name: bytes) -> int:
    return sum(1 for k, _ in scope.get("headers") or () if k == name)


def _shown(value: bytes) -> str:
    """A header value safe to repeat in a message or a log line."""
    text = value.decode("latin-1")[:80]
    return repr("".join(c if c.isprintable() else "?" for c in text))


#: Content types of a JSON body (``application/json``, ``application/*+json``).
def is_json_type(value: bytes) -> bool:
    kind = value.split(b";", 1)[0].strip().lower()
    return kind == b"application/json" or (kind.startswith(b"application/")
                                           and kind.endswith(b"+json"))


#: The request headers a browser page may send to an allowed origin's server (preflight).
CORS_ALLOW_HEADERS = (b"authorization, content-type, x-api-key, anthropic-version, "
                      b"anthropic-beta, anthropic-dangerous-direct-browser-access, openai-beta, "
                      b"openai-organization, openai-project, x-stainless-arch, "
                      b"x-stainless-lang, x-stainless-os, x-stainless-package-version, "
                      b"x-stainless-retry-count, x-stainless-runtime, "
                      b"x-stainless-runtime-version, x-stainless-timeout, "
                      b"x-stainless-async, x-stainless-helper-method")



def replaying(body: bytes, receive: Callable) -> Callable:
    """An ASGI ``receive`` that hands on a body already read (whole, once), then the client's
    next messages (its disconnect): for middleware that must read the body before the app."""
    replayed = False

    async def replay() -> Dict:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay

class SiteGuard:
    """ASGI middleware, the outermost: DNS rebinding and cross-site requests never reach a
    route (:mod:`.sites` says which hosts and origins are allowed).

    - A ``Host`` outside the allow-list: 403 ``host_not_allowed``.
    - An ``Origin`` outside the allow-list (``null`` included): 403 ``origin_not_allowed``,
      before the body is read, whatever the method (a preflight too).
    - An allowed origin gets CORS headers naming it (``Vary: Origin``), never ``*`` and never
      credentials; its preflight is answered here (204).
    - A body sent from a browser page (it has an ``Origin``) must be JSON (415 otherwise): a
      page can send ``text/plain`` or form bodies without a preflight, JSON only after one.
      A body without an ``Origin`` (curl, SDKs, scripts) is read as JSON whatever its label,
      so ``curl -d '{...}'`` works.
    The first refusal of each kind says on stderr which flag would allow it.
    """

    def __init__(self, app: Any, policy: SitePolicy) -> None:
        self.app, self.policy = app, policy
        self.told: set = set()

    def _tell(self, kind: str, line: str) -> None:
        if kind not in self.told:
            self.told.add(kind)
            sys.stderr.write(f"pyfile: {line}\n")
            sys.stderr.flush()

    async def __call__(self, scope: Dict, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        host = _header(scope, b"host")
        if _count(scope, b"host") > 1 or not self.policy.host_ok(
                None if host is None else host.decode("latin-1")):
            shown = _shown(host or b"")
            self._tell("host", f"refused a request for Host {shown} (DNS rebinding "
                               f"protection); if that name is this machine, start with "
                               f"--allowed-hosts NAME or set {ALLOWED_HOSTS_ENV}")
            return await send_error(scope, send, 403, f"Host {shown} is not allowed: this "
                                    f"server answers IP addresses, localhost and the names "
                                    f"given with --allowed-hosts", "permission_error",
                                    "host_not_allowed")
        origin = _header(scope, b"origin")
        if origin is not None and (_count(scope, b"origin") > 1 or not self.policy.origin_ok(
                origin.decode("latin-1"), None if host is None else host.decode("latin-1"))):
            shown = _shown(origin)
            self._tell("origin", f"refused a request from the web page origin {shown}; to "
                                 f"let that page use this server, start with "
                                 f"--cors-origins ORIGIN")
            return await send_error(scope, send, 403, f"requests from the web page origin "
                                    f"{shown} are not allowed (start the server with "
                                    f"--cors-origins to allow it)", "permission_error",
                                    "origin_not_allowed")
        if scope["type"] != "http" or origin is None:
            if scope["type"] == "http" and scope.get("method") in ("POST", "PUT", "PATCH"):
                ctype = _header(scope, b"content-type")
                if ctype is None or not is_json_type(ctype):
                    # No Origin: not a browser page. Read the body as JSON (curl -d, scripts).
                    scope = dict(scope)
                    scope["headers"] = [(k, v) for k, v in scope.get("headers") or ()
                                        if k != b"content-type"] + [
                        (b"content-type", b"application/json")]
            return await self.app(scope, receive, send)

        if scope.get("method") == "OPTIONS" and _header(
                scope, b"access-control-request-method") is not None:
            await send({"type": "http.response.start", "status": 204, "headers": [
                (b"access-control-allow-origin", origin), (b"vary", b"Origin"),
                (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                (b"access-control-allow-headers", CORS_ALLOW_HEADERS),
                (b"access-control-max-age", b"600"), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            ctype = _header(scope, b"content-type")
            if ctype is None or not is_json_type(ctype):
                return await send_error(scope, send, 415, "a request from a web page must "
                                        "send its body as Content-Type: application/json",
                                        code="unsupported_media_type")

        async def with_cors(message: Dict) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers") or ()) + [
                    (b"access-control-allow-origin", origin), (b"vary", b"Origin")]
            await send(message)

        await self.app(scope, receive, with_cors)


class ApiKey:
    """ASGI middleware: with ``--api-key``, every non-public path needs the key.

    Accepted as ``Authorization: Bearer KEY`` (OpenAI, llama-server) or ``x-api-key: KEY``
    (Anthropic's clients).
    """

    def __init__(self, app: Any, key: Union[str, List[str]]) -> None:
        """``key``: the key, or several (``--api-key A,B``, ``--api-key-file``)."""
        self.app = app
        self.keys = [k.encode() for k in ([key] if isinstance(key, str) else key)]

    async def __call__(self, scope: Dict, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan: no client behind it
            return await self.app(scope, receive, send)
        if scope["type"] == "http" and (scope.get("method") == "OPTIONS"
                                        or scope.get("path", "") in PUBLIC_PATHS):
            return await self.app(scope, receive, send)
        given = _header(scope, b"authorization") or b""
        bearer = given[7:].strip() if given[:7].lower() == b"bearer " else b""
        other = _header(scope, b"x-api-key") or b""
        # Every key compared in constant time, all of them always: the time taken says
        # nothing about which key, or which header, matched.
        ok = False
        for key in self.keys:
            ok |= hmac.compare_digest(bearer, key)
            ok |= hmac.compare_digest(other, key)
        if ok:
            return await self.app(scope, receive, send)
        await send_error(scope, send, 401, "missing or wrong API key (Authorization: Bearer "
                         "KEY, or x-api-key: KEY)", "authentication_error", "invalid_api_key")


#: The ASGI ``receive`` of the request being handled (set by :class:`ClientWatch`): after the
#: body, its next message is ``http.disconnect`` when the client goes away.
CURRENT_RECEIVE: "contextvars.ContextVar[Any]" = contextvars.ContextVar("pyfile_receive",
                                                                         default=None)


#: The ASGI scope of the request being handled (set by :class:`ClientWatch`): :func:`sse`
#: reads its ``X-Conversation-Id`` (a resumable stream, :mod:`.streams`).
CURRENT_SCOPE: "contextvars.ContextVar[Any]" = contextvars.ContextVar("pyfile_scope",
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
        scope_token = CURRENT_SCOPE.set(scope)
        try:
            await self.app(scope, receive, send)
        finally:
            CURRENT_SCOPE.reset(scope_token)
            CURRENT_RECEIVE.reset(token)


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with a 413, whether the
    size is declared (``Content-Length``) or only found while reading (chunked).

    The body is read here, whole, before the app runs (the routes read it whole anyway), so a
    body over the limit is answered 413 by this middleware rather than failing inside the
    app's body parser as a 400."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.limit:
            return await self._reject(scope, send)
        chunks = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before its body ended
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                return await self._reject(scope, send)
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        await self.app(scope, replaying(body, receive), send)

    async def _reject(self, scope: Dict, send: Callable) -> None:
        await send_error(scope, send, 413, f"request body over {self.limit} bytes",
                         "invalid_request_error", "request_too_large")


def sse_data(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def sse(events: AsyncIterator[bytes], on_close: Callable[[], None],
        flavor: str = "openai") -> StreamingResponse:
    """Stream ``events``; an error mid-stream becomes an error event; ``on_close`` runs when
    the stream ends for any reason (a disconnect included), synchronously: anyio cancels
    every further ``await`` in a cancelled task's ``finally``. With ``X-Conversation-Id``,
    the stream is resumable (:mod:`.streams`): a disconnect no longer ends it."""

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

    from .streams import SSE_HEADERS, conversation_id, resumable
    conv_id = conversation_id(CURRENT_SCOPE.get())
    if conv_id:  # llama-server's resumable stream: it outlives this connection
        return resumable(conv_id, wrapped())
    return StreamingResponse(wrapped(), media_type="text/event-stream", headers=SSE_HEADERS)


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
