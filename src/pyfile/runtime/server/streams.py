"""Resumable streams, as llama-server's ``/v1/stream``: a streamed answer whose request
carries ``X-Conversation-Id`` is kept in a session that outlives its connection.

The answer is produced by a task of its own into the session, and the response only reads
the session: when the client goes away (a reload, a phone that slept) the generation goes on,
and ``GET /v1/stream?conv_id=ID&from=N`` replays the stream from byte N, then follows it
live until it ends. ``POST /v1/streams/lookup`` says which of the ids a client names have a
session (never lists others), ``DELETE /v1/stream?conv_id=ID`` stops one. The id travels in
the query string, so an id holding a model name with slashes (``chat-1::org/model``) works.
A new request with the same id replaces (and stops) the old session. A session keeps the
last :data:`MAX_BYTES` of its stream (older offsets are lost: a 400), finished ones
:data:`KEEP_DONE_SECONDS`, at most :data:`MAX_SESSIONS` of them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Dict, List, Optional

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from .errors import APIError

#: The most of one stream a session keeps (the tail): a replay from before it is refused.
MAX_BYTES = 8 << 20
#: Sessions kept at most; beyond it the oldest finished ones are dropped first.
MAX_SESSIONS = 64
#: How long a finished stream can still be replayed.
KEEP_DONE_SECONDS = 600.0
#: The request header that makes a stream resumable (llama-server's, case-insensitive).
HEADER = b"x-conversation-id"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Session:
    """One conversation's stream: the bytes written so far (the last MAX_BYTES), live
    readers woken on each write, and the task producing it."""

    def __init__(self, conv_id: str) -> None:
        self.conv_id = conv_id
        self.buf = bytearray()
        self.dropped = 0                    # bytes dropped from the front
        self.done = False
        self.started = time.time()
        self.completed: Optional[float] = None
        self.task: Optional["asyncio.Future[Any]"] = None
        self._changed = asyncio.Event()

    @property
    def total(self) -> int:
        return self.dropped + len(self.buf)

    def write(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > MAX_BYTES:
            cut = len(self.buf) - MAX_BYTES
            del self.buf[:cut]
            self.dropped += cut
        self._wake()

    def finish(self) -> None:
        self.done = True
        self.completed = time.time()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def read(self, offset: int) -> AsyncIterator[bytes]:
        """The stream from byte ``offset``, then live bytes until it ends."""
        while True:
            if offset < self.dropped:
                return  # overtaken while reading: the client asks again and gets the 400
            data = bytes(self.buf[offset - self.dropped:])
            if data:
                offset += len(data)
                yield data
                continue
            if self.done:
                return
            await self._changed.wait()


class Sessions:
    """Every live or recently finished session, by conversation id."""

    def __init__(self) -> None:
        self.by_id: Dict[str, Session] = {}

    def start(self, conv_id: str, body: AsyncIterator[bytes]) -> Session:
        """A new session for ``conv_id`` (replacing and stopping an older one), filled by a
        task of its own from ``body``."""
        old = self.by_id.pop(conv_id, None)
        if old is not None:
            old.cancel()
        self._prune()
        s = self.by_id[conv_id] = Session(conv_id)

        async def produce() -> None:
            try:
                async for chunk in body:
                    s.write(chunk)
            finally:
                s.finish()
        s.task = asyncio.ensure_future(produce())
        return s

    def get(self, conv_id: str) -> Optional[Session]:
        self._prune()
        return self.by_id.get(conv_id)

    def stop(self, conv_id: str) -> None:
        s = self.by_id.pop(conv_id, None)
        if s is not None:
            s.cancel()

    def lookup(self, ids: List[str]) -> List[Session]:
        """The sessions of these ids: each id itself and its ``ID::model`` variants."""
        self._prune()
        out = []
        for rid in ids:
            out += [s for s in self.by_id.values()
                    if s.conv_id == rid or s.conv_id.startswith(rid + "::")]
        return out

    def _prune(self) -> None:
        now = time.time()
        for k, s in list(self.by_id.items()):
            if s.done and s.completed is not None and now - s.completed > KEEP_DONE_SECONDS:
                del self.by_id[k]
        done = sorted((s for s in self.by_id.values() if s.done), key=lambda s: s.started)
        while len(self.by_id) >= MAX_SESSIONS and done:
            del self.by_id[done.pop(0).conv_id]


#: The server's sessions (one event loop, one server per process).
SESSIONS = Sessions()


def conversation_id(scope: Optional[Dict[str, Any]]) -> str:
    """The ``X-Conversation-Id`` of a request, or ""."""
    for k, v in (scope or {}).get("headers") or []:
        if k.lower() == HEADER:
            return v.decode("utf-8", "replace").strip()
    return ""


def resumable(conv_id: str, body: AsyncIterator[bytes]) -> StreamingResponse:
    """The response of a stream kept in a session: it reads the session, which a task of
    its own fills, so the generation goes on when this client goes away."""
    session = SESSIONS.start(conv_id, body)
    return StreamingResponse(session.read(0), media_type="text/event-stream",
                             headers=SSE_HEADERS)


def router() -> APIRouter:
    r = APIRouter()

    @r.get("/v1/stream")
    async def replay(request: Request) -> Any:
        conv_id = request.query_params.get("conv_id", "")
        from_text = request.query_params.get("from", "0")
        if not conv_id:
            raise APIError(400, "Missing conversation id (conv_id)", param="conv_id")
        session = SESSIONS.get(conv_id)
        if session is None:
            raise APIError(404, "Stream not found or expired", "not_found_error")
        try:
            offset = int(from_text)
            if offset < 0:
                raise ValueError
        except ValueError:
            raise APIError(400, "Invalid 'from' offset", param="from") from None
        if offset < session.dropped:
            raise APIError(400, "Stream offset lost, please restart", param="from")
        return StreamingResponse(session.read(offset), media_type="text/event-stream",
                                 headers=SSE_HEADERS)

    @r.post("/v1/streams/lookup")
    async def lookup(request: Request) -> Any:
        try:
            body = await request.json()
        except ValueError:
            raise APIError(400, "invalid body: not JSON") from None
        ids = body.get("conversation_ids") if isinstance(body, dict) else None
        ids = [x for x in ids if isinstance(x, str) and x] if isinstance(ids, list) else []
        return [{"conversation_id": s.conv_id, "is_done": s.done, "total_bytes": s.total,
                 "started_at": int(s.started),
                 "completed_at": int(s.completed) if s.completed else None}
                for s in SESSIONS.lookup(ids)]

    @r.delete("/v1/stream")
    async def stop(conv_id: str = "") -> Response:
        if not conv_id:
            raise APIError(400, "Missing conversation id (conv_id)", param="conv_id")
        SESSIONS.stop(conv_id)
        return Response(status_code=204)

    return r
