"""Prompt mode (``-p``/``-f``): stream the completion of one prompt to stdout; and the
sampling options and prompt files both terminal modes share."""

from __future__ import annotations

import sys
from typing import Any, Dict, Optional

from ..errors import InputError, UsageError

MAX_PROMPT_FILE = 64 << 20


def _grammar(opts: Any) -> Any:
    from llama_cpp import LlamaGrammar
    text: Optional[str] = opts.grammar
    if opts.grammar_file:
        text = read_text(opts.grammar_file, "--grammar-file")
    try:
        if opts.json_schema:
            return LlamaGrammar.from_json_schema(opts.json_schema, verbose=opts.verbose)
        if text:
            return LlamaGrammar.from_string(text, verbose=opts.verbose)
    except Exception as e:  # llama-cpp-python raises ValueError/RuntimeError variants
        raise UsageError(f"bad grammar or JSON schema: {e}") from None
    return None


def read_text(path: str, what: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read(MAX_PROMPT_FILE)
        with open(path, encoding="utf-8") as f:
            return f.read(MAX_PROMPT_FILE)
    except OSError as e:
        raise InputError(f"{what} {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise InputError(f"{what} {path}: not UTF-8 text") from None


def sampling(opts: Any) -> Dict[str, Any]:
    return dict(temperature=opts.temp, top_k=opts.top_k, top_p=opts.top_p, min_p=opts.min_p,
                repeat_penalty=opts.repeat_penalty, stop=opts.stop or None,
                grammar=_grammar(opts))


def complete(llm: Any, opts: Any) -> int:
    """Stream the completion of the prompt to stdout (only the generated text)."""
    prompt = opts.prompt if opts.prompt is not None else (
        read_text(opts.file, "-f") if opts.file else "")
    out = sys.stdout
    if opts.echo:
        out.write(prompt)
        out.flush()
    if opts.n_predict == 0:
        return 0
    if getattr(opts, "image", None):
        return _complete_with_images(llm, opts, prompt, out)
    n_tokens = len(llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))
    if n_tokens >= llm.n_ctx():
        raise UsageError(f"the prompt is {n_tokens} tokens, the context holds {llm.n_ctx()}; "
                         f"raise -c/--ctx-size")
    stream = llm.create_completion(prompt, max_tokens=opts.n_predict if opts.n_predict > 0
                                   else -1, stream=True, **sampling(opts))
    ended_with_newline = True
    for chunk in stream:
        text = chunk["choices"][0]["text"]
        if text:
            out.write(text)
            out.flush()
            ended_with_newline = text.endswith("\n")
    if out.isatty() and not ended_with_newline:
        out.write("\n")
    return 0


def _complete_with_images(llm: Any, opts: Any, prompt: str, out: Any) -> int:
    """``--image FILE -p TEXT``: one user message (the text, then the images) through the
    chat template, as llama.cpp's mtmd-cli does."""
    from ..server.images import from_file
    from .media import stream_answer, user_content
    pictures = [from_file(p) for p in opts.image]  # every image checked before the model
    messages = []
    if opts.system:
        messages.append({"role": "system", "content": opts.system})
    messages.append({"role": "user", "content": user_content(prompt, len(pictures))})
    ended_with_newline = True
    for text in stream_answer(llm, opts, messages, pictures,
                              opts.n_predict if opts.n_predict > 0 else None, sampling(opts)):
        out.write(text)
        out.flush()
        ended_with_newline = text.endswith("\n")
    if out.isatty() and not ended_with_newline:
        out.write("\n")
    return 0
