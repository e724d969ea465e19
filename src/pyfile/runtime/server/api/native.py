"""llama-server's own routes (tools/server/README.md): ``/completion``, ``/infill``,
``/tokenize``, ``/detokenize``, ``/apply-template``, ``/embedding(s)``, ``/reranking``,
``/props``, ``/slots``, ``/metrics``, ``/health``."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Dict, List, Optional

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from .... import __version__
from ..chat import text_message
from ..errors import APIError
from ..http import sse, sse_data
from ..runner import off_loop
from ..sampling import SamplingParams
from ..scheduler import params_info
from ..schemas import (ApplyTemplateRequest, DetokenizeRequest, EmbeddingRequest,
                       InfillRequest, NativeCompletionRequest, RerankRequest,
                       TokenizeRequest)
from ..state import ServerState
from ..prompts import split
from ..task import Progress, Result, Step, Task, TokenProb, knobs


def _stop_type(done: Result) -> str:
    if done.finish_reason == "length":
        return "limit"
    return "word" if done.stop_word else "eos"


def _probs(probs: List[TokenProb]) -> List[Dict[str, Any]]:
    """llama-server's ``completion_probabilities``."""
    return [p.as_llama_server() for p in probs]


def _stops(stop: Any) -> List[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def model_ftype(state: ServerState) -> str:
    """The weights' type as llama.cpp names it ("Q4_1", "Q4_K - Medium", ...)."""
    e = state.engine
    name = e.L.llama_ftype_name(e.L.llama_model_ftype(e.model))
    return name.decode("utf-8", "replace") if name else ""


def _token_text(state: ServerState, token: int) -> str:
    return state.llm._model.token_get_text(token) if token >= 0 else ""


def completion_json(run: Any, done: Result, model: str, content: str,
                    shown: Optional[str] = None, stream: bool = False) -> Dict[str, Any]:
    """llama-server's final native completion (``tokens`` empty: the caller fills them);
    ``shown``: the prompt echoed back (default: as the model read it, a chat's rendered)."""
    return {"index": 0, "content": content, "tokens": [], "id_slot": done.slot,
            "stop": True, "model": model, "tokens_predicted": done.n_decoded,
            "tokens_evaluated": done.n_prompt,
            "generation_settings": params_info(run.params, stream),
            "prompt": run.prompt_text if shown is None else shown,
            "has_new_line": "\n" in content, "truncated": False,
            "stop_type": _stop_type(done), "stopping_word": done.stop_word,
            "tokens_cached": done.n_prompt + done.n_decoded, "timings": done.timings}


def native_task(req: NativeCompletionRequest, **what: Any) -> Task:
    """The task of a native completion; ``what``: the prompt (``prompt`` or ``tokens``)."""
    max_tokens = req.n_predict if req.n_predict != -1 else (
        req.max_tokens if req.max_tokens is not None else -1)
    if "prompt" in what:  # {"prompt_string", "multimodal_data"}: the images go with the task
        from ..media import completion_prompt
        what["prompt"], what["images"] = completion_prompt(what["prompt"])
    return Task(sampling=knobs(req), max_tokens=max_tokens, stop=_stops(req.stop),
                logit_bias=req.logit_bias, grammar=req.grammar, json_schema=req.json_schema,
                n_probs=req.n_probs, post_sampling_probs=req.post_sampling_probs,
                return_progress=req.return_progress and req.stream, **what)


def metrics_text(state: ServerState) -> str:
    """Prometheus text exposition of the engine's counters: llama-server's names, meanings
    and order (counters, then gauges). The generation rate counts each request's tokens
    after its first (which comes with the prompt's batch) over the time from its first
    token to its last, as llama-server's does."""
    m, e = state.engine.metrics, state.engine
    rows = [
        ("prompt_tokens_total", "counter",
         "Number of prompt tokens processed, excluding cached tokens", m.prompt_tokens_total),
        ("prompt_tokens_cached_total", "counter",
         "Number of prompt tokens reused from the cache", m.prompt_tokens_cached_total),
        ("prompt_seconds_total", "counter", "Total time spent processing prompts",
         m.prompt_seconds_total),
        ("tokens_predicted_total", "counter", "Number of generation tokens processed",
         m.tokens_predicted_total),
        ("tokens_predicted_seconds_total", "counter", "Total time spent generating tokens",
         m.tokens_predicted_seconds_total),
        ("n_decode_total", "counter", "Total number of llama_decode() calls",
         m.n_decode_total),
        ("n_tokens_max", "counter", "Largest observed sequence length (prompt + generation)",
         m.n_tokens_max),
        # No speculative decoding here: its counters stay at 0 (clients graph them).
        ("spec_decode_num_draft_tokens_total", "counter",
         "Speculative: Total draft tokens generated", 0),
        ("spec_decode_num_accepted_tokens_total", "counter",
         "Speculative: Total draft tokens accepted by the target model", 0),
        ("spec_decode_num_drafts_total", "counter",
         "Speculative: Total speculative decoding verification steps", 0),
        ("prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s",
         m.prompt_tokens_total / m.prompt_seconds_total if m.prompt_seconds_total else 0.0),
        ("predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s",
         m.predicted_steps_total / m.tokens_predicted_seconds_total
         if m.tokens_predicted_seconds_total else 0.0),
        ("requests_processing", "gauge", "Number of requests processing", e.busy),
        ("requests_deferred", "gauge", "Number of requests deferred", e.deferred),
        ("n_busy_slots_per_decode", "gauge", "Average number of busy slots per llama_decode() "
         "call", m.n_busy_slots_total / m.n_decode_total if m.n_decode_total else 0.0),
    ]
    lines = []
    for name, kind, doc, value in rows:
        lines += [f"# HELP llamacpp:{name} {doc}", f"# TYPE llamacpp:{name} {kind}",
                  f"llamacpp:{name} {value}"]
    return "\n".join(lines) + "\n"


def router(state: ServerState) -> APIRouter:
    r = APIRouter()
    opts = state.opts

    @r.get("/health")
    @r.get("/v1/health")
    async def health() -> Dict[str, Any]:
        e = state.engine
        if e.failed is not None:
            raise APIError(503, f"the generation scheduler failed ({e.failed}); the server is "
                                f"stopping", "unavailable_error", "scheduler_failed")
        busy = e.busy
        return {"status": "ok", "slots_idle": len(e.slots) - busy, "slots_busy": busy,
                "scheduler_restarts": e.restarts}

    @r.get("/props")
    async def props() -> Dict[str, Any]:
        e = state.engine
        return {"model": state.model_id, "model_path": state.model_path,
                "n_ctx": e.n_ctx, "parallel": len(e.slots), "total_slots": len(e.slots),
                "chat_template": state.template.source,
                "default_generation_settings": {"n_ctx": e.n_ctx_slot, "params": params_info(
                    SamplingParams(temperature=opts.temp, top_k=opts.top_k,
                                   top_p=opts.top_p, min_p=opts.min_p,
                                   repeat_penalty=opts.repeat_penalty,
                                   seed=opts.seed if opts.seed >= 0 else None))},
                "modalities": {"vision": getattr(state, "projector", None) is not None,
                               "video": False, "audio": False},
                "model_alias": state.model_id, "model_ftype": model_ftype(state),
                "cors_proxy_enabled": False, "ui_settings": {},
                "endpoint_slots": not opts.no_slots,
                "endpoint_props": False, "endpoint_metrics": bool(opts.metrics),
                "ui": bool(getattr(opts, "webui", True)), "is_sleeping": False,
                "bos_token": _token_text(state, state.llm.token_bos()),
                "eos_token": _token_text(state, state.llm.token_eos()),
                "backend": state.backend_line, "build_info": f"pyfile {__version__}",
                "pyfile": __version__}

    @r.get("/slots")
    async def slots() -> Any:
        if opts.no_slots:
            raise APIError(501, "this server does not expose /slots (started with --no-slots)",
                           "not_supported_error", "not_supported")
        return state.engine.slots_info()

    @r.get("/metrics")
    async def metrics() -> Any:
        if not opts.metrics:
            raise APIError(501, "this server does not expose /metrics: start it with --metrics",
                           "not_supported_error", "not_supported")
        return PlainTextResponse(metrics_text(state), media_type="text/plain; version=0.0.4",
                                 headers={"Process-Start-Time-Unix":
                                          str(int(state.engine.metrics.t_start))})

    @r.post("/tokenize")
    async def tokenize(req: TokenizeRequest) -> Dict[str, Any]:
        toks = await off_loop(state.tokenize, req.content, req.add_special, req.parse_special)
        if not req.with_pieces:
            return {"tokens": toks}

        def pieces() -> List[Dict[str, Any]]:
            out = []
            for t in toks:
                raw = state.llm._model.detokenize([t], special=True)
                try:
                    piece: Any = raw.decode("utf-8")
                except UnicodeDecodeError:
                    piece = list(raw)  # an incomplete UTF-8 sequence: its bytes, as llama-server
                out.append({"id": t, "piece": piece})
            return out
        return {"tokens": await off_loop(pieces)}

    @r.post("/detokenize")
    async def detokenize(req: DetokenizeRequest) -> Dict[str, Any]:
        n = state.n_vocab
        if any(t < 0 or t >= n for t in req.tokens):
            raise APIError(400, f"token ids must be in 0..{n - 1}", param="tokens")
        text = await off_loop(state.llm.detokenize, req.tokens)
        return {"content": text.decode("utf-8", errors="replace")}

    @r.post("/apply-template")
    async def apply_template(req: ApplyTemplateRequest) -> Dict[str, Any]:
        text, _, _ = await off_loop(state.template.render,
                                    [text_message(m) for m in req.messages], req.tools)
        return {"prompt": text}

    async def native(req: NativeCompletionRequest, task: Task,
                     shown: Optional[str] = None) -> Any:
        """Run a native completion; ``shown``: the prompt echoed back (default: as given)."""
        run = await state.runner.start(task)
        name = req.model or state.model_id

        def final(done: Result, content: str) -> Dict[str, Any]:
            return completion_json(run, done, name, content, shown, req.stream)

        if not req.stream:
            done = await run.collect()
            out = final(done, done.text)
            out["tokens"] = done.tokens
            if req.n_probs:
                out["completion_probabilities"] = _probs(done.probs)
            return out

        async def events() -> AsyncIterator[bytes]:
            n = 0
            async for ev in run.events(progress=True):
                if isinstance(ev, Progress):  # return_progress: llama-server's partial shape
                    yield sse_data({"index": 0, "content": "", "tokens": [], "stop": False,
                                    "id_slot": -1, "tokens_predicted": 0,
                                    "tokens_evaluated": ev.total,
                                    "prompt_progress": ev.to_json()})
                elif isinstance(ev, Step):
                    n += 1
                    chunk: Dict[str, Any] = {"index": 0, "content": ev.text,
                                             "tokens": [ev.token], "stop": False,
                                             "id_slot": -1, "tokens_predicted": n,
                                             "tokens_evaluated": len(run.prompt)}
                    if req.n_probs:
                        chunk["completion_probabilities"] = _probs([ev.prob] if ev.prob else [])
                    yield sse_data(chunk)
                else:
                    yield sse_data(final(ev, ev.text))

        await run.first()
        return sse(events(), run.cancel)

    @r.post("/completion")
    @r.post("/completions")  # llama-server's native completion too (OpenAI's is /v1/...)
    async def completion(req: NativeCompletionRequest) -> Any:
        if isinstance(req.prompt, str) and not req.prompt:
            raise APIError(400, "prompt must not be empty", param="prompt")
        prompts = split(req.prompt)
        if len(prompts) == 1:
            return await native(req, native_task(req, prompt=prompts[0]))
        if req.stream:
            raise APIError(400, "stream one prompt per request (several prompts are answered "
                                "together without stream)", param="stream")
        # Several prompts: one result each, in order (llama-server's array answer).
        waits = [asyncio.ensure_future(native(req, native_task(req, prompt=p)))
                 for p in prompts]
        try:
            outs = await asyncio.gather(*waits)
        finally:  # one failed or its client hung up: the others stop too
            for w in waits:
                w.cancel()
        for i, out in enumerate(outs):
            out["index"] = i
        return list(outs)

    @r.post("/infill")
    async def infill(req: InfillRequest) -> Any:
        L, v = state.engine.L, state.engine.vocab
        pre, suf, mid = L.llama_vocab_fim_pre(v), L.llama_vocab_fim_suf(v), \
            L.llama_vocab_fim_mid(v)
        if min(pre, suf, mid) < 0:
            raise APIError(501, "this model has no fill-in-the-middle tokens (FIM_PRE/SUF/MID)",
                           "not_supported_error", "not_supported")

        def layout() -> List[int]:
            extra: List[int] = []
            for chunk in req.input_extra:
                extra += state.tokenize(f"{chunk.get('filename', '')}\n{chunk.get('text', '')}",
                                        add_special=False)
            prompt = state.prompt_tokens(req.prompt, False) if req.prompt else []
            return ([pre] + extra + state.tokenize(req.input_prefix, False) + [suf]
                    + state.tokenize(req.input_suffix, False) + [mid] + prompt)
        tokens = await off_loop(layout)
        return await native(req, native_task(req, tokens=tokens), shown=req.input_prefix)

    async def embed_all(src: Any, normalize_mode: int, param: str) -> tuple:
        """(vectors, tokens read) for one input or several, each in any of llama-server's
        prompt forms: text, token ids, a mix, {"prompt_string": ...} (:mod:`..prompts`)."""
        if state.embedder is None:
            raise APIError(400, "this server cannot produce embeddings", code="unsupported")
        if src is None:
            raise APIError(400, f"{param} is required", param=param)
        inputs = split(src, param)
        if any(x == "" for x in inputs):
            raise APIError(400, f"{param} strings must not be empty", param=param)
        state.check_file()
        emb = state.embedder()

        def work() -> tuple:
            tokens = [state.prompt_tokens(x, True, param) for x in inputs]
            return [emb.embed(t, normalize_mode) for t in tokens], sum(map(len, tokens))
        return await asyncio.get_running_loop().run_in_executor(None, work)

    @r.post("/v1/embeddings")  # OpenAI's; unprefixed /embeddings is llama-server's own
    async def embeddings(req: EmbeddingRequest) -> Dict[str, Any]:
        src, param = (req.input, "input") if req.input is not None else (req.content, "content")
        vectors, n_tokens = await embed_all(src, req.embd_normalize, param)
        if vectors and isinstance(vectors[0][0], list):
            raise APIError(400, "pooling 'none' gives one vector per token, which the OpenAI "
                                "API cannot carry: use /embedding or another --pooling",
                           param="input")
        return {"object": "list", "model": req.model or state.model_id,
                "data": [{"object": "embedding", "index": i, "embedding": v}
                         for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}

    @r.post("/embedding")
    @r.post("/embeddings")
    async def embedding(req: EmbeddingRequest) -> List[Dict[str, Any]]:
        src, param = (req.content, "content") if req.content is not None else (req.input,
                                                                                "input")
        vectors, _ = await embed_all(src, req.embd_normalize, param)
        return [{"index": i, "embedding": v if isinstance(v[0], list) else [v]}
                for i, v in enumerate(vectors)]

    @r.post("/reranking")
    @r.post("/rerank")
    @r.post("/v1/rerank")
    @r.post("/v1/reranking")
    async def rerank(req: RerankRequest) -> Dict[str, Any]:
        if state.embedder is None:
            raise APIError(501, "this server cannot rank", "not_supported_error",
                           "not_supported")
        state.check_file()
        emb = state.embedder()

        def work() -> List[float]:
            q = state.tokenize(req.query, add_special=False)
            return [emb.rank(emb.rerank_tokens(q, state.tokenize(d, add_special=False)))
                    for d in req.documents]
        scores = await asyncio.get_running_loop().run_in_executor(None, work)
        results = [{"index": i, "relevance_score": s,
                    **({"document": {"text": req.documents[i]}} if req.return_text else {})}
                   for i, s in enumerate(scores)]
        results.sort(key=lambda x: -x["relevance_score"])
        return {"model": req.model or state.model_id, "object": "list",
                "results": results[:req.top_n] if req.top_n else results,
                "usage": {"prompt_tokens": 0, "total_tokens": 0}}

    return r
