"""A generation task and its results: the typed contract between the APIs and the runner.

Every API route turns its body into one :class:`Task` (what the model is given, how to
sample, when to stop, what shape the output must have, what to report); the runner
(:mod:`.runner`) prepares and executes it; the route renders the :class:`Step` and
:class:`Result` values it gets back in its own wire format. Adding an API is one formatter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

#: The sampler's knobs that request bodies carry under the same name in every API that has
#: them (OpenAI, llama-server, Anthropic): the one parameter table. Fields with API-specific
#: names (the length limit, stop strings, log-probabilities) are set by each API itself.
KNOBS: Tuple[str, ...] = (
    "temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_penalty", "repeat_last_n",
    "presence_penalty", "frequency_penalty", "seed", "ignore_eos",
)

#: A prompt as llama-server takes it: text, token ids, or a list mixing both.
Prompt = Union[str, List[Union[int, str]]]


def knobs(body: Any, **overrides: Any) -> Dict[str, Any]:
    """The :data:`KNOBS` a request body sets (absent or null ones keep the sampler's default),
    then ``overrides`` (an API's own defaults, e.g. Anthropic has no min-p). Only fields the
    body's schema declares (and so checked) count: an undeclared extra never reaches the
    sampler raw."""
    declared = getattr(type(body), "model_fields", None)
    out = {k: getattr(body, k) for k in KNOBS
           if (declared is None or k in declared) and getattr(body, k, None) is not None}
    out.update(overrides)
    return out


@dataclass
class Task:
    """One generation request, whatever API it came through.

    The model is given exactly one of ``messages`` (rendered by the model's chat template,
    with ``tools``), ``prompt`` (text or token ids) or ``tokens`` (already laid out, as for
    fill-in-the-middle). The output's structure comes from the first of ``forced_tool``
    (its parameters' schema), ``response_format``, ``grammar`` (GBNF) and ``json_schema``.
    """

    messages: Optional[List[Dict[str, Any]]] = None
    prompt: Optional[Prompt] = None
    tokens: Optional[List[int]] = None
    tools: Optional[List[Dict[str, Any]]] = None
    tool_choice: Any = None
    forced_tool: Optional[Dict[str, Any]] = None
    add_special: bool = True
    sampling: Dict[str, Any] = field(default_factory=dict)   # from :func:`knobs`
    max_tokens: Optional[int] = None    # None or -1: until the model stops or the slot is full
    stop: List[str] = field(default_factory=list)
    logit_bias: Any = None              # OpenAI's {"id": bias} or llama-server's [[id|text, bias]]
    grammar: Optional[str] = None
    json_schema: Optional[Dict[str, Any]] = None
    response_format: Optional[Dict[str, Any]] = None
    n_probs: int = 0                    # top alternatives reported per token (0: none)
    post_sampling_probs: bool = False   # ...as probabilities after the sampler chain
    return_progress: bool = False       # prompt-progress events while the prompt is read
    add_generation_prompt: bool = True  # chat: end with the assistant's turn opening
    continue_final_message: Optional[bool] = None  # chat: continue the last (assistant)
                                        # message; None: when the chat ends with one
    images: List[Tuple[str, str]] = field(default_factory=list)  # image inputs: (source, body
                                        # field), one per image marker of the prompt, in order
    param: str = "prompt"               # the body field that holds the prompt, for errors


@dataclass
class TokenProb:
    """One generated token's log-probability and the top alternatives at its position."""

    id: int
    piece: str
    logprob: float
    top: List[Tuple[int, str, float]]   # (token id, piece, log-probability), best first
    post_sampling: bool = False         # logprob and top hold probabilities after sampling

    @property
    def bytes(self) -> List[int]:
        return list(self.piece.encode("utf-8"))

    def as_llama_server(self) -> Dict[str, Any]:
        """llama-server's form of one token's probabilities, which its native
        ``completion_probabilities`` and its OpenAI chat ``logprobs.content`` share:
        ``prob``/``top_probs`` after the sampler chain (``post_sampling_probs``), else
        ``logprob``/``top_logprobs``."""
        value, top = ("prob", "top_probs") if self.post_sampling else ("logprob", "top_logprobs")
        return {"id": self.id, "token": self.piece, "bytes": self.bytes, value: self.logprob,
                top: [{"id": t, "token": piece, "bytes": list(piece.encode("utf-8")), value: v}
                      for t, piece, v in self.top]}


@dataclass
class Step:
    """A generated token: its text (may be empty while a stop string or a UTF-8 character is
    incomplete), its id, and its log-probabilities when the task asked for them."""

    text: str
    token: int
    prob: Optional[TokenProb] = None


@dataclass
class Progress:
    """Where the reading of the prompt stands (llama-server's ``prompt_progress``): ``total``
    prompt tokens, ``cache`` of them reused, ``processed`` so far (cached ones included),
    ``time_ms`` since the request took its slot."""

    total: int
    cache: int
    processed: int
    time_ms: float

    def to_json(self) -> Dict[str, Any]:
        return {"total": self.total, "cache": self.cache, "processed": self.processed,
                "time_ms": self.time_ms}


@dataclass
class Result:
    """How a task ended. Streamed, ``text`` is what was held back until the end (a possible
    stop string); collected, it is the whole text, with every token and probability."""

    finish_reason: str                  # "stop" (end of generation or a stop string), "length"
    text: str
    n_prompt: int
    n_cached: int
    n_decoded: int
    timings: Dict[str, float]
    slot: int
    stop_word: str = ""
    tokens: List[int] = field(default_factory=list)
    probs: List[TokenProb] = field(default_factory=list)

    def usage(self) -> Dict[str, Any]:
        """OpenAI's usage object (the completions, chat and llama-server shapes share it)."""
        return {"prompt_tokens": self.n_prompt, "completion_tokens": self.n_decoded,
                "total_tokens": self.n_prompt + self.n_decoded,
                "prompt_tokens_details": {"cached_tokens": self.n_cached}}
