"""Several models in one server: which models the file holds, which are loaded, and which
one a request goes to (llama-server's router mode, in one process).

Every model of the file is listed with an id (its member name without ``.gguf``, or
``--alias`` for the default model). A request's ``model`` field picks one; no field, or a
file with one model, means the default model (an embedding request without a field goes
to the file's embedding model when it has one). A model is loaded on first use; at most
``--models-max`` stay loaded (0 = no limit): to load another, the least recently used
model with no request in flight is unloaded, and when every loaded model is busy the
request gets a 503 ("model limit reached, try again later"), as llama-server answers.
``--sleep-idle-seconds N`` unloads a model idle for N seconds (status ``sleeping`` until
its next request). Listing, ``/health`` and ``/props`` never load or wake a model.

The router knows nothing of llama.cpp: it is given a ``load(entry)`` that returns a
loaded model (any object) and an ``unload(instance)``; loading runs outside its lock, so a
slow load does not hold up requests to models already loaded.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .errors import APIError
from .http import replaying

UNLOADED, LOADING, LOADED, SLEEPING, FAILED = "unloaded", "loading", "loaded", "sleeping", \
    "failed"


@dataclass
class ModelEntry:
    """One model of the file and its life in this server."""

    id: str  # the name clients use
    member: str  # the GGUF's member name in the pyfile (or a path with -m FILE)
    summary: Dict[str, Any] = field(default_factory=dict)  # the manifest's record
    embedding: bool = False  # an embedding model (its GGUF names a pooling type)
    vision: bool = False  # a projector is paired with it
    args: List[str] = field(default_factory=list)  # its own baked options
    status: str = UNLOADED
    instance: Any = None
    in_flight: int = 0
    last_used: float = 0.0
    error: Optional[str] = None  # why the last load failed
    loads: int = 0  # how many times it was loaded (swaps show here)


def model_id(member: str) -> str:
    """A model's id from its member name: ``SmolLM2.Q4_1.gguf`` -> ``SmolLM2.Q4_1``."""
    return member[:-5] if member.lower().endswith(".gguf") else member


class Router:
    """The models of one file: lookup, loading on first use, the loaded-model limit, idle
    unloading. Thread-safe; :meth:`acquire`/:meth:`release` bracket every request."""

    def __init__(self, entries: List[ModelEntry], load: Callable[[ModelEntry], Any],
                 unload: Callable[[Any], None], models_max: int = 4,
                 sleep_idle: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not entries:
            raise ValueError("a router needs at least one model")
        self.entries = entries
        self.by_id = {e.id: e for e in entries}
        self._load, self._unload = load, unload
        self.models_max = models_max
        self.sleep_idle = sleep_idle if sleep_idle is not None and sleep_idle >= 0 else None
        self.clock = clock
        self.cond = threading.Condition()

    @property
    def default(self) -> ModelEntry:
        return self.entries[0]

    # -- which model -----------------------------------------------------------------------

    def resolve(self, name: Optional[str], embeddings: bool = False) -> ModelEntry:
        """The model a request names (APIError 404 for a name the file does not hold)."""
        if name:
            entry = self.by_id.get(name)
            if entry is not None:
                return entry
            if len(self.entries) > 1:
                raise APIError(404, f"The model '{name}' does not exist: this file serves "
                                    f"{', '.join(e.id for e in self.entries)}",
                               "not_found_error", "model_not_found", "model")
            # one model: clients' own names ("gpt-4o") reach it, as before the router
        if embeddings:
            for entry in self.entries:
                if entry.embedding:
                    return entry
        return next((e for e in self.entries if not e.embedding), self.default)

    # -- a request's use of a model ------------------------------------------------------

    def acquire(self, entry: ModelEntry) -> Any:
        """The loaded instance of ``entry`` with one more request in flight on it (loading
        it first, and unloading an idle one to make room). Pair with :meth:`release`."""
        with self.cond:
            while True:
                if entry.status == LOADED:
                    entry.in_flight += 1
                    entry.last_used = self.clock()
                    return entry.instance
                if entry.status == LOADING:
                    self.cond.wait()
                    continue
                victim = self._make_room(entry)
                entry.status, entry.error = LOADING, None
                entry.in_flight += 1  # held across the load: nobody unloads it meanwhile
                break
        if victim is not None:
            self._unload_instance(victim)
        try:
            instance = self._load(entry)
        except BaseException as e:
            with self.cond:
                entry.status, entry.in_flight = FAILED, entry.in_flight - 1
                entry.error = str(e) or type(e).__name__
                self.cond.notify_all()
            raise
        with self.cond:
            entry.instance, entry.status = instance, LOADED
            entry.loads += 1
            entry.last_used = self.clock()
            self.cond.notify_all()
        return instance

    def release(self, entry: ModelEntry) -> None:
        with self.cond:
            entry.in_flight = max(0, entry.in_flight - 1)
            entry.last_used = self.clock()
            self.cond.notify_all()

    @contextlib.contextmanager
    def use(self, entry: ModelEntry) -> Iterator[Any]:
        instance = self.acquire(entry)
        try:
            yield instance
        finally:
            self.release(entry)

    def _make_room(self, entry: ModelEntry) -> Any:
        """Under the lock: when the limit is reached, take the least recently used idle
        model out (returns its instance, to be unloaded outside the lock)."""
        loaded = [e for e in self.entries if e.status in (LOADED, LOADING) and e is not entry]
        if not self.models_max or len(loaded) < self.models_max:
            return None
        idle = [e for e in loaded if e.status == LOADED and e.in_flight == 0]
        if not idle:
            raise APIError(503, "model limit reached, try again later (every loaded model "
                                "has a request in flight; see --models-max)",
                           "unavailable_error", "model_limit_reached")
        victim = min(idle, key=lambda e: e.last_used)
        instance, victim.instance, victim.status = victim.instance, None, UNLOADED
        return instance

    def _unload_instance(self, instance: Any) -> None:
        try:
            self._unload(instance)
        except Exception:  # freeing must not fail a request to another model
            pass

    # -- explicit load/unload, idle --------------------------------------------------------

    def load(self, entry: ModelEntry) -> None:
        """``POST /models/load``: load without a request (it counts against the limit)."""
        self.acquire(entry)
        self.release(entry)

    def unload(self, entry: ModelEntry) -> bool:
        """``POST /models/unload``: False when a request is in flight on it."""
        with self.cond:
            if entry.status != LOADED:
                return entry.status in (UNLOADED, SLEEPING, FAILED)
            if entry.in_flight:
                return False
            instance, entry.instance, entry.status = entry.instance, None, UNLOADED
        self._unload_instance(instance)
        return True

    def sweep(self) -> List[str]:
        """Unload the models idle for ``--sleep-idle-seconds``; their ids."""
        if self.sleep_idle is None:
            return []
        now, out, instances = self.clock(), [], []
        with self.cond:
            for e in self.entries:
                if e.status == LOADED and not e.in_flight and \
                        now - e.last_used >= self.sleep_idle:
                    instances.append(e.instance)
                    e.instance, e.status = None, SLEEPING
                    out.append(e.id)
        for instance in instances:
            self._unload_instance(instance)
        return out

    def close(self) -> None:
        with self.cond:
            instances = [e.instance for e in self.entries if e.instance is not None]
            for e in self.entries:
                e.instance, e.status = None, UNLOADED
        for instance in instances:
            self._unload_instance(instance)

    # -- what /models says -----------------------------------------------------------------

    def describe(self, entry: ModelEntry) -> Dict[str, Any]:
        """llama-server's ``/models`` record of one model."""
        status: Dict[str, Any] = {"value": entry.status, "args": list(entry.args)}
        if entry.status == FAILED:
            status.update(failed=True, error=entry.error)
        inputs = ["text", "image"] if entry.vision else ["text"]
        return {"id": entry.id, "path": entry.member, "status": status,
                "in_flight": entry.in_flight,
                "architecture": {"input_modalities": inputs, "output_modalities": [
                    "embedding" if entry.embedding else "text"]}}


# -- the server's side: one ServerState per loaded model, chosen per request ----------------

#: The ServerState of the model the current request was routed to.
CURRENT: "contextvars.ContextVar[Any]" = contextvars.ContextVar("pyfile_model", default=None)
#: Paths whose requests are embeddings (routed to the file's embedding model by default).
EMBEDDING_PATHS = ("/v1/embeddings", "/embeddings", "/embedding", "/embd")
#: Paths answered by the router itself (listing and loading; never load a model).
ROUTER_PATHS = ("/models", "/v1/models", "/models/load", "/models/unload")


class StateProxy:
    """Stands for "the ServerState of the model this request was routed to" wherever the
    routes hold their state: every attribute is looked up at use, in :data:`CURRENT`
    (else the default model's state). ``runner`` is a late-bound proxy too, since routes
    keep it from when they were made."""

    def __init__(self, fallback: Callable[[], Any], opts: Any) -> None:
        self._fallback = fallback
        self.opts = opts  # the server's options (the same for every model's routes)

    def _current(self) -> Any:
        return CURRENT.get() or self._fallback()

    @property
    def runner(self) -> Any:
        return _Late(lambda: self._current().runner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._current(), name)


class _Late:
    def __init__(self, get: Callable[[], Any]) -> None:
        self._get = get

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)


class ModelRouting:
    """ASGI middleware, innermost (after the Host/Origin guard, the API key and the body
    limit): reads the request's ``model`` (JSON body field, or ``?model=``), has the router
    load that model if needed, and runs the route with its state in :data:`CURRENT`; the
    model counts a request in flight until the response has been sent. The router's own
    routes (:data:`ROUTER_PATHS`) are answered here."""

    def __init__(self, app: Any, router: "Router", started: float) -> None:
        self.app, self.router, self.started = app, router, started

    async def __call__(self, scope: Dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        import asyncio
        import json
        from urllib.parse import parse_qs
        path = scope.get("path", "")
        body = b""
        if scope.get("method") == "POST":
            chunks = []
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
        replay = replaying(body, receive)

        name: Optional[str] = None
        try:
            data = json.loads(body) if body else None
            if isinstance(data, dict) and isinstance(data.get("model"), str):
                name = data["model"]
        except ValueError:
            pass  # the route says what is wrong with the body
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        name = name or (query.get("model") or [None])[0]
        loop = asyncio.get_running_loop()
        try:
            if path in ROUTER_PATHS:
                return await self._own(path, name, scope, send, loop)
            if path in ("/", "/health", "/v1/health"):
                return await self.app(scope, replay, send)
            entry = self.router.resolve(name, embeddings=path in EMBEDDING_PATHS)
            state = await loop.run_in_executor(None, self.router.acquire, entry)
        except APIError as e:
            return await self._reply(scope, send, e.status, e.body(_flavor(path)))
        except Exception as e:  # a model that fails to load: a 503 naming it
            err = APIError(503, f"the model could not be loaded: {e}", "unavailable_error",
                           "model_load_failed")
            return await self._reply(scope, send, 503, err.body(_flavor(path)))
        token = CURRENT.set(state)
        try:
            await self.app(scope, replay, send)
        finally:
            CURRENT.reset(token)
            self.router.release(entry)

    async def _own(self, path: str, name: Optional[str], scope: Dict, send: Callable,
                   loop: Any) -> None:
        r = self.router
        if path in ("/models", "/v1/models"):
            data = [{**r.describe(e), "object": "model", "created": int(self.started),
                     "owned_by": "pyfile"} for e in r.entries]
            return await self._reply(scope, send, 200, {"object": "list", "data": data})
        if not name:
            raise APIError(400, "model name is missing from the request", param="model")
        entry = r.resolve(name)
        if path == "/models/load":
            await loop.run_in_executor(None, r.load, entry)
        elif not r.unload(entry):
            raise APIError(409, f"the model '{entry.id}' has a request in flight",
                           code="model_busy")
        return await self._reply(scope, send, 200, {"success": True})

    @staticmethod
    async def _reply(scope: Dict, send: Callable, status: int, body: Dict) -> None:
        from .http import json_response_bytes
        start, data = json_response_bytes(status, body)
        await send(start)
        await send(data)


def _flavor(path: str) -> str:
    from .http import flavor_of
    return flavor_of(path)


def entries_of(manifest: Any, alias: Optional[str] = None,
               model_args: Optional[List[str]] = None) -> List[ModelEntry]:
    """The models of a file, the default first: ids from member names (``--alias``
    renames the default model), which are embedding models, which can see, and each one's
    own options (``--model-args NAME=ARGS``, NAME its id or member name). Raises
    :class:`~pyfile.runtime.errors.UsageError` for a NAME the file does not hold."""
    names = manifest.names("model")
    default = manifest.default_model
    if default in names:
        names = [default] + [n for n in names if n != default]
    out = []
    for name in names:
        summary = manifest.models.get(name) or {}
        pooling = summary.get("pooling_type")
        out.append(ModelEntry(
            id=alias if alias and name == default else model_id(name), member=name,
            summary=summary, embedding=isinstance(pooling, int) and pooling > 0,
            vision=manifest.mmproj(name) is not None))
    import shlex
    from ..errors import UsageError
    for spec in model_args or []:
        name, sep, args = spec.partition("=")
        entry = next((e for e in out if name in (e.id, e.member)), None)
        if not sep or entry is None:
            raise UsageError(f"--model-args {spec!r}: expected NAME=ARGS with NAME one of "
                             f"{', '.join(e.id for e in out)}")
        try:
            entry.args += shlex.split(args)
        except ValueError as e:
            raise UsageError(f"--model-args {spec!r}: {e}") from None
    return out


def model_options(opts: Any, args: List[str]) -> Any:
    """The server's options with one model's own (``--model-args``) on top: only the flags
    given there change."""
    if not args:
        return opts
    import copy
    from ..options import parser
    return parser().parse_args(args, namespace=copy.copy(opts))


def serve_models(path: str, manifest: Any, opts: Any) -> Tuple["Router", Any]:
    """A :class:`Router` over the file's models whose instances are (LoadedModel,
    ServerState) pairs, and the :class:`StateProxy` the routes are built over."""
    import os
    from ..backend.engine import ModelSource
    from .app import LoadedModel
    from .media import attach
    from .state import ServerState

    def load(entry: ModelEntry) -> Any:
        record = manifest.entry(entry.member) or {}
        source = ModelSource(os.path.abspath(path), int(record["offset"]),
                             int(record["size"]), entry.member)
        mopts = model_options(opts, entry.args)
        loaded = LoadedModel(source, mopts, manifest, path)
        state = ServerState(loaded.llm, loaded.engine, entry.id,
                            f"{source.path}#{source.name}", mopts,
                            loaded.loader.selection.line(), guard=loaded.loader.guard(),
                            embedder=loaded.embedder)
        attach(state, loaded.engine, loaded.model, source, mopts, manifest, path)
        state.pyfile_loaded = loaded
        loaded.engine.start()
        return state

    def unload(state: Any) -> None:
        loaded = state.pyfile_loaded
        loaded.engine.stop()
        proj = getattr(state, "projector", None)
        if proj is not None:
            proj.close()
        emb = getattr(loaded, "_embedder", None)
        if emb is not None:
            emb.close()
        loaded.L.llama_free(loaded.ctx)
        loaded.llm.close()

    router = Router(entries_of(manifest, getattr(opts, "alias", None),
                               getattr(opts, "model_args", None)), load, unload,
                    getattr(opts, "models_max", 4), getattr(opts, "sleep_idle_seconds", None))

    def fallback() -> Any:
        for e in router.entries:  # a loaded one, the default first; else load the default
            if e.status == LOADED:
                return e.instance
        router.load(router.default)
        return router.default.instance

    return router, StateProxy(fallback, opts)


def several_models(manifest: Any, archive_path: Optional[str], opts: Any) -> bool:
    """Whether a server serves every model of the file: it holds more than one and ``-m``
    did not pick one."""
    return (manifest is not None and archive_path is not None
            and len(manifest.names("model")) > 1 and not getattr(opts, "model", None))


def route_requests(app: Any, router: "Router") -> None:
    """Put :class:`ModelRouting` innermost in ``app`` (after the guards, the key and the body
    limit) and start the idle sweeper when ``--sleep-idle-seconds`` asks for one."""
    from starlette.middleware import Middleware
    app.user_middleware.append(Middleware(ModelRouting, router=router, started=time.time()))
    if router.sleep_idle is not None:
        def sweep() -> None:
            while True:
                time.sleep(min(1.0, max(0.05, router.sleep_idle / 4)))
                router.sweep()
        threading.Thread(target=sweep, name="pyfile-idle-models", daemon=True).start()


__all__ = ["Router", "ModelEntry", "model_id", "UNLOADED", "LOADING", "LOADED", "SLEEPING",
           "FAILED", "CURRENT", "StateProxy", "ModelRouting", "entries_of", "serve_models", "several_models",
           "route_requests"]
