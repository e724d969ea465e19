"""The runner: a :class:`~.task.Task` prepared off the event loop and run on the scheduler.

Preparing a task is the slow, CPU-bound part of a request that does not need the context:
rendering the chat template, tokenizing, turning a JSON schema into a grammar and compiling
that grammar into the request's sampler chain. It runs in a worker thread
(:func:`off_loop`), so that a 1 MB prompt or a large schema for one client never stalls the
event loop that answers the others (``/health`` included), and a bad grammar is a 400
before the request is queued. :class:`Run` is the one bridge from a route (asyncio) to the
scheduler thread: typed :class:`~.task.Step` and :class:`~.task.Result` values in, cancel
out, and a client that hangs up leaves the engine at its next step.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Tuple, TypeVar, Union

from .chat import response_format_grammar, schema_grammar, text_message, tool_grammar
from .errors import APIError
from .http import CURRENT_RECEIVE
from .limits import check_max_tokens, logit_bias_ids
from .sampling import SamplerChain, SamplingParams
from .scheduler import Engine, Request
from .task import Progress, Result, Step, Task, TokenProb

T = TypeVar("T")


async def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` in a worker thread: CPU-bound request work never blocks the event loop."""
    return await asyncio.get_running_loop().run_in_executor(
        None, functools.partial(fn, *args, **kwargs))


@dataclass
class Prepared:
    """A task ready for the scheduler: its prompt tokens, the prompt as text (for the native
    API's echo), the resolved sampling parameters and the compiled sampler chain."""

    tokens: List[int]
    text: str
    params: SamplingParams
    chain: SamplerChain
    media: Any = None  # the prompt's images (backend.vision.Pieces), or None


class Runner:
    """Prepares tasks against the shared model state and starts them on the scheduler."""

    def __init__(self, state: Any) -> None:
        self.state = state

    async def start(self, task: Task) -> "Run":
        """Prepare ``task`` off the event loop and queue it; raises :class:`APIError` (4xx)
        for a prompt or structure the model cannot take, 503 when the file changed."""
        self.state.check_file()
        self.state.check_scheduler()
        prepared = await off_loop(self.prepare, task)
        return Run(self.state, prepared)

    def prepare(self, task: Task) -> Prepared:
        """Render, tokenize, check the prompt against the slot's context, resolve the
        sampling parameters and compile the sampler chain (any thread)."""
        st = self.state
        from .media import take_images, tokenize
        task, pictures = take_images(task, getattr(st.opts, "allow_image_urls", False))
        tokens, text, extra_stop = self.render(task)
        media = None
        if pictures:  # through the model's projector: text tokens and image positions
            tokens, media = tokenize(st, text, tokens, pictures, task.param)
        st.check_prompt(tokens, task.param)
        params = self.sampling(task, extra_stop)
        try:
            chain = SamplerChain(st.engine.L, st.engine.vocab, st.engine.n_vocab, params,
                                 st.engine.eog)
        except ValueError as e:
            raise APIError(400, str(e), param="grammar", code="invalid_grammar") from None
        return Prepared(tokens, text, params, chain, media)

    def render(self, task: Task) -> Tuple[List[int], str, List[str]]:
        """The task's prompt: (token ids, as text, the template's extra stop strings)."""
        st = self.state
        extra_stop: List[str] = []
        if task.messages is not None:
            messages = [text_message(m) for m in task.messages]
            text, extra_stop, add_bos = st.template.render(
                messages, task.tools, task.tool_choice, task.add_generation_prompt,
                task.continue_final_message)
            tokens = st.tokenize(text, add_special=add_bos)
        elif task.tokens is not None:
            tokens = list(task.tokens)
            text = ""
        else:
            prompt = task.prompt if task.prompt is not None else ""
            tokens = st.prompt_tokens(prompt, task.add_special)
            text = prompt if isinstance(prompt, str) else \
                st.llm.detokenize(tokens).decode("utf-8", "replace")
        return tokens, text, extra_stop

    def sampling(self, task: Task, extra_stop: List[str]) -> SamplingParams:
        """The task's :class:`SamplingParams`: knobs, length, stops, grammar, bias."""
        stop = list(task.stop) + [s for s in extra_stop if s not in task.stop]
        p = SamplingParams(**task.sampling)
        if p.repeat_last_n < 0:
            p.repeat_last_n = self.state.engine.n_ctx
        check_max_tokens(task.max_tokens, self.state.engine.n_ctx_slot)
        p.max_tokens = -1 if task.max_tokens is None else task.max_tokens
        p.stop = [s for s in stop if s]
        p.grammar = self.grammar(task)
        p.logit_bias = self.logit_bias(task.logit_bias)
        p.n_probs = task.n_probs
        p.post_sampling_probs = task.post_sampling_probs
        p.return_progress = task.return_progress
        return p

    @staticmethod
    def grammar(task: Task) -> Optional[str]:
        """The first structure the task asks for (see :class:`~.task.Task`)."""
        if task.forced_tool:
            return tool_grammar(task.forced_tool)
        return (response_format_grammar(task.response_format) or task.grammar
                or (schema_grammar(task.json_schema) if task.json_schema else None))

    def logit_bias(self, bias: Any) -> Dict[int, float]:
        """OpenAI's ``{"token id": bias}`` or llama-server's ``[[token or text, bias]]``."""
        st = self.state
        return logit_bias_ids(bias, st.n_vocab, lambda text: st.tokenize(text, False))


class Run:
    """One task in the scheduler, seen from the event loop; ``cancel`` is idempotent."""

    def __init__(self, state: Any, prepared: Prepared) -> None:
        self.state = state
        self.engine: Engine = state.engine
        self.prompt = prepared.tokens
        self.prompt_text = prepared.text
        self.params = prepared.params
        self.loop = asyncio.get_running_loop()
        self.queue: "asyncio.Queue[Dict[str, Any]]" = asyncio.Queue()
        self.req = Request(prepared.tokens, prepared.params, self._sink, prepared.chain,
                           prepared.media)
        self.finished = False
        self._peeked: Optional[Dict[str, Any]] = None
        self.engine.submit(self.req)

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

    async def events(self, progress: bool = False
                     ) -> AsyncIterator[Union[Step, Progress, Result]]:
        """:class:`Step` per token, then one :class:`Result`; an error raises APIError.
        ``progress``: also the :class:`Progress` of the prompt's reading, when the task
        asked for it (``return_progress``)."""
        while True:
            ev = await self._next()
            if ev["type"] == "token":
                yield Step(ev["text"], ev["token"], self._prob(ev["token"], ev["logprobs"]))
                continue
            if ev["type"] == "progress":
                if progress:
                    yield Progress(ev["total"], ev["cache"], ev["processed"], ev["time_ms"])
                continue
            self.finished = True
            yield self._result(ev)
            return

    async def collect(self) -> Result:
        """Run to the end: a :class:`Result` with all the text, tokens and probabilities.
        If the client hangs up meanwhile, the request leaves the engine at its next step."""
        parts: List[str] = []
        tokens: List[int] = []
        probs: List[TokenProb] = []
        receive = CURRENT_RECEIVE.get()
        watch = asyncio.ensure_future(self._watch(receive)) if receive is not None else None
        try:
            async for ev in self.events():
                if isinstance(ev, Step):
                    parts.append(ev.text)
                    tokens.append(ev.token)
                    if ev.prob is not None:
                        probs.append(ev.prob)
                    continue
                parts.append(ev.text)
                ev.text, ev.tokens, ev.probs = "".join(parts), tokens, probs
                return ev
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

    def _prob(self, token: int, lp: Optional[Dict[str, Any]]) -> Optional[TokenProb]:
        if lp is None:
            return None
        piece = self.state.piece
        post = "prob" in lp  # post-sampling probabilities, not log-probabilities
        return TokenProb(token, piece(token), lp["prob"] if post else lp["logprob"],
                         [(t, piece(t), v) for t, v in lp["top"]], post)

    @staticmethod
    def _result(ev: Dict[str, Any]) -> Result:
        return Result(ev["finish_reason"], ev["text"], ev["n_prompt"], ev["n_cached"],
                      ev["n_decoded"], ev["timings"], ev["slot"], ev.get("stop_word") or "")
