"""Server mode: an OpenAI-compatible API and the built-in web chat (FastAPI + uvicorn).

Concurrency: ``--parallel N`` slots, each its own ``Llama`` context over the same mapped
weights. A request takes a free slot or waits in line for one (never a crash, never two
requests in one context); generation runs in a worker thread and streams through an
asyncio queue. A streaming client that disconnects sets a stop flag that the worker checks
between tokens, so its slot is freed within a token.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import socket
import sys
import threading
import time

from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List, Optional, Union

from .. import __version__
from .engine import ModelSource
from .errors import EngineError, UsageError

try:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover - exercised on targets without the stack
    raise EngineError(f"server mode needs FastAPI and uvicorn ({e.name} is missing): "
                      f"'{sys.executable} -m pip install fastapi uvicorn', or use a pyfile "
                      f"built with its runtime inside") from None


# -- request bodies (extra fields are accepted and ignored, as OpenAI clients send many) --------

class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Body):
    role: str = Field(pattern="^(system|developer|user|assistant|tool)$")
    content: Union[str, List[Dict[str, Any]], None] = None
    name: Optional[str] = None
    tool_calls: Optional[List[Dict[str, Any]]] = None
    tool_call_id: Optional[str] = None


class _Sampling(_Body):
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(default=None, ge=0)
    temperature: float = Field(default=0.8, ge=0, le=2)
    top_p: float = Field(default=0.95, ge=0, le=1)
    top_k: int = Field(default=40, ge=0)
    min_p: float = Field(default=0.05, ge=0, le=1)
    repeat_penalty: float = Field(default=1.0, ge=0)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    stop: Union[str, List[str], None] = None
    seed: Optional[int] = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)


class ChatRequest(_Sampling):
    messages: List[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=0)
    response_format: Optional[Dict[str, Any]] = None
    tools: Optional[List[Dict[str, Any]]] = None
    tool_choice: Union[str, Dict[str, Any], None] = None


class CompletionRequest(_Sampling):
    prompt: Union[str, List[str]]
    echo: bool = False
    max_tokens: Optional[int] = Field(default=16, ge=0)


class EmbeddingRequest(_Body):
    input: Union[str, List[str]]
    model: Optional[str] = None


class TokenizeRequest(_Body):
    content: str
    add_special: bool = False


class DetokenizeRequest(_Body):
    tokens: List[int]


# -- errors in OpenAI's shape --------------------------------------------------------------------

class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: Optional[str] = None, param: Optional[str] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = (
            status, message, type_, code, param)

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type,
                                       "param": self.param, "code": self.code}},
                            status_code=self.status)


def _engine_error(e: BaseException) -> APIError:
    """Map an exception from the engine to an HTTP error: the request's fault is a 4xx."""
    text = str(e) or type(e).__name__
    if "exceed context window" in text or "context length" in text:
        return APIError(400, f"This model's maximum context length was exceeded: {text}",
                        code="context_length_exceeded", param="messages")
    if type(e).__module__.startswith("jinja2"):  # the chat template rejected the messages
        return APIError(400, f"the model's chat template cannot render these messages: {text}",
                        param="messages")
    return APIError(500, f"generation failed: {text}", "server_error")


# -- slots ---------------------------------------------------------------------------------------

class Slots:
    """``n`` Llama contexts; ``acquire`` waits in line when all are busy."""

    def __init__(self, llms: List[Any]) -> None:
        self.free: "asyncio.Queue[Any]" = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        for llm in llms:
            self.free.put_nowait(llm)
        self.total = len(llms)

    async def acquire(self) -> Any:
        return await self.free.get()

    def release(self, llm: Any) -> None:
        self.free.put_nowait(llm)

    def release_threadsafe(self, llm: Any) -> None:
        self.loop.call_soon_threadsafe(self.free.put_nowait, llm)

    @property
    def busy(self) -> int:
        return self.total - self.free.qsize()


class Streamer:
    """Runs a llama-cpp-python generator in a worker thread, handing chunks to asyncio."""

    def __init__(self, executor: ThreadPoolExecutor, make: Callable[[], Iterator[Any]]) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: "asyncio.Queue[tuple]" = asyncio.Queue()
        self.stop = threading.Event()
        self.failed = False
        self.future = self.loop.run_in_executor(executor, self._work, make)

    def _put(self, item: tuple) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def _work(self, make: Callable[[], Iterator[Any]]) -> None:
        gen = None
        try:
            gen = make()
            for chunk in gen:
                if self.stop.is_set():
                    break
                self._put(("chunk", chunk))
        except Exception as e:  # reported to the client, the server stays up
            self.failed = True
            self._put(("error", e))
        finally:
            if gen is not None and hasattr(gen, "close"):
                try:
                    gen.close()
                except Exception:
                    pass
            self._put(("end", None))

    async def next(self) -> tuple:
        return await self.queue.get()

    def close(self, then: Callable[[], None]) -> None:
        """Stop generating; run ``then`` (in the event loop) once the worker has let go.

        Synchronous on purpose: it runs in ``finally`` blocks of cancelled tasks, where
        anyio cancels every further ``await``.
        """
        self.stop.set()
        self.future.add_done_callback(lambda _: then())


# -- the app -------------------------------------------------------------------------------------

def _close(llm: Any) -> None:
    try:
        llm.close()
    except Exception:
        pass


def _web_chat_html() -> bytes:
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


def _text_content(msg: ChatMessage) -> Dict[str, Any]:
    out = msg.model_dump(exclude_none=True)
    if out.get("role") == "developer":
        out["role"] = "system"
    out.setdefault("content", "")  # chat templates expect the key, even when it is empty
    content = msg.content
    if isinstance(content, list):
        parts = []
        for part in content:
            if part.get("type") != "text":
                raise APIError(400, f"content parts of type {part.get('type')!r} are not "
                                    f"supported by this model", param="messages")
            parts.append(str(part.get("text", "")))
        out["content"] = "".join(parts)
    return {k: v for k, v in out.items() if k in ("role", "content", "name", "tool_calls",
                                                    "tool_call_id")}


def _response_format(rf: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    if not rf:
        return None
    kind = rf.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object", **({"schema": rf["schema"]} if "schema" in rf else {})}
    if kind == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise APIError(400, "response_format json_schema needs json_schema.schema",
                           param="response_format")
        return {"type": "json_object", "schema": schema}
    raise APIError(400, f"unsupported response_format type {kind!r}", param="response_format")


def _sampling(req: _Sampling) -> Dict[str, Any]:
    return dict(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                min_p=req.min_p, repeat_penalty=req.repeat_penalty,
                presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                stop=req.stop, seed=req.seed)


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
            return await self._reject(send)
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
            await self._reject(send)

    async def _reject(self, send: Callable) -> None:
        body = json.dumps({"error": {"message": f"request body over {self.limit} bytes",
                                     "type": "invalid_request_error", "param": None,
                                     "code": "request_too_large"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def create_app(llms: List[Any], model_id: str, opts: Any, backend_line: str,
               make_embedder: Optional[Callable[[], Any]] = None, guard: Any = None,
               make_slot: Optional[Callable[[], Any]] = None) -> Any:
    app = FastAPI(title="pyfile", version=__version__, docs_url=None, redoc_url=None)
    executor = ThreadPoolExecutor(max_workers=len(llms) + 2, thread_name_prefix="slot")
    state: Dict[str, Any] = {"slots": None, "embedder": None, "served": 0}
    embed_lock = threading.Lock()
    n_ctx = llms[0].n_ctx()

    def slots() -> Slots:
        if state["slots"] is None:  # created inside the running loop
            state["slots"] = Slots(llms)
        return state["slots"]

    @app.middleware("http")
    async def auth(request: Request, call_next: Callable) -> Any:
        path = request.url.path
        protected = path.startswith("/v1") or path in ("/tokenize", "/detokenize", "/props")
        if opts.api_key and protected and request.method != "OPTIONS":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {opts.api_key}".encode()):
                return APIError(401, "missing or wrong API key (Authorization: Bearer KEY)",
                                "authentication_error", "invalid_api_key").response()
        return await call_next(request)

    if opts.cors:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"],
                           allow_headers=["*"])
    app.add_middleware(BodyLimit, limit=opts.max_body)

    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return APIError(400, f"invalid request: {where}: {first.get('msg', 'bad value')}",
                        param=where or None).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return APIError(e.status_code, str(e.detail), kind).response()

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(_web_chat_html())

    @app.get("/health")
    async def health() -> Dict[str, Any]:
        s = slots()
        return {"status": "ok", "slots_idle": s.total - s.busy, "slots_busy": s.busy}

    @app.get("/v1/models")
    async def models() -> Dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0,
                                             "owned_by": "pyfile"}]}

    @app.get("/props")
    async def props() -> Dict[str, Any]:
        llm = llms[0]
        return {"model": model_id, "n_ctx": n_ctx, "parallel": len(llms),
                "chat_template": llm.metadata.get("tokenizer.chat_template"),
                "backend": backend_line, "pyfile": __version__}

    async def run(make: Callable[[Any], Iterator[Any]], stream: bool,
                  wrap: Callable[[Any], Any]) -> Any:
        if guard is not None:
            try:
                guard.check()
            except Exception as e:
                raise APIError(503, str(e), "server_error", "model_file_changed") from None
        s = slots()
        llm = await s.acquire()
        streamer = Streamer(executor, lambda: make(llm))

        def release() -> None:
            if streamer.failed and make_slot is not None:
                # Same reason as for embeddings: never reuse a context after an engine error.
                # Close the old one now: Llama objects hold reference cycles, so waiting for
                # the garbage collector would keep its KV cache alive for a while.
                def renew() -> None:
                    _close(llm)
                    s.release_threadsafe(make_slot())
                executor.submit(renew)
            else:
                s.release(llm)

        kind, first = await streamer.next()
        if kind == "error":
            streamer.close(release)
            raise _engine_error(first)
        if not stream:
            chunks = [first] if kind == "chunk" else []
            while kind == "chunk":
                kind, item = await streamer.next()
                if kind == "chunk":
                    chunks.append(item)
            streamer.close(release)
            state["served"] += 1
            return wrap(chunks[0]) if chunks else JSONResponse({})

        async def events() -> AsyncIterator[bytes]:
            nonlocal kind
            item = first
            try:
                while kind == "chunk":
                    yield b"data: " + json.dumps(wrap(item)).encode() + b"\n\n"
                    kind, item = await streamer.next()
                if kind == "error":
                    err = _engine_error(item)
                    yield b"data: " + json.dumps({"error": {"message": err.message,
                                                            "type": err.type}}).encode() + b"\n\n"
                yield b"data: [DONE]\n\n"
            finally:
                streamer.close(release)
                state["served"] += 1

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def respond(method: str, kwargs: Dict[str, Any], stream: bool,
                      model: Optional[str]) -> Any:
        """Run ``Llama.<method>`` in a slot, streamed or whole, under the requested name."""
        name = model or model_id

        def wrap(chunk: Dict[str, Any]) -> Dict[str, Any]:
            return dict(chunk, model=name)

        if stream:
            return await run(lambda llm: getattr(llm, method)(stream=True, **kwargs), True, wrap)
        return await run(lambda llm: iter([getattr(llm, method)(**kwargs)]), False, wrap)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest) -> Any:
        messages = [_text_content(m) for m in req.messages]
        kwargs = dict(messages=messages, max_tokens=req.max_completion_tokens or req.max_tokens,
                      response_format=_response_format(req.response_format), **_sampling(req))
        if req.tools:
            kwargs.update(tools=req.tools, tool_choice=req.tool_choice)
        return await respond("create_chat_completion", kwargs, req.stream, req.model)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Any:
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) != 1:
            raise APIError(400, "send one prompt per request", param="prompt")
        if not prompts[0]:
            raise APIError(400, "prompt must not be empty", param="prompt")
        kwargs = dict(prompt=prompts[0], max_tokens=req.max_tokens if req.max_tokens else -1,
                      echo=req.echo, **_sampling(req))
        return await respond("create_completion", kwargs, req.stream, req.model)

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest) -> Any:
        if make_embedder is None:
            raise APIError(400, "this server cannot produce embeddings", code="unsupported")
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts or any(not isinstance(t, str) for t in texts):
            raise APIError(400, "input must be a string or a list of strings", param="input")
        if any(not t for t in texts):
            raise APIError(400, "input strings must not be empty", param="input")

        def work() -> Dict[str, Any]:
            with embed_lock:
                if state["embedder"] is None:
                    state["embedder"] = make_embedder()
                try:
                    result = state["embedder"].create_embedding(texts,
                                                                model=req.model or model_id)
                except BaseException:
                    # llama-cpp-python can leave a context inconsistent after a failed
                    # decode (we saw heap corruption on the next request): start afresh.
                    _close(state["embedder"])
                    state["embedder"] = None
                    raise
            for item in result["data"]:  # pool per-token vectors into one (mean)
                emb = item["embedding"]
                if emb and isinstance(emb[0], list):
                    n = len(emb)
                    item["embedding"] = [sum(col) / n for col in zip(*emb)]
            return result

        try:
            return await asyncio.get_running_loop().run_in_executor(executor, work)
        except ValueError as e:
            raise _engine_error(e) from None
        except Exception as e:
            raise APIError(400, f"this model cannot produce embeddings: {e}",
                           code="unsupported") from None

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest) -> Dict[str, Any]:
        toks = llms[0].tokenize(req.content.encode("utf-8"), add_bos=req.add_special,
                                special=req.add_special)
        return {"tokens": toks}

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest) -> Dict[str, Any]:
        n_vocab = llms[0].n_vocab()
        if any(t < 0 or t >= n_vocab for t in req.tokens):
            raise APIError(400, f"token ids must be in 0..{n_vocab - 1}", param="tokens")
        return {"content": llms[0].detokenize(req.tokens).decode("utf-8", errors="replace")}

    app.state.pyfile = state
    return app


def _bind(host: str, port: int) -> socket.socket:
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


def serve(source: ModelSource, opts: Any, manifest: Optional[Dict[str, Any]] = None,
          archive_path: Optional[str] = None, open_browser: bool = False) -> int:
    from .modes import Loader
    sock = _bind(opts.host, opts.port)  # fail on a busy port before loading the model
    loader = Loader(source, opts, manifest, archive_path)
    llms = [loader.new() for _ in range(opts.parallel)]
    model_id = source.name[:-5] if source.name.endswith(".gguf") else source.name
    app = create_app(llms, model_id, opts, loader.selection.line(),
                     make_embedder=lambda: loader.new(embedding=True), guard=loader.guard(),
                     make_slot=loader.new)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{port}/"
    from .rpc import CHILD_ENV
    if not os.environ.get(CHILD_ENV):  # a supervised RPC child: the parent shows its address
        sys.stderr.write(f"pyfile: serving the web chat at {url} and the OpenAI API at "
                         f"{url}v1 ({opts.parallel} slot{'s' if opts.parallel > 1 else ''}; "
                         f"Ctrl-C stops)\n")
    if host not in ("127.0.0.1", "::1", "localhost") and not opts.api_key:
        sys.stderr.write("pyfile: warning: listening beyond this machine without --api-key\n")
    sys.stderr.flush()
    from .ready import announce
    announce(host, port, url)  # for programs (the RPC supervisor, tests): see ready.py
    if open_browser and not opts.nobrowser:
        _open_browser(url)
    config = uvicorn.Config(app, log_level="debug" if opts.verbose else "warning",
                            access_log=opts.verbose, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the
    # handler that was installed before it; make that one a no-op so we exit cleanly.
    import signal
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
    sys.stderr.write("pyfile: server stopped\n")
    return 0


def _open_browser(url: str) -> None:
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


