"""The terminal chat (``--chat``): the model's own template, line editing and history."""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional

from .prompt import read_text, sampling


def chat(llm: Any, opts: Any) -> int:
    """Multi-turn chat with the model's own template; Ctrl-C stops an answer, Ctrl-D quits."""
    try:
        import readline  # noqa: F401  (line editing and history for input())
        history = _history_file()
        if history:
            try:
                readline.read_history_file(history)
            except OSError:
                pass
    except ImportError:
        readline = None  # type: ignore[assignment]
        history = None
    messages: List[Dict[str, str]] = []
    if opts.system:
        messages.append({"role": "system", "content": opts.system})
    base = list(messages)
    params = sampling(opts)
    max_tokens = opts.n_predict if opts.n_predict > 0 else None
    if opts.prompt is not None or opts.file:  # one question, answered with the chat template
        text = opts.prompt if opts.prompt is not None else read_text(opts.file, "-f")
        messages.append({"role": "user", "content": text})
        _answer(llm, messages, max_tokens, params)
        return 0
    sys.stderr.write("pyfile: chat: type a message; /clear starts over; Ctrl-C stops an "
                     "answer; Ctrl-D quits\n")
    try:
        while True:
            try:
                line = input(">>> ")
            except EOFError:
                sys.stdout.write("\n")
                return 0
            except KeyboardInterrupt:
                sys.stdout.write("\n")
                continue
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit", "/bye"):
                return 0
            if text == "/clear":
                messages = list(base)
                continue
            guard = getattr(llm, "pyfile_guard", None)
            if guard is not None:
                guard.check()
            messages.append({"role": "user", "content": line})
            messages.append({"role": "assistant",
                             "content": _answer(llm, messages, max_tokens, params)})
    finally:
        if readline is not None and history:
            try:
                readline.set_history_length(1000)
                readline.write_history_file(history)
            except OSError:
                pass


def _answer(llm: Any, messages: List[Dict[str, str]], max_tokens: Optional[int],
            params: Dict[str, Any]) -> str:
    """Stream one assistant reply to stdout; Ctrl-C stops it and keeps what was said."""
    answer: List[str] = []
    try:
        for chunk in llm.create_chat_completion(messages, stream=True, max_tokens=max_tokens,
                                                **params):
            delta = chunk["choices"][0].get("delta", {}).get("content")
            if delta:
                answer.append(delta)
                sys.stdout.write(delta)
                sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stdout.write(" [stopped]")
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(answer)


def _history_file() -> Optional[str]:
    from ..container.paths import run_cache
    d = run_cache()
    try:
        os.makedirs(d, exist_ok=True)
    except OSError:
        return None
    return os.path.join(d, "chat_history")
