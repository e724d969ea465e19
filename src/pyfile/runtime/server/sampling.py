"""One request's sampling: its parameters and its own llama.cpp sampler chain.

Every request carries a :class:`SamplingParams`; the scheduler builds a sampler chain from it
(``llama_sampler_chain_*`` through llama-cpp-python's ctypes bindings) when the request takes a
slot and frees it when the request leaves. The chain's order follows llama.cpp's common
sampler: logit bias, penalties, grammar, then top-k, top-p, min-p, temperature and the final
random draw (or greedy when the temperature is 0).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple


@dataclass
class SamplingParams:
    """What a request asks of the sampler and of the stop conditions."""

    max_tokens: int = -1            # -1: until the model stops or the slot's context is full
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: Optional[int] = None      # None: a fresh random seed
    logit_bias: Dict[int, float] = field(default_factory=dict)
    grammar: Optional[str] = None   # GBNF text (JSON schemas are converted before)
    stop: List[str] = field(default_factory=list)
    n_probs: int = 0                # top alternatives to report per token (0: none)
    post_sampling_probs: bool = False  # report them as probabilities after the chain
    return_progress: bool = False   # prompt-progress events while the prompt is read
    ignore_eos: bool = False


class SamplerChain:
    """A ``llama_sampler`` chain for one request; ``close`` frees it (idempotent)."""

    def __init__(self, L: Any, vocab: Any, n_vocab: int, p: SamplingParams,
                 eog: Sequence[int] = ()) -> None:
        """``eog``: the vocabulary's end-of-generation tokens (banned by ``ignore_eos``)."""
        self.L = L
        self._cands: Any = None  # candidates buffer of sample_with_probs, made on first use
        params = L.llama_sampler_chain_default_params()
        params.no_perf = True
        self.chain = L.llama_sampler_chain_init(params)
        add = lambda s: L.llama_sampler_chain_add(self.chain, s)  # noqa: E731
        if p.logit_bias:
            arr = (L.llama_logit_bias * len(p.logit_bias))()
            for i, (tok, bias) in enumerate(p.logit_bias.items()):
                arr[i].token, arr[i].bias = tok, bias
            add(L.llama_sampler_init_logit_bias(n_vocab, len(p.logit_bias), arr))
        if p.ignore_eos and eog:
            arr = (L.llama_logit_bias * len(eog))()
            for i, tok in enumerate(eog):
                arr[i].token, arr[i].bias = tok, float("-inf")
            add(L.llama_sampler_init_logit_bias(n_vocab, len(eog), arr))
        if (p.repeat_penalty != 1.0 or p.presence_penalty or p.frequency_penalty):
            add(L.llama_sampler_init_penalties(n_vocab, p.repeat_last_n, p.repeat_penalty,
                                               p.frequency_penalty, p.presence_penalty))
        if p.grammar:
            g = L.llama_sampler_init_grammar(vocab, p.grammar.encode("utf-8"), b"root")
            if not g:
                L.llama_sampler_free(self.chain)
                self.chain = None
                raise ValueError("the grammar does not parse (GBNF)")
            add(g)
        if p.temperature <= 0:
            add(L.llama_sampler_init_greedy())
        else:
            if p.top_k > 0:
                add(L.llama_sampler_init_top_k(p.top_k))
            if p.typical_p < 1.0:
                add(L.llama_sampler_init_typical(p.typical_p, 1))
            if p.top_p < 1.0:
                add(L.llama_sampler_init_top_p(p.top_p, 1))
            if p.min_p > 0:
                add(L.llama_sampler_init_min_p(p.min_p, 1))
            add(L.llama_sampler_init_temp(p.temperature))
            seed = p.seed if p.seed is not None and p.seed >= 0 else random.getrandbits(32)
            add(L.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def sample(self, ctx: Any, idx: int) -> int:
        """Sample from output row ``idx`` of the last decode, and accept the token."""
        return int(self.L.llama_sampler_sample(self.chain, ctx, idx))

    def sample_with_probs(self, ctx: Any, idx: int, n_vocab: int, n: int) -> Tuple[int, Dict]:
        """As :meth:`sample`, done step by step (what ``llama_sampler_sample`` does inside)
        so that the candidates the chain leaves can be read: llama-server's
        ``post_sampling_probs``. Returns the token and ``{"prob", "top": [(id, p)...]}``,
        the top ``n`` candidates with a non-zero probability, most likely first."""
        import ctypes
        import numpy as np
        L = self.L
        if self._cands is None or len(self._cands) != n_vocab:
            self._cands = (L.llama_token_data * n_vocab)()
        view = np.ctypeslib.as_array(self._cands)
        view["id"] = np.arange(n_vocab, dtype=np.int32)
        view["logit"] = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, idx),
                                              shape=(n_vocab,))
        view["p"] = 0.0
        cur = L.llama_token_data_array(
            ctypes.cast(self._cands, ctypes.POINTER(L.llama_token_data)), n_vocab, -1, False)
        L.llama_sampler_apply(self.chain, ctypes.byref(cur))
        if not 0 <= cur.selected < cur.size:
            raise RuntimeError("the sampler chain selected no token")
        left = np.ctypeslib.as_array(cur.data, shape=(cur.size,))
        tok = int(left["id"][cur.selected])
        L.llama_sampler_accept(self.chain, tok)
        p = left["p"].astype(np.float64)
        if not p.any():  # greedy picks without computing probabilities: softmax them
            z = left["logit"].astype(np.float64)
            p = np.exp(z - z.max())
            p /= p.sum()
        order = np.argsort(-p, kind="stable")[:n]
        top = [(int(left["id"][i]), float(p[i])) for i in order if p[i] > 0]
        return tok, {"prob": float(p[cur.selected]), "top": top}

    def close(self) -> None:
        if self.chain is not None:
            self.L.llama_sampler_free(self.chain)
            self.chain = None


def top_logprobs(logits: Any, chosen: int, n: int) -> Dict[str, Any]:
    """Log-probabilities from a row of logits (numpy): the chosen token's and the top ``n``."""
    import numpy as np
    row = logits.astype(np.float64)
    m = row.max()
    lse = m + np.log(np.exp(row - m).sum())
    top = np.argpartition(-row, n)[:n] if n < row.shape[0] else np.arange(row.shape[0])
    top = top[np.argsort(-row[top])]
    return {"logprob": float(row[chosen] - lse),
            "top": [(int(t), float(row[t] - lse)) for t in top]}

