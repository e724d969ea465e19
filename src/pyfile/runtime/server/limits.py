"""The checks of a request that need the model: token ids inside the vocabulary, a length
limit inside the context. Each raises :class:`~.errors.APIError` (400, naming the field)
while the runner prepares the task, before it is queued, so a bad value is refused rather
than wrapped, dropped or found by the scheduler thread. (A grammar is compiled into the
request's sampler chain there too: :meth:`~.runner.Runner.prepare`.)

The checks that need only the body (types, ranges, shapes) are in :mod:`.schemas`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional

from .errors import APIError


def check_token_ids(ids: Iterable[Any], n_vocab: int, param: str = "prompt") -> None:
    """Every id is an integer in ``[0, n_vocab)``."""
    for i, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < n_vocab:
            raise APIError(400, f"Invalid '{param}': token id {t!r} at position {i} is not in "
                                f"this model's vocabulary (0..{n_vocab - 1})", param=param,
                           code="invalid_value")


def check_max_tokens(value: Optional[int], limit: int, param: str = "max_tokens") -> None:
    """A length limit (None or -1: none) a request can reach: at most ``limit`` tokens,
    the context one request may use (the server's ``-c``, shared by its slots)."""
    if value is None or value == -1:
        return
    if value > limit:
        raise APIError(400, f"Invalid '{param}': {value} is more tokens than a request may "
                            f"use on this server ({limit}; the server's -c/--ctx-size sets "
                            f"it)", param=param, code="invalid_value")


def logit_bias_ids(bias: Any, n_vocab: int, tokenize: Callable[[str], List[int]],
                   param: str = "logit_bias") -> Dict[int, float]:
    """OpenAI's ``{"token id": bias}`` or llama-server's ``[[token id or text, bias]]`` as
    ``{token id: bias}`` (``false`` bans: -inf). A text key means all its tokens
    (llama-server); an id outside the vocabulary is refused (llama-server drops it)."""
    out: Dict[int, float] = {}
    if not bias:
        return out
    pairs = bias.items() if isinstance(bias, dict) else [tuple(p) for p in bias]
    for key, value in pairs:
        val = float("-inf") if value is False else float(value)
        if isinstance(key, int) and not isinstance(key, bool):
            ids = [key]
        elif isinstance(key, str) and key.strip().lstrip("-").isdigit():
            ids = [int(key)]
        elif isinstance(key, str):
            ids = tokenize(key)
        else:
            raise APIError(400, f"Invalid key in '{param}': {key!r}", param=param,
                           code="invalid_value")
        for t in ids:
            if not 0 <= t < n_vocab:
                raise APIError(400, f"Invalid key in '{param}': {t}. Maximum value is "
                                    f"{n_vocab - 1}.", param=param, code="invalid_value")
            out[t] = val
    return out
