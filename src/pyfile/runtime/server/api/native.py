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
from ..scheduler import params_info
from ..schemas import (ApplyTemplateRequest, DetokenizeRequest, EmbeddingRequest,
                       InfillRequest, NativeCompletionRequest, RerankRequest,
                       TokenizeRequest)
from ..state import ServerState
from ..task import Result, Step, Task, TokenProb, knobs


def _stop_type(done: Result) -> str:
    if done.finish_reason == "length":
        return "limit"
    return "word" if done.stop_word else "eos"


def _probs(probs: List[TokenProb]) -> List[Dict[str, Any]]:
    """llama-server's ``completion_probabilities``."""
    return [{"id": p.id, "token": p.piece, "logprob": p.logprob, "bytes": p.bytes,
             "top_logprobs": [{"id": t, "token": piece, "logprob": v,
                               "bytes": list(piece.encode("utf-8"))}
                              for t, piece, v in p.top]} for p in probs]


def _stops(stop: Any) -> List[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def native_task(req: NativeCompletionRequest, **what: Any) -> Task:
    """The task of a native completion; ``what``: the prompt (``prompt`` or ``tokens``)."""
    max_tokens = req.n_predict if req.n_predict != -1 else (
        req.max_tokens if req.max_tokens is not None else -1)
    if "prompt" in what:  # {"prompt_string", "multimodal_data"}: the images go with the task
        from ..media import completion_prompt
        what["prompt"], what["images"] = completion_prompt(what["prompt"])
    return Task(sampling=knobs(req), max_tokens=max_tokens, stop=_stops(req.stop),
                logit_bias=req.logit_bias, grammar=req.grammar, json_schema=req.json_schema,
                n_probs=req.n_probs, **what)


def metrics_text(state: ServerState) -> str:
    """Prometheus text exposition of the engine's counters (llama-server's names)."""
    m, e = state.engine.metrics, state.engine
    rows = [
        ("prompt_tokens_total", "counter", "Number of prompt tokens processed.",
         m.prompt_tokens_total),
        ("prompt_seconds_total", "counter", "Prompt process time", m.prompt_seconds_total),
        ("tokens_predicted_total", "counter", "Number of generation tokens processed.",
         m.tokens_predicted_total),
        ("tokens_predicted_seconds_total", "counter", "Predict process time",
         m.tokens_predicted_seconds_total),
        ("n_decode_total", "counter", "Total number of llama_decode() calls",
         m.n_decode_total),
        ("n_tokens_max", "counter", "Largest observed n_tokens.", m.n_tokens_max),
        ("n_busy_slots_per_decode", "gauge", "Average number of busy slots per llama_decode() "
         "call", m.n_busy_slots_total / m.n_decode_total if m.n_decode_total else 0.0),
        ("prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s.",
         m.prompt_tokens_total / m.prompt_seconds_total if m.prompt_seconds_total else 0.0),
        ("predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s.",
         m.tokens_predicted_total / m.tokens_predicted_seconds_total
         if m.tokens_predicted_seconds_total else 0.0),
        ("requests_processing", "gauge", "Number of requests processing.", e.busy),
        ("requests_deferred", "gauge", "Number of requests deferred.", e.deferred),
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
                "default_generation_settings": {"n_ctx": e.n_ctx_slot,
                                                "params": {"n_predict": -1,
                                                           "temperature": opts.temp,
                                                           "top_k": opts.top_k,
                                                           "top_p": opts.top_p,
                                                           "min_p": opts.min_p}},
                "modalities": {"vision": getattr(state, "projector", None) is not None,
                               "audio": False},
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
        return PlainTextResponse(metrics_text(state),
                                 media_type="text/plain; version=0.0.4")

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
        prompt_text = run.prompt_text if shown is None else shown

        def final(done: Result, content: str) -> Dict[str, Any]:
            return {"index": 0, "content": content, "tokens": [], "id_slot": done.slot,
                    "stop": True, "model": name, "tokens_predicted": done.n_decoded,
                    "tokens_evaluated": done.n_prompt,
                    "generation_settings": params_info(run.params),
                    "prompt": prompt_text, "has_new_line": "\n" in content,
                    "truncated": False, "stop_type": _stop_type(done),
                    "stopping_word": done.stop_word,
                    "tokens_cached": done.n_prompt + done.n_decoded,
                    "timings": done.timings}

        if not req.stream:
            done = await run.collect()
            out = final(done, done.text)
            out["tokens"] = done.tokens
            if req.n_probs:
                out["completion_probabilities"] = _probs(done.probs)
            return out

        async def events() -> AsyncIterator[bytes]:
            async for ev in run.events():
                if isinstance(ev, Step):
                    chunk: Dict[str, Any] = {"index": 0, "content": ev.text,
                                             "tokens": [ev.token], "stop": False,
                                             "id_slot": -1}
                    if req.n_probs:
                        chunk["completion_probabilities"] = _probs([ev.prob] if ev.prob else [])
                    yield sse_data(chunk)
                else:
                    yield sse_data(final(ev, ev.text))

        await run.first()
        return sse(events(), run.cancel)

    @r.post("/completion")
    async def completion(req: NativeCompletionRequest) -> Any:
        if isinstance(req.prompt, str) and not req.prompt:
            raise APIError(400, "prompt must not be empty", param="prompt")
        return await native(req, native_task(req, prompt=req.prompt))

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

    async def embed_all(texts: List[str], normalize_mode: int) -> List[Any]:
        if state.embedder is None:
            raise APIError(400, "this server cannot produce embeddings", code="unsupported")
        if not texts or any(not isinstance(t, str) for t in texts):
            raise APIError(400, "input must be a string or a list of strings", param="input")
        if any(not t for t in texts):
            raise APIError(400, "input strings must not be empty", param="input")
        state.check_file()
        emb = state.embedder()

        def work() -> List[Any]:
            return [emb.embed(state.tokenize(t), normalize_mode) for t in texts]
        return await asyncio.get_running_loop().run_in_executor(None, work)

    @r.post("/v1/embeddings")
    @r.post("/embeddings")
    async def embeddings(req: EmbeddingRequest) -> Dict[str, Any]:
        src = req.input if req.input is not None else req.content
        texts = [src] if isinstance(src, str) else (src or [])
        vectors = await embed_all(texts, req.embd_normalize)
        if vectors and isinstance(vectors[0][0], list):
            raise APIError(400, "pooling 'none' gives one vector per token, which the OpenAI "
                                "API cannot carry: use /embedding or another --pooling",
                           param="input")
        n_tokens = await off_loop(lambda: sum(len(state.tokenize(t)) for t in texts))
        return {"object": "list", "model": req.model or state.model_id,
                "data": [{"object": "embedding", "index": i, "embedding": v}
                         for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}

    @r.post("/embedding")
    async def embedding(req: EmbeddingRequest) -> List[Dict[str, Any]]:
        src = req.content if req.content is not None else req.input
        texts = [src] if isinstance(src, str) else (src or [])
        vectors = await embed_all(texts, req.embd_normalize)
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
