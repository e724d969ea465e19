"""Server mode: load the model, assemble the app (middleware, routes, error handlers), serve.

One model, one context, ``--parallel N`` slots and one scheduler thread that decodes every
slot's next token in one batch (:mod:`.scheduler`). The rest of the package:

- ``http.py``        socket, Host/Origin guard, API key (one place), body limit, server-sent
                     events, web chat
- ``sites.py``       which hosts and web pages may drive the server
- ``limits.py``      the checks of a request that need the model (vocabulary, context)
- ``errors.py``      the error bodies of every API shape
- ``schemas.py``     request bodies
- ``state.py``       what routes share; the bridge from a route to the scheduler
- ``scheduler.py``   slots, the batch loop, prompt-prefix reuse, stop strings
- ``sampling.py``    a request's sampler chain
- ``chat.py``        chat templates, JSON-schema grammars, tool calls
- ``embed.py``       embeddings and reranking
- ``prompts.py``     llama-server's prompt forms (text, token ids, mixes, several prompts)
- ``streams.py``     resumable streams (``X-Conversation-Id``, ``/v1/stream``)
- ``api/openai.py``  /v1/chat/completions, /v1/completions, /v1/models, /v1/responses
- ``api/native.py``  llama-server's /completion, /tokenize, /props, /slots, /metrics, ...
- ``api/anthropic.py``  /v1/messages, /v1/messages/count_tokens
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Optional

from ... import __version__
from ..backend.engine import ModelSource
from ..errors import EngineError
from ..container.manifest import Manifest

try:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover - exercised on targets without the stack
    raise EngineError(f"server mode needs FastAPI and uvicorn ({e.name} is missing): "
                      f"'{sys.executable} -m pip install fastapi uvicorn', or use a pyfile "
                      f"built with its runtime inside") from None

from .scheduler import MAX_RESTARTS, RESTART_WINDOW, Engine
from .errors import APIError
from .http import ApiKey, BodyLimit, ClientWatch, SiteGuard, bind, flavor_of, web_chat_html
from .http import open_browser as _open_browser
from .schemas import FieldError
from .sites import SitePolicy
from .state import ServerState


def create_app(state: ServerState) -> Any:
    """The FastAPI app over ``state``: middlewares, error shapes, the routers."""
    from .api import anthropic, native, openai
    opts = state.opts
    app = FastAPI(title="pyfile", version=__version__, docs_url=None, redoc_url=None)
    # The last one added runs first: the Host/Origin guard (403 before anything else; CORS
    # headers on every answer to an allowed page, a 401 included), the API key (before the
    # body is read), the body limit, the client watch, then the routes.
    app.add_middleware(ClientWatch)
    app.add_middleware(BodyLimit, limit=opts.max_body)
    if opts.api_key:
        app.add_middleware(ApiKey, key=getattr(opts, "api_keys", None) or opts.api_key)
    app.add_middleware(SiteGuard, policy=SitePolicy.from_options(opts))

    def reply(request: Request, e: APIError) -> JSONResponse:
        # scope["path"], not request.url: the URL is built from the client's Host header.
        return JSONResponse(e.body(flavor_of(request.scope.get("path", ""))),
                            status_code=e.status)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return reply(request, e)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return reply(request, validation_error(e.errors()))

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception) -> JSONResponse:
        # A bug, not a bad request (those are 4xx above): a JSON 500 in the API's shape;
        # uvicorn logs the traceback.
        return reply(request, APIError(500, f"internal error: {type(e).__name__}",
                                       "server_error", "internal_error"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return reply(request, APIError(e.status_code, str(e.detail), kind))

    if getattr(opts, "webui", True):  # --no-webui: / is a 404, as llama-server's
        @app.get("/", include_in_schema=False)
        async def index() -> HTMLResponse:
            return HTMLResponse(web_chat_html())

    from . import streams
    app.include_router(streams.router())
    app.include_router(native.router(state))
    app.include_router(openai.router(state))
    app.include_router(anthropic.router(state))
    app.state.pyfile = state
    return app


#: pydantic error types -> OpenAI's error codes for the same complaint.
_CODES = {"missing": "missing_required_parameter", "greater_than_equal": "below_min_value",
          "greater_than": "below_min_value", "less_than_equal": "above_max_value",
          "less_than": "above_max_value", "too_short": "too_short", "too_long": "too_long",
          "extra_forbidden": "unknown_parameter"}


def validation_error(errors: Any) -> APIError:
    """The first of pydantic's complaints about a body as a 400 naming the field
    (``messages.0.content``) with OpenAI's ``param`` and ``code``."""
    first = errors[0] if errors else {}
    kind = first.get("type", "")
    loc = [x for x in first.get("loc", ()) if x != "body"]
    if kind == "json_invalid":
        why = (first.get("ctx") or {}).get("error", "JSON decode error")
        where = f" at position {loc[0]}" if loc else ""
        return APIError(400, f"the body is not valid JSON ({why}{where})", code="invalid_json")
    # pydantic names a union's member or a validator in the path: keep the body's own keys.
    where = ".".join(str(x) for x in loc if not (isinstance(x, str) and (
        "[" in x or x.startswith("function-") or x in ("str", "int", "bool", "float",
                                                      "list", "dict", "none"))))
    if not where:
        return APIError(400, "the body must be a JSON object with this route's fields",
                        code="invalid_type")
    msg = str(first.get("msg", "bad value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):  # a part of the field: name it
        where = ".".join(x for x in (where, cause.where) if x)
        return APIError(400, f"Invalid '{where}': {cause.message}", param=where,
                        code=cause.code)
    if kind.startswith(("greater", "less")) and isinstance(first.get("input"), int):
        code = "integer_" + _CODES[kind]
    elif kind.endswith(("_type", "_parsing")) or kind in ("int_from_float", "model_type",
                                                           "dict_type", "list_type"):
        code = "invalid_type"
    else:
        code = _CODES.get(kind, "invalid_value")
    return APIError(400, f"Invalid '{where}': {msg[:1].lower()}{msg[1:]}", param=where,
                    code=code)


#: ``-ctk``/``-ctv`` names -> ggml.h's ``enum ggml_type``.
GGML_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8,
              "iq4_nl": 20, "bf16": 30}


class LoadedModel:
    """The model loaded once (FILE* loader, chosen backend) and the one batched context."""

    def __init__(self, source: ModelSource, opts: Any, manifest: Optional[Manifest],
                 archive_path: Optional[str]) -> None:
        from ..backend.loader import Loader
        from llama_cpp import llama_cpp as L
        self.L = L
        self.loader = Loader(source, opts, manifest, archive_path)
        # The Llama gives us the model (loaded in place from the pyfile), its tokenizer,
        # metadata and template. Its own context is freed at once: the engine's is the one.
        self.llm = self.loader.new(n_ctx=256, n_batch=256)
        self.model = self.llm._model.model
        p = type(self.llm.context_params).from_buffer_copy(self.llm.context_params)
        self.base_params = type(p).from_buffer_copy(p)
        n_train = L.llama_model_n_ctx_train(self.model)
        p.n_ctx = opts.ctx_size or n_train
        # Every step carries one token of each generating slot: the batch holds at least that.
        n_batch = max(opts.batch_size, opts.parallel)
        p.n_batch = n_batch
        p.n_ubatch = max(1, min(opts.ubatch_size, n_batch))
        p.n_seq_max = opts.parallel
        # As llama-server: one KV cache shared by the slots (-kvu, the default without -np),
        # or each slot its own -c/N tokens.
        p.kv_unified = opts.kv_unified
        p.embeddings = False
        # -fa auto (llama-server's default): flash attention where the backend has it.
        p.flash_attn_type = {"on": L.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                             "off": L.LLAMA_FLASH_ATTN_TYPE_DISABLED}.get(
            opts.flash_attn, L.LLAMA_FLASH_ATTN_TYPE_AUTO)
        p.type_k = GGML_TYPES[opts.cache_type_k]
        p.type_v = GGML_TYPES[opts.cache_type_v]
        from llama_cpp._utils import suppress_stdout_stderr
        with suppress_stdout_stderr(disable=opts.verbose):
            self.ctx = L.llama_init_from_model(self.model, p)
        if not self.ctx:
            raise EngineError(f"{source.name}: llama.cpp could not create a context of "
                              f"{p.n_ctx} tokens for {opts.parallel} slots (-fa "
                              f"{opts.flash_attn}, K {opts.cache_type_k}, V "
                              f"{opts.cache_type_v}); lower -c or -np, or a quantized V "
                              f"cache needs -fa on (run with -v for llama.cpp's log)")
        self.llm._ctx.close()
        # A slot's context, as llama-server's n_ctx_slot: the KV cache's per-sequence size
        # (all of -c when unified), at most what the model was trained for.
        self.engine = Engine(L, self.model, self.ctx, opts.parallel, n_batch,
                             verbose=opts.verbose,
                             n_ctx_slot=min(L.llama_n_ctx_seq(self.ctx), n_train))
        self._embedder: Any = None
        self._embed_lock = threading.Lock()
        self.opts = opts

    def embedder(self) -> Any:
        """The embedding context, created on first use (it shares the weights)."""
        with self._embed_lock:
            if self._embedder is None:
                from .embed import Embedder
                from llama_cpp._utils import suppress_stdout_stderr
                with suppress_stdout_stderr(disable=self.opts.verbose):
                    self._embedder = Embedder(self.L, self.model, self.base_params,
                                              self.opts.ubatch_size, self.opts.pooling)
            return self._embedder


def serve(source: ModelSource, opts: Any, manifest: Optional[Manifest] = None,
          archive_path: Optional[str] = None, open_browser: bool = False) -> int:
    """Load the model, start the scheduler and serve until SIGINT/SIGTERM; returns 0.
    Raises :class:`EngineError` (exit 1) when the scheduler failed for good."""
    sock = bind(opts.host, opts.port)  # fail on a busy port before loading the model
    from .router import route_requests, serve_models, several_models
    router = None
    if several_models(manifest, archive_path, opts):  # one server for every model it holds
        router, state = serve_models(archive_path, manifest, opts)
        router.load(router.default)  # the default one now: its errors and backend line
        loaded = router.default.instance.pyfile_loaded
    else:
        loaded = LoadedModel(source, opts, manifest, archive_path)
        model_id = opts.alias or (source.name[:-5] if source.name.endswith(".gguf")
                                  else source.name)
        state = ServerState(loaded.llm, loaded.engine, model_id,
                            f"{source.path}" + (f"#{source.name}" if source.embedded else ""),
                            opts, loaded.loader.selection.line(),
                            guard=loaded.loader.guard(), embedder=loaded.embedder)
        from .media import attach
        attach(state, loaded.engine, loaded.model, source, opts, manifest, archive_path)
    app = create_app(state)
    if router is not None:
        route_requests(app, router)
    else:
        loaded.engine.start()
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{port}/"
    from ..rpc.supervisor import CHILD_ENV
    if not os.environ.get(CHILD_ENV):  # a supervised RPC child: the parent shows its address
        sys.stderr.write(f"pyfile: serving the web chat at {url} and the OpenAI API at "
                         f"{url}v1 ({opts.parallel} slot{'s' if opts.parallel > 1 else ''} "
                         + (f"sharing {loaded.engine.n_ctx} tokens of context" if
                            opts.kv_unified else
                            f"of {loaded.engine.n_ctx_slot} tokens of context each")
                         + "; Ctrl-C stops)\n")
    if host not in ("127.0.0.1", "::1", "localhost") and not opts.api_key:
        sys.stderr.write("pyfile: warning: listening beyond this machine without --api-key: "
                         "anyone on the network can use the model (IP addresses are "
                         "answered; other host names need --allowed-hosts)\n")
    sys.stderr.flush()
    from ..ready import announce
    announce(host, port, url)  # for programs (the RPC supervisor, tests): see ready.py
    if open_browser and not opts.nobrowser:
        _open_browser(url)
    config = uvicorn.Config(app, log_level="debug" if opts.verbose else "warning",
                            access_log=opts.verbose, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    failure: list = []

    def scheduler_gave_up(cause: str) -> None:  # the scheduler thread: stop serving
        failure.append(cause)
        server.should_exit = True
    loaded.engine.on_failure = scheduler_gave_up
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the
    # handler that was installed before it; make that one a no-op so we exit cleanly.
    import signal
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        if router is not None:
            router.close()
        else:
            loaded.engine.stop()
    if failure:
        raise EngineError(f"the server stopped: the generation scheduler failed "
                          f"{MAX_RESTARTS + 1} times within {RESTART_WINDOW:.0f} s "
                          f"(last: {failure[0]})")
    sys.stderr.write("pyfile: server stopped\n")
    return 0

