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
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional

from .errors import APIError

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


__all__ = ["Router", "ModelEntry", "model_id", "UNLOADED", "LOADING", "LOADED", "SLEEPING",
           "FAILED"]
