"""What every route shares: the model's tokenizer and template, the engine, the options, and
the one bridge from a route (asyncio) to the scheduler thread (:class:`Generation`).

A route handler only parses its body, builds a prompt and :class:`SamplingParams`, starts a
:class:`Generation` and shapes the events it yields; it never touches the model's context.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, AsyncIterator, Dict, List, Optional, Union

from .scheduler import Engine, Request
from .errors import APIError
from .http import CURRENT_RECEIVE
from .sampling import SamplingParams


class Generation:
    """One request in the engine, seen from the event loop; ``cancel`` is idempotent."""

    def __init__(self, engine: Engine, prompt: List[int], params: SamplingParams) -> None:
        self.engine = engine
        self.loop = asyncio.get_running_loop()
        self.queue: "asyncio.Queue[Dict[str, Any]]" = asyncio.Queue()
        self.req = Request(prompt, params, self._sink)
        self.finished = False
        self._peeked: Optional[Dict[str, Any]] = None
        engine.submit(self.req)

    def _sink(self, event: Dict[str, Any]) -> None:  # the scheduler thread
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop is gone (shutting down)
            self.req.cancelled = True

    async def _next(self) -> Dict[str, Any]:
        if self._peeked is not None:
            ev, self._peeked = self._peeked, None
        else:
            ev = await self.queue.get()
        if ev["type"] == "error":
            self.finished = True
            status = ev.get("status", 500)
            raise APIError(status, ev["message"],
                           "server_error" if status >= 500 else "invalid_request_error",
                           ev.get("code"))
        return ev

    async def first(self) -> None:
        """Wait for the first event, so that an early error is an HTTP error, not a stream."""
        try:
            self._peeked = await self._next()
        except BaseException:
            self.cancel()
            raise

    async def events(self) -> AsyncIterator[Dict[str, Any]]:
        """Token events, then one ``done`` event; an ``error`` event raises :class:`APIError`."""
        while True:
            ev = await self._next()
            yield ev
            if ev["type"] == "done":
                self.finished = True
                return

    async def collect(self) -> Dict[str, Any]:
        """Run to the end: ``done`` with ``text`` = all the text, ``tokens`` and ``logprobs``.
        If the client hangs up meanwhile, the request leaves the engine at its next step."""
        parts: List[str] = []
        tokens: List[int] = []
        logprobs: List[Any] = []
        receive = CURRENT_RECEIVE.get()
        watch = asyncio.ensure_future(self._watch(receive)) if receive is not None else None
        try:
            async for ev in self.events():
                if ev["type"] == "token":
                    parts.append(ev["text"])
                    tokens.append(ev["token"])
                    logprobs.append(ev["logprobs"])
                else:
                    parts.append(ev["text"])
                    return dict(ev, text="".join(parts), tokens=tokens, logprobs=logprobs)
        finally:
            if watch is not None:
                watch.cancel()
            self.cancel()
        raise APIError(500, "generation ended without a result", "server_error")

    async def _watch(self, receive: Any) -> None:
        """Wait for the client to hang up (the body has been read: the next message is the
        disconnect); then drop the request and end :meth:`collect`."""
        while True:
            message = await receive()
            if message.get("type") == "http.disconnect":
                self.cancel()
                self.queue.put_nowait({"type": "error", "status": 499,
                                       "message": "the client closed the connection"})
                return

    def cancel(self) -> None:
        if not self.finished:
            self.finished = True
            self.engine.cancel(self.req)


class ServerState:
    """The model, the engine and the options, shared by all routes."""

    def __init__(self, llm: Any, engine: Engine, model_id: str, model_path: str, opts: Any,
                 backend_line: str, guard: Any = None, embedder: Any = None) -> None:
        from .chat import ChatTemplate
        self.llm = llm
        self.engine = engine
        self.model_id = model_id
        self.model_path = model_path
        self.opts = opts
        self.backend_line = backend_line
        self.guard = guard
        self.embedder = embedder
        self.template = ChatTemplate(llm)
        self.n_vocab = llm.n_vocab()
        self.started = time.time()
        self.lock = threading.Lock()

    # -- checks --------------------------------------------------------------------------------

    def check_file(self) -> None:
        """503 when the pyfile's bytes changed under the mapped weights."""
        if self.guard is not None:
            try:
                self.guard.check()
            except Exception as e:
                raise APIError(503, str(e), "server_error", "model_file_changed") from None

    # -- tokens --------------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True
                 ) -> List[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)

    def prompt_tokens(self, prompt: Union[str, List[Any]], add_special: bool = True
                      ) -> List[int]:
        """A prompt given as text, token ids, or a mix (llama-server's native form)."""
        if isinstance(prompt, str):
            return self.tokenize(prompt, add_special)
        out: List[int] = []
        for i, part in enumerate(prompt):
            if isinstance(part, int):
                if not 0 <= part < self.n_vocab:
                    raise APIError(400, f"token ids must be in 0..{self.n_vocab - 1}",
                                   param="prompt")
                out.append(part)
            else:
                out.extend(self.tokenize(str(part), add_special and i == 0))
        return out

    def piece(self, token: int) -> str:
        return self.llm._model.detokenize([token], special=True).decode("utf-8", "replace")

    def check_prompt(self, tokens: List[int], param: str = "messages") -> None:
        if not tokens:
            raise APIError(400, "the prompt must not be empty", param=param)
        if len(tokens) >= self.engine.n_ctx_slot:
            raise APIError(400, f"This model's maximum context length was exceeded: the prompt "
                                f"is {len(tokens)} tokens, a request may use "
                                f"{self.engine.n_ctx_slot} (raise -c/--ctx-size)",
                           code="context_length_exceeded", param=param)

    # -- sampling -----------------------------------------------------------------------------

    def params(self, req: Any, max_tokens: Optional[int], grammar: Optional[str] = None,
               extra_stop: Optional[List[str]] = None, n_probs: int = 0) -> SamplingParams:
        """:class:`SamplingParams` from a request body with the :class:`Sampling` fields."""
        g = lambda name, default: getattr(req, name, default)  # noqa: E731
        stop = g("stop", None)
        stop = [stop] if isinstance(stop, str) else list(stop or [])
        stop += [s for s in (extra_stop or []) if s not in stop]
        if grammar is None and g("grammar", None):
            grammar = req.grammar
        if grammar is None and g("json_schema", None):
            from .chat import schema_grammar
            grammar = schema_grammar(req.json_schema)
        last_n = g("repeat_last_n", 64)
        return SamplingParams(
            max_tokens=-1 if max_tokens is None else max_tokens,
            temperature=g("temperature", 0.8), top_k=g("top_k", 40), top_p=g("top_p", 0.95),
            min_p=g("min_p", 0.05), typical_p=g("typical_p", 1.0),
            repeat_penalty=g("repeat_penalty", 1.0),
            repeat_last_n=last_n if last_n >= 0 else self.engine.n_ctx,
            presence_penalty=g("presence_penalty", 0.0),
            frequency_penalty=g("frequency_penalty", 0.0), seed=g("seed", None),
            logit_bias=self._logit_bias(g("logit_bias", None)), grammar=grammar,
            stop=[s for s in stop if s], n_probs=n_probs, ignore_eos=g("ignore_eos", False))

    def _logit_bias(self, bias: Any) -> Dict[int, float]:
        """OpenAI's ``{"token id": bias}`` or llama-server's ``[[token or text, bias]]``."""
        out: Dict[int, float] = {}
        items = bias.items() if isinstance(bias, dict) else (bias or [])
        for item in items:
            key, value = item if isinstance(item, (tuple, list)) and len(item) == 2 else (None, None)
            val = float("-inf") if value is False else float(value) if value is not None else 0.0
            if isinstance(key, str) and not key.lstrip("-").isdigit():
                ids = self.tokenize(key, add_special=False)
            else:
                try:
                    ids = [int(key)]  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    raise APIError(400, "logit_bias keys must be token ids", param="logit_bias")
            for t in ids:
                if not 0 <= t < self.n_vocab:
                    raise APIError(400, f"logit_bias token ids must be in 0..{self.n_vocab - 1}",
                                   param="logit_bias")
                out[t] = val
        return out

    def start(self, prompt: List[int], params: SamplingParams) -> Generation:
        self.check_file()
        return Generation(self.engine, prompt, params)

