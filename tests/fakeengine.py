"""A fake engine behind the same interface as llama.cpp's C API (the subset the server's
scheduler and sampler chains call through llama-cpp-python) and a fake ``Llama`` for the
server state, so that the scheduler, the task layer and the API formatters can be tested in
milliseconds without a model.

The fake model is a character-level toy: its vocabulary is ``</s>`` (end of generation)
followed by the letters, space and full stop, and after token ``t`` it always predicts
``t + 1`` (so after "a" it writes "bcd...xyz ." and then ends). Its KV cache is real
bookkeeping: ``llama_decode`` checks that every token arrives at the next position of its
sequence and refuses a batch that does not fit, as llama.cpp does (return 1).
"""

from __future__ import annotations

import ctypes
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

PIECES = ["</s>"] + list("abcdefghijklmnopqrstuvwxyz .")
N_VOCAB = len(PIECES)
EOS = 0
BAD_GRAMMAR = "not a grammar"


def tokens_of(text: str) -> List[int]:
    return [PIECES.index(c) for c in text]


def text_of(tokens: List[int]) -> str:
    return "".join(PIECES[t] for t in tokens if t != EOS)


class Batch:
    def __init__(self, n: int) -> None:
        self.token = [0] * n
        self.pos = [0] * n
        self.n_seq_id = [0] * n
        self.seq_id = [[0] for _ in range(n)]
        self.logits = [0] * n
        self.n_tokens = 0


class Chain:
    """A sampler chain: logit biases, then greedy (the toy is deterministic at any
    temperature; ``init_dist`` records the seed)."""

    def __init__(self) -> None:
        self.bias: Dict[int, float] = {}
        self.parts: List[str] = []
        self.freed = False


class FakeL:
    """The llama.cpp functions the scheduler and :class:`SamplerChain` call."""

    LLAMA_FLASH_ATTN_TYPE_AUTO = -1

    class llama_logit_bias(ctypes.Structure):  # noqa: N801 (the C name)
        _fields_ = [("token", ctypes.c_int32), ("bias", ctypes.c_float)]

    def __init__(self, n_ctx: int = 256, n_batch: int = 64) -> None:
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.kv: Dict[int, List[int]] = {}
        self.rows: Dict[int, int] = {}    # batch index -> the token whose logits it holds
        self.decodes = 0
        self.batch_sizes: List[int] = []
        self.fault: Optional[BaseException] = None  # raised by the next llama_decode
        self.chains: List[Chain] = []
        self._logits: Any = None

    # -- model, vocabulary, context
    def llama_model_get_vocab(self, model: Any) -> str:
        return "vocab"

    def llama_vocab_n_tokens(self, vocab: Any) -> int:
        return N_VOCAB

    def llama_n_ctx(self, ctx: Any) -> int:
        return self.n_ctx

    def llama_n_batch(self, ctx: Any) -> int:
        return self.n_batch

    def llama_get_memory(self, ctx: Any) -> str:
        return "mem"

    def llama_vocab_is_eog(self, vocab: Any, tok: int) -> bool:
        return tok == EOS

    def llama_vocab_fim_pre(self, vocab: Any) -> int:
        return -1

    llama_vocab_fim_suf = llama_vocab_fim_mid = llama_vocab_fim_pre

    def llama_token_to_piece(self, vocab: Any, tok: int, buf: Any, n: int, lstrip: int,
                             special: bool) -> int:
        data = b"" if tok == EOS else PIECES[tok].encode()
        ctypes.memmove(buf, data, len(data))
        return len(data)

    # -- batches and decoding
    def llama_batch_init(self, n: int, embd: int, n_seq: int) -> Batch:
        return Batch(n)

    def llama_decode(self, ctx: Any, b: Batch) -> int:
        if self.fault is not None:
            fault, self.fault = self.fault, None
            raise fault
        used = sum(len(v) for v in self.kv.values())
        if used + b.n_tokens > self.n_ctx:
            return 1
        self.rows = {}
        for i in range(b.n_tokens):
            seq = b.seq_id[i][0]
            cache = self.kv.setdefault(seq, [])
            if b.pos[i] != len(cache):
                raise AssertionError(f"seq {seq}: token at position {b.pos[i]}, "
                                     f"the cache holds {len(cache)}")
            cache.append(b.token[i])
            if b.logits[i]:
                self.rows[i] = b.token[i]
        self.decodes += 1
        self.batch_sizes.append(b.n_tokens)
        return 0

    def llama_memory_seq_rm(self, mem: Any, seq: int, p0: int, p1: int) -> bool:
        seqs = list(self.kv) if seq < 0 else [seq]
        for s in seqs:
            self.kv[s] = self.kv.get(s, [])[:max(p0, 0)]
        return True

    def llama_memory_clear(self, mem: Any, data: bool) -> None:
        self.kv = {}

    def row(self, i: int) -> List[float]:
        """The toy's logits at batch row ``i``: the next letter far ahead of the others."""
        want = (self.rows[i] + 1) % N_VOCAB
        return [10.0 if t == want else (2.0 if t == (want + 1) % N_VOCAB else 0.0)
                for t in range(N_VOCAB)]

    def llama_get_logits_ith(self, ctx: Any, i: int) -> Any:
        self._logits = (ctypes.c_float * N_VOCAB)(*self.row(i))
        return ctypes.cast(self._logits, ctypes.POINTER(ctypes.c_float))

    # -- samplers
    def llama_sampler_chain_default_params(self) -> Any:
        return SimpleNamespace(no_perf=False)

    def llama_sampler_chain_init(self, params: Any) -> Chain:
        c = Chain()
        self.chains.append(c)
        return c

    def llama_sampler_chain_add(self, chain: Chain, s: Any) -> None:
        kind, arg = s
        if kind == "bias":
            chain.bias.update(arg)
        chain.parts.append(kind)

    def llama_sampler_init_logit_bias(self, n_vocab: int, n: int, arr: Any) -> Any:
        return ("bias", {arr[i].token: arr[i].bias for i in range(n)})

    def llama_sampler_init_grammar(self, vocab: Any, text: bytes, root: bytes) -> Any:
        return None if text.decode() == BAD_GRAMMAR else ("grammar", text)

    def llama_sampler_init_penalties(self, *a: Any) -> Any:
        return ("penalties", a)

    def llama_sampler_init_greedy(self) -> Any:
        return ("greedy", None)

    def llama_sampler_init_top_k(self, k: int) -> Any:
        return ("top_k", k)

    def llama_sampler_init_typical(self, p: float, m: int) -> Any:
        return ("typical", p)

    def llama_sampler_init_top_p(self, p: float, m: int) -> Any:
        return ("top_p", p)

    def llama_sampler_init_min_p(self, p: float, m: int) -> Any:
        return ("min_p", p)

    def llama_sampler_init_temp(self, t: float) -> Any:
        return ("temp", t)

    def llama_sampler_init_dist(self, seed: int) -> Any:
        return ("dist", seed)

    def llama_sampler_sample(self, chain: Chain, ctx: Any, i: int) -> int:
        row = self.row(i)
        for t, b in chain.bias.items():
            row[t] += b
        return max(range(N_VOCAB), key=lambda t: row[t])

    def llama_sampler_free(self, chain: Chain) -> None:
        chain.freed = True


TEMPLATE = ("{% for m in messages %}{{ m['role'][0] }}{{ m['content'] }}.{% endfor %}"
            "{% if add_generation_prompt %}a{% endif %}")


class FakeLlm:
    """What the server state takes from a ``Llama``: tokenizer, metadata, template."""

    def __init__(self, template: Optional[str] = TEMPLATE) -> None:
        self.metadata = {"tokenizer.chat_template": template} if template else {}
        self._model = SimpleNamespace(
            detokenize=lambda toks, special=True: text_of(toks).encode(),
            token_get_text=lambda t: PIECES[t])

    def tokenize(self, data: bytes, add_bos: bool = True, special: bool = True) -> List[int]:
        return tokens_of(data.decode("utf-8"))

    def detokenize(self, tokens: List[int]) -> bytes:
        return text_of(tokens).encode()

    def n_vocab(self) -> int:
        return N_VOCAB

    def token_eos(self) -> int:
        return EOS

    def token_bos(self) -> int:
        return -1
