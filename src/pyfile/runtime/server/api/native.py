"""llama-server's own routes (tools/server/README.md): ``/completion``, ``/infill``,
``/tokenize``, ``/detokenize``, ``/apply-template``, ``/embedding(s)``, ``/reranking``,
``/props``, ``/slots``, ``/metrics``, ``/health``."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Dict, List

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from .... import __version__
from ..chat import text_message
from ..scheduler import params_info
from ..errors import APIError
from ..http import sse, sse_data
from ..schemas import (ApplyTemplateRequest, DetokenizeRequest, EmbeddingRequest,
                             InfillRequest, NativeCompletionRequest, RerankRequest,
                             TokenizeRequest)
from ..state import ServerState


def _stop_type(done: Dict[str, Any]) -> str:
    if done["finish_reason"] == "length":
        return "limit"
    return "word" if done.get("stop_word") else "eos"


def _probs(state: ServerState, tokens: List[int], lps: List[Any]) -> List[Dict[str, Any]]:
    out = []
    for tok, lp in zip(tokens, lps):
        if lp is None:
            continue
        piece = state.piece(tok)
        out.append({"id": tok, "token": piece, "logprob": lp["logprob"],
                    "bytes": list(piece.encode("utf-8")),
                    "top_logprobs": [{"id": t, "token": state.piece(t), "logprob": v,
                                      "bytes": list(state.piece(t).encode("utf-8"))}
                                     for t, v in lp["top"]]})
    return out


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
        busy = state.engine.busy
        return {"status": "ok", "slots_idle": len(state.engine.slots) - busy,
                "slots_busy": busy}

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
                "modalities": {"vision": False, "audio": False},
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
        toks = state.tokenize(req.content, req.add_special, req.parse_special)
        if not req.with_pieces:
            return {"tokens": toks}
        out = []
        for t in toks:
            raw = state.llm._model.detokenize([t], special=True)
            try:
                piece: Any = raw.decode("utf-8")
            except UnicodeDecodeError:
                piece = list(raw)  # an incomplete UTF-8 sequence: its bytes, as llama-server
            out.append({"id": t, "piece": piece})
        return {"tokens": out}

    @r.post("/detokenize")
    async def detokenize(req: DetokenizeRequest) -> Dict[str, Any]:
        n = state.n_vocab
        if any(t < 0 or t >= n for t in req.tokens):
            raise APIError(400, f"token ids must be in 0..{n - 1}", param="tokens")
        return {"content": state.llm.detokenize(req.tokens).decode("utf-8", errors="replace")}

    @r.post("/apply-template")
    async def apply_template(req: ApplyTemplateRequest) -> Dict[str, Any]:
        text, _, _ = state.template.render([text_message(m) for m in req.messages], req.tools)
        return {"prompt": text}

    async def native(req: NativeCompletionRequest, tokens: List[int], prompt_text: str) -> Any:
        state.check_prompt(tokens, "prompt")
        max_tokens = req.n_predict if req.n_predict != -1 else (
            req.max_tokens if req.max_tokens is not None else -1)
        params = state.params(req, max_tokens, None, None, req.n_probs)
        gen = state.start(tokens, params)
        name = req.model or state.model_id

        def final(done: Dict[str, Any], content: str) -> Dict[str, Any]:
            return {"index": 0, "content": content, "tokens": [], "id_slot": done["slot"],
                    "stop": True, "model": name, "tokens_predicted": done["n_decoded"],
                    "tokens_evaluated": done["n_prompt"],
                    "generation_settings": params_info(params),
                    "prompt": prompt_text, "has_new_line": "\n" in content,
                    "truncated": False, "stop_type": _stop_type(done),
                    "stopping_word": done.get("stop_word") or "",
                    "tokens_cached": done["n_prompt"] + done["n_decoded"],
                    "timings": done["timings"]}

        if not req.stream:
            done = await gen.collect()
            out = final(done, done["text"])
            out["tokens"] = done["tokens"]
            if req.n_probs:
                out["completion_probabilities"] = _probs(state, done["tokens"],
                                                         done["logprobs"])
            return out

        async def events() -> AsyncIterator[bytes]:
            async for ev in gen.events():
                if ev["type"] == "token":
                    chunk: Dict[str, Any] = {"index": 0, "content": ev["text"],
                                             "tokens": [ev["token"]], "stop": False,
                                             "id_slot": -1}
                    if req.n_probs:
                        chunk["completion_probabilities"] = _probs(
                            state, [ev["token"]], [ev["logprobs"]])
                    yield sse_data(chunk)
                else:
                    yield sse_data(final(ev, ev["text"]))

        await gen.first()
        return sse(events(), gen.cancel)

    @r.post("/completion")
    async def completion(req: NativeCompletionRequest) -> Any:
        if isinstance(req.prompt, str) and not req.prompt:
            raise APIError(400, "prompt must not be empty", param="prompt")
        tokens = state.prompt_tokens(req.prompt)
        text = req.prompt if isinstance(req.prompt, str) else \
            state.llm.detokenize(tokens).decode("utf-8", "replace")
        return await native(req, tokens, text)

    @r.post("/infill")
    async def infill(req: InfillRequest) -> Any:
        L, v = state.engine.L, state.engine.vocab
        pre, suf, mid = L.llama_vocab_fim_pre(v), L.llama_vocab_fim_suf(v), \
            L.llama_vocab_fim_mid(v)
        if min(pre, suf, mid) < 0:
            raise APIError(501, "this model has no fill-in-the-middle tokens (FIM_PRE/SUF/MID)",
                           "not_supported_error", "not_supported")
        extra: List[int] = []
        for chunk in req.input_extra:
            extra += state.tokenize(f"{chunk.get('filename', '')}\n{chunk.get('text', '')}",
                                    add_special=False)
        prompt = state.prompt_tokens(req.prompt, False) if req.prompt else []
        tokens = ([pre] + extra + state.tokenize(req.input_prefix, False) + [suf]
                  + state.tokenize(req.input_suffix, False) + [mid] + prompt)
        return await native(req, tokens, req.input_prefix)

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
        n_tokens = sum(len(state.tokenize(t)) for t in texts)
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
        q = state.tokenize(req.query, add_special=False)

        def work() -> List[float]:
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
