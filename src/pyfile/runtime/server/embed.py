"""Embeddings and reranking: a second, small context over the same model (no weight copy).

Each input is decoded alone into a cleared context, so the same text gives the same vector
whether it is sent alone or in a batch (nothing leaks from one input into the next). Vectors
are pooled as ``--pooling`` says (default: the model's own, or mean for a model without one,
such as a chat model) and unit-normalized (``embd_normalize`` 2, as OpenAI and llama-server).
The whole input must fit one physical batch (``-ub``), as in llama-server.
"""

from __future__ import annotations

import math
import threading
from typing import Any, List, Optional

from .errors import APIError

POOLING = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}


def normalize(v: List[float], mode: int) -> List[float]:
    """llama-server's ``embd_normalize``: -1 none, 0 max-abs (int16 range), 1 taxicab,
    2 Euclidean (default), >2 p-norm."""
    if mode < 0:
        return v
    if mode == 0:
        s = max((abs(x) for x in v), default=0.0) / 32760.0
    elif mode == 2:
        s = math.sqrt(sum(x * x for x in v))
    else:
        s = sum(abs(x) ** mode for x in v) ** (1.0 / mode)
    return [x / s for x in v] if s > 0 else list(v)


class Embedder:
    """Created on first use; one input at a time (a lock), in the caller's worker thread."""

    def __init__(self, L: Any, model: Any, base_params: Any, n_ubatch: int,
                 pooling: Optional[str]) -> None:
        self.L, self.model = L, model
        self.lock = threading.Lock()
        self.n_ubatch = n_ubatch = max(n_ubatch, 8)
        self.n_embd = L.llama_model_n_embd(model)
        self.vocab = L.llama_model_get_vocab(model)
        p = type(base_params).from_buffer_copy(base_params)
        p.embeddings = True
        p.n_ctx = p.n_batch = p.n_ubatch = n_ubatch
        p.n_seq_max = 1
        p.pooling_type = POOLING[pooling] if pooling else -1  # -1: the model's own
        self.ctx = L.llama_init_from_model(model, p)
        if not self.ctx:
            raise APIError(500, "could not create the embedding context", "server_error")
        self.pooling = L.llama_pooling_type(self.ctx)
        if pooling is None and self.pooling == POOLING["none"]:
            # A model without a pooling of its own (a chat model): mean, as before.
            L.llama_free(self.ctx)
            p.pooling_type = POOLING["mean"]
            self.ctx = L.llama_init_from_model(model, p)
            self.pooling = L.llama_pooling_type(self.ctx)
        self.mem = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(n_ubatch, 0, 1)

    def close(self) -> None:
        if self.ctx:
            self.L.llama_batch_free(self.batch)
            self.L.llama_free(self.ctx)
            self.ctx = None

    def _decode(self, tokens: List[int]) -> None:
        L, b = self.L, self.batch
        if not tokens:
            raise APIError(400, "input strings must not be empty", param="input")
        if len(tokens) > self.n_ubatch:
            raise APIError(400, f"an input is {len(tokens)} tokens; the embedding batch holds "
                                f"{self.n_ubatch} (raise -ub/--ubatch-size)",
                           code="context_length_exceeded", param="input")
        L.llama_memory_clear(self.mem, True)
        for i, t in enumerate(tokens):
            b.token[i] = t
            b.pos[i] = i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = 1
        b.n_tokens = len(tokens)
        rc = L.llama_decode(self.ctx, b) if not L.llama_model_has_encoder(self.model) \
            else L.llama_encode(self.ctx, b)
        if rc != 0:
            raise APIError(500, f"embedding decode failed ({rc})", "server_error")

    def embed(self, tokens: List[int], normalize_mode: int = 2) -> List[Any]:
        """One pooled vector, or one per token when the pooling is ``none``."""
        with self.lock:
            self._decode(tokens)
            if self.pooling == POOLING["none"]:
                rows = []
                for i in range(len(tokens)):
                    ptr = self.L.llama_get_embeddings_ith(self.ctx, i)
                    rows.append(normalize([ptr[j] for j in range(self.n_embd)],
                                          normalize_mode))
                return rows
            ptr = self.L.llama_get_embeddings_seq(self.ctx, 0)
            return normalize([ptr[j] for j in range(self.n_embd)], normalize_mode)

    def rank(self, tokens: List[int]) -> float:
        """The relevance score of a (query, document) pair (models with a rank head)."""
        if self.pooling != POOLING["rank"]:
            raise APIError(501, "this model cannot rank: it has no classification head "
                                "(start with a reranking model and --pooling rank)",
                           "not_supported_error", "not_supported")
        with self.lock:
            self._decode(tokens)
            return float(self.L.llama_get_embeddings_seq(self.ctx, 0)[0])

    def rerank_tokens(self, query: List[int], doc: List[int]) -> List[int]:
        """``BOS query EOS SEP doc EOS``, llama-server's format for rerankers."""
        L, v = self.L, self.vocab
        out: List[int] = []
        bos, eos, sep = L.llama_vocab_bos(v), L.llama_vocab_eos(v), L.llama_vocab_sep(v)
        if bos >= 0:
            out.append(bos)
        out += query
        if eos >= 0:
            out.append(eos)
        if sep >= 0:
            out.append(sep)
        out += doc
        if eos >= 0:
            out.append(eos)
        return out
