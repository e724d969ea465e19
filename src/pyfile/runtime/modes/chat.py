"""The terminal chat (``--chat``): the model's own template, line editing and history;
``/image PATH`` attaches a picture to the next message (a model with a projector)."""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional

from ..errors import InputError
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
    pictures: List[Any] = []  # every image of the conversation, in order
    pending = _pictures(getattr(opts, "image", None) or [])  # for the next message
    if opts.prompt is not None or opts.file:  # one question, answered with the chat template
        text = opts.prompt if opts.prompt is not None else read_text(opts.file, "-f")
        if pending:
            from .media import user_content
            messages.append({"role": "user", "content": user_content(text, len(pending))})
            _answer(llm, messages, max_tokens, params, opts, pending)
            return 0
        messages.append({"role": "user", "content": text})
        _answer(llm, messages, max_tokens, params)
        return 0
    sys.stderr.write("pyfile: chat: type a message; /image PATH attaches a picture; /clear "
                     "starts over; Ctrl-C stops an answer; Ctrl-D quits\n")
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
                pictures, pending = [], []
                continue
            if text == "/image" or text.startswith("/image "):
                pending += _pictures([text[len("/image"):].strip()], quiet=False)
                continue
            guard = getattr(llm, "pyfile_guard", None)
            if guard is not None:
                guard.check()
            if pending or pictures:  # the conversation has images: through the projector
                from .media import user_content
                messages.append({"role": "user", "content": user_content(line, len(pending))})
                try:
                    reply = _answer(llm, messages, max_tokens, params, opts,
                                    pictures + pending)
                except InputError as e:  # no projector, or an image the model refused
                    sys.stderr.write(f"pyfile: {e}\n")
                    messages.pop()
                    pending = []
                    continue
                pictures, pending = pictures + pending, []
            else:
                messages.append({"role": "user", "content": line})
                reply = _answer(llm, messages, max_tokens, params)
            messages.append({"role": "assistant", "content": reply})
    finally:
        if readline is not None and history:
            try:
                readline.set_history_length(1000)
                readline.write_history_file(history)
            except OSError:
                pass


def _pictures(paths: List[str], quiet: bool = True) -> List[Any]:
    """Decode image files for the next message; in the interactive chat (``quiet`` false)
    a bad one is one line on stderr and the chat goes on."""
    from ..server.images import ImageError, from_file
    out = []
    for path in paths:
        try:
            if not path:
                raise ImageError("/image needs a file: /image PATH")
            out.append(from_file(os.path.expanduser(path)))
        except ImageError as e:
            if quiet:
                raise
            sys.stderr.write(f"pyfile: {e}\n")
            continue
        if not quiet:
            sys.stderr.write(f"pyfile: image {path} attached ({out[-1].width}x"
                             f"{out[-1].height}); it goes with your next message\n")
    return out


def _answer(llm: Any, messages: List[Dict[str, str]], max_tokens: Optional[int],
            params: Dict[str, Any], opts: Any = None,
            pictures: Optional[List[Any]] = None) -> str:
    """Stream one assistant reply to stdout; Ctrl-C stops it and keeps what was said.
    With ``pictures`` the conversation goes through the model's projector."""
    answer: List[str] = []
    try:  # Ctrl-C while the prompt is rendered or read stops the answer too
        if pictures is not None:
            from .media import stream_answer
            pieces = stream_answer(llm, opts, messages, pictures, max_tokens, params)
        else:
            pieces = (chunk["choices"][0].get("delta", {}).get("content")
                      for chunk in llm.create_chat_completion(messages, stream=True,
                                                              max_tokens=max_tokens, **params))
        for delta in pieces:
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
