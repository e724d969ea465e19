"""llama-server's prompt forms: one prompt or several, each text, token ids, a mix of both,
or a JSON object ``{"prompt_string": ...}``; and their token ids.

The rules are llama-server's (``tokenize_input_prompts``): an array that holds a number
directly is ONE prompt (token ids, or ids mixed with text); any other array is a list of
prompts. In a mixed prompt, text is tokenized piece by piece and the BOS token is added only
when the first element is text. ``multimodal_data`` needs a projector, which our engine cannot
run: a non-empty one is a 400.
"""

from __future__ import annotations

from typing import Any, Callable, List

from .errors import APIError

#: ``(text, add_special) -> token ids``
Tokenize = Callable[[str, bool], List[int]]


def split(prompt: Any, param: str = "prompt") -> List[Any]:
    """The prompts a body's ``prompt`` (or ``content``) holds, in order."""
    if isinstance(prompt, list) and not any(_is_id(x) for x in prompt):
        if not prompt:
            raise APIError(400, f'"{param}" must not be empty', param=param)
        return list(prompt)
    return [prompt]


def tokens(prompt: Any, tokenize: Tokenize, n_vocab: int, add_special: bool = True,
           param: str = "prompt") -> List[int]:
    """The token ids of one prompt (text, ids, a mix, or ``{"prompt_string": ...}``)."""
    if isinstance(prompt, dict):
        if prompt.get("multimodal_data"):
            raise APIError(400, "multimodal_data needs a multimodal projector, which this "
                                "server does not have", param=param)
        if "prompt_string" not in prompt:
            raise APIError(400, "a JSON-object prompt needs \"prompt_string\"", param=param)
        prompt = prompt["prompt_string"]
    if isinstance(prompt, str):
        return tokenize(prompt, add_special)
    if not isinstance(prompt, list):
        raise APIError(400, f"{param} must be text, token ids, a list mixing both, or "
                            f"{{\"prompt_string\": ...}}", param=param)
    out: List[int] = []
    for i, part in enumerate(prompt):
        if _is_id(part):
            if not 0 <= part < n_vocab:
                raise APIError(400, f"token ids must be in 0..{n_vocab - 1}", param=param)
            out.append(part)
        elif isinstance(part, str):
            out.extend(tokenize(part, add_special and i == 0))
        else:
            raise APIError(400, f"{param} items must be token ids or text", param=param)
    return out


def _is_id(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
