"""The batching engine: one model, one context, N slots, one scheduler thread.

How it works (the same design as llama.cpp's ``tools/server/server-context.cpp``):

- One ``llama_context`` over the one loaded model, with ``n_seq_max`` = slots and a unified KV
  cache: ``-c`` tokens are shared by all slots, and any one request may use up to all of them.
- A request (:class:`Request`: prompt tokens + :class:`SamplingParams`) is queued; the
  scheduler gives it the idle slot whose cached tokens share the longest prefix with its
  prompt (``llama_memory_seq_rm`` drops the rest), or waits until a slot frees up.
- Each step builds ONE ``llama_batch``: the next token of every generating slot, then chunks
  of the prompts being ingested (up to ``n_batch`` tokens in all), each tagged with its
  slot's sequence id; one ``llama_decode``; then every slot with an output samples from its
  own row with its own sampler chain.
- Results go to each request's ``sink`` callback from the scheduler thread (never blocking).
  A cancelled request leaves the batch at the next step.
- When the KV cache is full, the cached prompts of idle slots are dropped first; if that is
  not enough, the request holding the most tokens ends with an error so the others go on.
- The scheduler thread is supervised: a fault inside a step fails the requests in that step
  and the loop goes on; anything that ends the thread itself fails every request in flight or
  waiting with a 503, is logged once, and the thread is started again on a cleared context.
  More than :data:`MAX_RESTARTS` failures within :data:`RESTART_WINDOW` seconds and it gives
  up: ``failed`` says why and ``on_failure`` tells the server, which exits non-zero.
"""

from __future__ import annotations

import codecs
import ctypes
import itertools
import sys
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from .sampling import SamplerChain, SamplingParams, top_logprobs

Sink = Callable[[Dict[str, Any]], None]
_ids = itertools.count(1)

#: Scheduler failures tolerated within RESTART_WINDOW seconds before the server gives up.
MAX_RESTARTS = 3
RESTART_WINDOW = 60.0


class Request:
    """One generation: ``prompt`` token ids, sampling parameters, and where results go.

    ``sink`` receives dicts from the scheduler thread:
    ``{"type": "token", "text", "token", "logprobs"}`` for each token (``text`` may be empty
    while a stop string or a UTF-8 character is incomplete), then exactly one
    ``{"type": "done", "finish_reason", "text", "timings", ...}`` or
    ``{"type": "error", "message", "status", "code"}``.
    """

    def __init__(self, prompt: List[int], params: SamplingParams, sink: Sink,
                 chain: Optional[SamplerChain] = None, media: Any = None) -> None:
        """``chain``: the sampler chain, compiled beforehand (off the scheduler thread); the
        scheduler owns it from now on and frees it when the request leaves."""
        self.id = next(_ids)
        self.prompt = prompt
        self.params = params
        self.sink = sink
        self.chain = chain
        self.media = media  # the prompt's images (backend.vision.Pieces), or None
        self.cancelled = False
        self.t_queued = time.perf_counter()

    def discard(self) -> None:
        """Free a compiled chain that never reached a slot (cancelled or failed while queued)."""
        if self.chain is not None:
            self.chain.close()
            self.chain = None


class Slot:
    """A sequence id of the shared context and what it holds."""

    def __init__(self, seq: int) -> None:
        self.id = seq
        self.cache: List[int] = []          # tokens whose KV is stored under this seq id
        self.req: Optional[Request] = None
        self.chain: Optional[SamplerChain] = None
        self.pending: List[int] = []        # prompt tokens still to ingest
        self.next_token: Optional[int] = None  # sampled, to be fed at the next step
        self.i_out = -1                     # this step's output row in the batch, -1: none
        self.last_used = 0.0
        self._reset_request_state()

    def _reset_request_state(self) -> None:
        self.n_decoded = 0
        self.n_prompt = 0
        self.n_cached = 0
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.sent = 0
        self.stop_word = ""
        self.t_start = self.t_prompt_done = 0.0

    @property
    def busy(self) -> bool:
        return self.req is not None

    def add_piece(self, piece: bytes, stops: List[str]) -> Tuple[str, bool]:
        """Take a sampled token's bytes: (the text that can be sent now, whether a stop
        string was hit). Text that could still become a stop string, or is an incomplete
        UTF-8 character, is held back; a hit stop string and what follows it never go out."""
        self.text += self.decoder.decode(piece)
        emit_to, hit = len(self.text), False
        if stops:
            start = max(0, self.sent - max(len(x) for x in stops))
            hits = [(i, x) for i, x in ((self.text.find(x, start), x) for x in stops) if i >= 0]
            if hits:
                emit_to, self.stop_word = min(hits)
                self.text = self.text[:emit_to]
                hit = True
            else:
                emit_to = len(self.text) - _partial_stop(self.text, stops)
        out = self.text[self.sent:emit_to] if emit_to > self.sent else ""
        self.sent = max(self.sent, emit_to)
        return out, hit

    def done_event(self, reason: str, now: float) -> Dict[str, Any]:
        """The request's end: what was held back, the counts and llama-server's timings."""
        if not self.stop_word:
            self.text += self.decoder.decode(b"", final=True)
        rest = self.text[self.sent:]  # held back as a possible stop string, or cut at one
        prompt_ms = (self.t_prompt_done - self.t_start) * 1000
        gen_ms = (now - self.t_prompt_done) * 1000
        n_prompt = self.n_prompt - self.n_cached
        timings = {
            "cache_n": self.n_cached, "prompt_n": n_prompt, "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_ms / n_prompt if n_prompt else 0.0,
            "prompt_per_second": n_prompt * 1000 / prompt_ms if prompt_ms > 0 else 0.0,
            "predicted_n": self.n_decoded, "predicted_ms": gen_ms,
            # As llama-server: the rates leave out the first token, which came with the
            # prompt's last batch (its time is the prompt's, not the generation's).
            "predicted_per_token_ms": gen_ms / (self.n_decoded - 1)
            if self.n_decoded > 1 else 0.0,
            "predicted_per_second": (self.n_decoded - 1) * 1000 / gen_ms
            if gen_ms > 0 and self.n_decoded > 1 else 0.0,
        }
        return {"type": "done", "finish_reason": reason, "text": rest,
                "n_prompt": self.n_prompt, "n_cached": self.n_cached,
                "n_decoded": self.n_decoded, "timings": timings, "slot": self.id,
                "stop_word": self.stop_word}


def _common_prefix(a: List[int], b: List[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Metrics:
    """Counters for ``/metrics`` (names as llama-server's, prefix ``llamacpp:``)."""

    def __init__(self) -> None:
        self.t_start = time.time()          # Process-Start-Time-Unix
        self.prompt_tokens_total = 0        # read from the prompt (cached ones excluded)
        self.prompt_tokens_cached_total = 0  # reused from a slot's cache
        self.prompt_seconds_total = 0.0
        self.tokens_predicted_total = 0
        # From each request's first token to its last, and its tokens after the first: the
        # first one comes with the prompt's batch, so the rate (steps / time) leaves it out.
        self.tokens_predicted_seconds_total = 0.0
        self.predicted_steps_total = 0
        self.n_decode_total = 0
        self.n_busy_slots_total = 0
        self.n_tokens_max = 0               # the longest sequence (prompt + generated)
        self.requests_total = 0

    def on_done(self, s: "Slot", now: float) -> None:
        """A request's generation ended: its time and steps (llama-server's predict bucket)."""
        if s.n_decoded > 0 and s.t_prompt_done:
            self.tokens_predicted_seconds_total += now - s.t_prompt_done
            self.predicted_steps_total += s.n_decoded - 1


class Engine:
    """The scheduler over one ``llama_context``; thread-safe ``submit`` and ``cancel``."""

    def __init__(self, L: Any, model: Any, ctx: Any, n_slots: int, n_batch: int,
                 verbose: bool = False, n_ctx_slot: Optional[int] = None) -> None:
        """``n_ctx_slot``: the tokens one request may hold (llama-server's slot context);
        default all of the context (a unified KV cache)."""
        self.L, self.model, self.ctx = L, model, ctx
        self.vocab = L.llama_model_get_vocab(model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.n_ctx = L.llama_n_ctx(ctx)
        self.n_ctx_slot = n_ctx_slot or self.n_ctx
        self.n_batch = min(n_batch, L.llama_n_batch(ctx))  # llama.cpp caps it at n_ctx
        self.mem = L.llama_get_memory(ctx)
        # Found once: scanning the vocabulary costs ~50k foreign calls (a stall per request).
        self.eog = [t for t in range(self.n_vocab) if L.llama_vocab_is_eog(self.vocab, t)]
        self.slots = [Slot(i) for i in range(n_slots)]
        self.waiting: Deque[Request] = deque()
        self.metrics = Metrics()
        self.verbose = verbose
        self._cond = threading.Condition()
        self._running = False
        self._thread: Optional[threading.Thread] = None
        self.restarts = 0                   # scheduler threads started again after a failure
        self.failed: Optional[str] = None   # why the scheduler gave up (None: it runs)
        self.on_failure: Optional[Callable[[str], None]] = None
        self._failures: List[float] = []
        self._batch = L.llama_batch_init(n_batch, 0, 1)
        self._piece = ctypes.create_string_buffer(256)

    # -- the public side (any thread) ---------------------------------------------------------

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._supervised, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, req: Request) -> None:
        with self._cond:
            if self.failed is not None:
                req.discard()
                req.sink({"type": "error", "status": 503, "code": "scheduler_failed",
                          "message": f"the generation scheduler failed ({self.failed})"})
                return
            self.waiting.append(req)
            self.metrics.requests_total += 1
            self._cond.notify_all()

    def cancel(self, req: Request) -> None:
        """Stop ``req``: it leaves the batch at the next step (no further sink calls)."""
        with self._cond:
            req.cancelled = True
            self._cond.notify_all()

    @property
    def busy(self) -> int:
        return sum(1 for s in self.slots if s.busy)

    @property
    def deferred(self) -> int:
        return len(self.waiting)

    def slots_info(self) -> List[Dict[str, Any]]:
        out = []
        for s in self.slots:
            r = s.req
            out.append({"id": s.id, "id_task": r.id if r else -1, "n_ctx": self.n_ctx_slot,
                        "is_processing": r is not None,
                        "n_cached_tokens": len(s.cache),
                        "n_prompt_tokens": s.n_prompt if r else 0,
                        "n_decoded": s.n_decoded if r else 0, "speculative": False,
                        "params": params_info(r.params) if r else None})
        return out

    # -- the scheduler thread -----------------------------------------------------------------

    def _supervised(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # the thread itself failed: nothing may hang on it
            self._crashed(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)

    def _crashed(self, cause: str) -> None:
        """Log once, then (having told the server if it gives up) fail every request with a
        503 and clear the context; restart unless it failed too often."""
        now = time.monotonic()
        self._failures = [t for t in self._failures if now - t < RESTART_WINDOW] + [now]
        give_up = len(self._failures) > MAX_RESTARTS
        sys.stderr.write(f"pyfile: the generation scheduler failed ({cause}); "
                         f"{'giving up' if give_up else 'restarting it'}\n")
        sys.stderr.flush()
        message = f"the generation scheduler failed ({cause})"
        with self._cond:
            if give_up:
                self.failed = cause
                if self.on_failure is not None:
                    self.on_failure(cause)
            waiting, self.waiting = list(self.waiting), deque()
            for s in self.slots:
                if s.busy:
                    self._fail(s, message, 503, "scheduler_failed")
                s.cache = []
            for req in waiting:
                req.discard()
                if not req.cancelled:
                    req.sink({"type": "error", "status": 503, "code": "scheduler_failed",
                              "message": message})
        try:
            self.L.llama_memory_clear(self.mem, True)
        except Exception:  # the context is unusable: the next failure will say so
            pass
        if not give_up and self._running:
            self.restarts += 1
            self.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._running and not self.waiting and not any(s.busy for s in self.slots):
                    self._cond.wait()
                if not self._running:
                    break
                self._drop_cancelled()
                self._assign()
            try:
                self._step()
            except Exception as e:  # an engine fault: fail what is in flight, keep serving
                self._fail_all(f"generation failed: {e}")

    def _drop_cancelled(self) -> None:
        for r in self.waiting:
            if r.cancelled:
                r.discard()
        self.waiting = deque(r for r in self.waiting if not r.cancelled)
        for s in self.slots:
            if s.req is not None and s.req.cancelled:
                self._release(s)

    def _assign(self) -> None:
        while self.waiting:
            idle = [s for s in self.slots if not s.busy]
            if not idle:
                return
            req = self.waiting.popleft()
            best = max(idle, key=lambda s: (_common_prefix(s.cache, req.prompt), -s.last_used))
            self._start(best, req)

    def _start(self, s: Slot, req: Request) -> None:
        s._reset_request_state()
        if req.chain is not None:
            s.chain, req.chain = req.chain, None
        else:
            try:
                s.chain = SamplerChain(self.L, self.vocab, self.n_vocab, req.params, self.eog)
            except ValueError as e:
                req.sink({"type": "error", "status": 400, "code": "invalid_grammar",
                          "message": str(e)})
                return
        keep = min(_common_prefix(s.cache, req.prompt), len(req.prompt) - 1)
        if req.media is not None:  # an image is reused whole or read again from its start
            keep = req.media.boundary(req.prompt, keep)
        if keep < len(s.cache):
            if not self.L.llama_memory_seq_rm(self.mem, s.id, keep, -1):
                self.L.llama_memory_seq_rm(self.mem, s.id, -1, -1)
                keep = 0
            s.cache = s.cache[:keep]
        s.req = req
        s.pending = list(req.prompt[keep:])
        s.n_prompt = len(req.prompt)
        s.n_cached = keep
        s.next_token = None
        s.t_start = time.perf_counter()
        self.metrics.prompt_tokens_cached_total += keep
        self._progress(s, s.t_start)

    def _progress(self, s: Slot, now: float) -> None:
        """llama-server's ``return_progress``: where the reading of the prompt stands (sent
        when the request starts and after each batch of its prompt)."""
        req = s.req
        if req is not None and req.params.return_progress:
            req.sink({"type": "progress", "total": s.n_prompt, "cache": s.n_cached,
                      "processed": len(s.cache), "time_ms": (now - s.t_start) * 1000})

    def _release(self, s: Slot) -> None:
        if s.req is not None and s.req.media is not None:
            s.req.media.close()
        if s.chain is not None:
            s.chain.close()
            s.chain = None
        s.req = None
        s.pending = []
        s.next_token = None
        s.i_out = -1
        s.last_used = time.perf_counter()

    def _fail(self, s: Slot, message: str, status: int = 500, code: str = "server_error") -> None:
        req = s.req
        self._release(s)
        if req is not None and not req.cancelled:
            req.sink({"type": "error", "status": status, "code": code, "message": message})

    def _fail_all(self, message: str) -> None:
        for s in self.slots:
            if s.busy:
                self._fail(s, message)
            s.cache = []
        self.L.llama_memory_clear(self.mem, True)

    def _step(self) -> None:
        L, b = self.L, self._batch
        n = 0
        fed: List[tuple] = []  # (slot, tokens added to its cache by this batch)
        active = [s for s in self.slots if s.busy]
        for s in active:
            s.i_out = -1
            if s.next_token is not None:
                self._put(n, s.next_token, len(s.cache), s.id, True)
                s.i_out = n
                n += 1
                fed.append((s, [s.next_token]))
        for s in active:
            if s.pending and s.req.media is not None and not self._images(s):
                continue
            if not s.pending or n >= self.n_batch:
                continue
            take = s.pending[:self.n_batch - n]
            if s.req.media is not None:  # the text up to the next image
                take = s.req.media.text_run(take)
            pos = len(s.cache)
            last = len(take) == len(s.pending)
            for j, tok in enumerate(take):
                self._put(n, tok, pos + j, s.id, last and j == len(take) - 1)
                n += 1
            if last:
                s.i_out = n - 1
            fed.append((s, take))
        if n == 0:
            return
        b.n_tokens = n
        t0 = time.perf_counter()
        ret = L.llama_decode(self.ctx, b)
        while ret == 1:  # no room in the KV cache
            if not self._make_room(active):
                return
            ret = L.llama_decode(self.ctx, b)
        if ret != 0:
            raise RuntimeError(f"llama_decode returned {ret}")
        dt = time.perf_counter() - t0
        m = self.metrics
        m.n_decode_total += 1
        m.n_busy_slots_total += len(active)
        n_prompt_tok = sum(len(t) for s, t in fed if s.next_token is None)
        if n_prompt_tok:
            m.prompt_tokens_total += n_prompt_tok
            m.prompt_seconds_total += dt * n_prompt_tok / n
        now = time.perf_counter()
        for s, toks in fed:
            s.cache.extend(toks)
            m.n_tokens_max = max(m.n_tokens_max, len(s.cache))
            if s.next_token is None:
                del s.pending[:len(toks)]
                self._progress(s, now)
        for s in active:
            if s.i_out < 0 or s.req is None:
                continue
            if s.next_token is None:
                s.t_prompt_done = now
            self._sample(s, now)

    def _images(self, s: Slot) -> bool:
        """Encode the images at the head of ``s``'s prompt into its sequence (libmtmd, on
        its own batch: an image is decoded whole); False when one failed (the request
        ends with a 400)."""
        while s.pending and not isinstance(s.pending[0], int):
            piece = s.req.media.piece_at(s.pending[0])
            try:
                self.projector.eval_image(piece, self.ctx, len(s.cache), s.id, self.n_batch)
            except Exception as e:
                self.L.llama_memory_seq_rm(self.mem, s.id, len(s.cache), -1)
                self._fail(s, str(e), 400, "invalid_image")
                return False
            s.cache.extend(piece.cells)
            del s.pending[:len(piece.cells)]
        return True

    def _put(self, i: int, tok: int, pos: int, seq: int, logits: bool) -> None:
        b = self._batch
        b.token[i] = tok
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = 1 if logits else 0

    def _make_room(self, active: List[Slot]) -> bool:
        """Free KV space after a full-cache decode; False when the step must be redone."""
        idle = [s for s in self.slots if not s.busy and s.cache]
        if idle:
            for s in idle:
                self.L.llama_memory_seq_rm(self.mem, s.id, -1, -1)
                s.cache = []
            return True
        victim = max(active, key=lambda s: len(s.cache))
        self.L.llama_memory_seq_rm(self.mem, victim.id, -1, -1)
        victim.cache = []
        self._fail(victim, f"the context is full ({self.n_ctx} tokens shared by "
                           f"{len(self.slots)} slots); raise -c/--ctx-size",
                   400, "context_length_exceeded")
        return False

    def _sample(self, s: Slot, now: float) -> None:
        L, req = self.L, s.req
        assert req is not None and s.chain is not None
        p = req.params
        logprobs = None
        if p.n_probs > 0 and p.post_sampling_probs:
            tok, logprobs = s.chain.sample_with_probs(self.ctx, s.i_out, self.n_vocab,
                                                      p.n_probs)
        else:
            tok = s.chain.sample(self.ctx, s.i_out)
        if p.n_probs > 0 and not p.post_sampling_probs:
            import numpy as np
            ptr = L.llama_get_logits_ith(self.ctx, s.i_out)
            row = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
            logprobs = top_logprobs(row, tok, p.n_probs)
        s.n_decoded += 1
        self.metrics.tokens_predicted_total += 1
        if L.llama_vocab_is_eog(self.vocab, tok) and not p.ignore_eos:
            return self._finish(s, "stop", now)
        out, hit = s.add_piece(self._token_piece(tok), p.stop)
        if out or not hit:
            req.sink({"type": "token", "text": out, "token": tok, "logprobs": logprobs})
        if hit:
            return self._finish(s, "stop", now)
        if (p.max_tokens >= 0 and s.n_decoded >= p.max_tokens) or \
                len(s.cache) + 1 >= self.n_ctx_slot:
            return self._finish(s, "length", now)
        s.next_token = tok

    def _token_piece(self, tok: int) -> bytes:
        n = self.L.llama_token_to_piece(self.vocab, tok, self._piece, len(self._piece), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self.L.llama_token_to_piece(self.vocab, tok, buf, -n, 0, False)
            return buf.raw[:n]
        return self._piece.raw[:n]

    def _finish(self, s: Slot, reason: str, now: float) -> None:
        req = s.req
        assert req is not None
        done = s.done_event(reason, now)
        self.metrics.on_done(s, now)
        self._release(s)
        req.sink(done)


def _partial_stop(text: str, stops: List[str]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop string."""
    best = 0
    for x in stops:
        for k in range(min(len(x) - 1, len(text)), best, -1):
            if text.endswith(x[:k]):
                best = k
                break
    return best


#: The samplers of our chain (sampling.py), by llama-server's names, in its order.
SAMPLERS = ["penalties", "top_k", "typ_p", "top_p", "min_p", "temperature"]
#: llama-server's random seed (LLAMA_DEFAULT_SEED): a fresh one per request.
RANDOM_SEED = 0xFFFFFFFF


def params_info(p: SamplingParams, stream: bool = False) -> Dict[str, Any]:
    """llama-server's ``generation_settings``: every key its clients read, with our value
    where we have the setting and the disabled value of each sampler we do not have (DRY,
    XTC, Mirostat, top-n-sigma, dynamic temperature, adaptive-p): what was applied."""
    return {
        "seed": p.seed if p.seed is not None and p.seed >= 0 else RANDOM_SEED,
        "temperature": p.temperature, "dynatemp_range": 0.0, "dynatemp_exponent": 1.0,
        "top_k": p.top_k, "top_p": p.top_p, "min_p": p.min_p, "top_n_sigma": -1.0,
        "xtc_probability": 0.0, "xtc_threshold": 0.1, "typical_p": p.typical_p,
        "repeat_last_n": p.repeat_last_n, "repeat_penalty": p.repeat_penalty,
        "presence_penalty": p.presence_penalty, "frequency_penalty": p.frequency_penalty,
        "dry_multiplier": 0.0, "dry_base": 1.75, "dry_allowed_length": 2,
        "dry_penalty_last_n": 64, "dry_sequence_breakers": ["\n", ":", "\"", "*"],
        "mirostat": 0, "mirostat_tau": 5.0, "mirostat_eta": 0.1, "adaptive_target": -1.0,
        "adaptive_decay": 0.9, "stop": p.stop, "max_tokens": p.max_tokens,
        "n_predict": p.max_tokens, "n_keep": 0, "n_discard": 0, "ignore_eos": p.ignore_eos,
        "stream": stream,
        "logit_bias": [[t, b if b != float("-inf") else False]  # JSON has no -inf
                       for t, b in p.logit_bias.items()], "n_probs": p.n_probs,
        "min_keep": 0, "grammar": p.grammar or "", "grammar_lazy": False,
        "grammar_triggers": [], "preserved_tokens": [], "chat_format": "Content-only",
        "reasoning_format": "none", "reasoning_in_content": False, "generation_prompt": "",
        "samplers": list(SAMPLERS), "speculative.types": "none", "timings_per_token": False,
        "post_sampling_probs": p.post_sampling_probs, "backend_sampling": False, "lora": []}
