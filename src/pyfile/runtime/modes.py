"""Prompt mode and terminal chat."""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional

from . import backends
from .engine import ModelSource, create_llama
from .errors import InputError, UsageError
from .manifest import Manifest

MAX_PROMPT_FILE = 64 << 20


class Loader:
    """Selects the backend once, then creates as many ``Llama`` instances as asked for.

    Every instance maps the same weights from the pyfile, so on the CPU extra instances
    (server slots) share the weights' memory and cost only their context.
    """

    def __init__(self, source: ModelSource, opts: Any,
                 manifest: Optional[Manifest] = None,
                 archive_path: Optional[str] = None) -> None:
        summary = (manifest.models if manifest else {}).get(source.name) or {}
        self.source = source
        self.selection = backends.select(source, opts.gpu, opts.verbose, manifest=manifest,
                                         archive_path=archive_path,
                                         n_gpu_layers=opts.n_gpu_layers,
                                         n_layers=summary.get("block_count"))
        if opts.rpc:
            from . import rpc
            from .engine import import_llama_cpp
            names = rpc.add_workers(import_llama_cpp(), rpc.parse_endpoints(opts.rpc))
            self.selection.n_gpu_layers = (999 if opts.n_gpu_layers is None
                                           else opts.n_gpu_layers)
            self.selection.detail += f"; layers split across RPC workers {', '.join(names)}"
        backends.report(self.selection)
        self.kwargs: Dict[str, Any] = dict(
            # llama.cpp pads the context to 256 tokens while llama-cpp-python sizes its token
            # buffer by the requested n_ctx; asking for less than 256 makes them disagree.
            n_ctx=max(opts.ctx_size, 256) if opts.ctx_size else 0, n_batch=opts.batch_size,
            n_gpu_layers=self.selection.n_gpu_layers,
            use_mmap=not opts.no_mmap and source.offset % 32 == 0, verbose=opts.verbose,
            seed=opts.seed if opts.seed >= 0 else 0xFFFFFFFF,
            use_extra_bufts=self.selection.extra_bufts,
        )
        if opts.threads:
            self.kwargs["n_threads"] = self.kwargs["n_threads_batch"] = opts.threads
        if opts.tensor_split:
            self.kwargs["tensor_split"] = opts.tensor_split

    def new(self, **overrides: Any) -> Any:
        return create_llama(self.source, **{**self.kwargs, **overrides})

    def guard(self) -> Any:
        from .guard import FileGuard
        return FileGuard(self.source.path, self.source.offset)


def load(source: ModelSource, opts: Any, manifest: Optional[Manifest] = None,
         archive_path: Optional[str] = None) -> Any:
    """Select the backend, then create the ``Llama`` with the weights mapped in place."""
    loader = Loader(source, opts, manifest, archive_path)
    llm = loader.new()
    llm.pyfile_guard = loader.guard()
    return llm


def _grammar(opts: Any) -> Any:
    from llama_cpp import LlamaGrammar
    text: Optional[str] = opts.grammar
    if opts.grammar_file:
        text = _read_text(opts.grammar_file, "--grammar-file")
    try:
        if opts.json_schema:
            return LlamaGrammar.from_json_schema(opts.json_schema, verbose=opts.verbose)
        if text:
            return LlamaGrammar.from_string(text, verbose=opts.verbose)
    except Exception as e:  # llama-cpp-python raises ValueError/RuntimeError variants
        raise UsageError(f"bad grammar or JSON schema: {e}") from None
    return None


def _read_text(path: str, what: str) -> str:
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
        _read_text(opts.file, "-f") if opts.file else "")
    out = sys.stdout
    if opts.echo:
        out.write(prompt)
        out.flush()
    if opts.n_predict == 0:
        return 0
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
        text = opts.prompt if opts.prompt is not None else _read_text(opts.file, "-f")
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
    from .cpu import cache_dir
    d = cache_dir()
    try:
        os.makedirs(d, exist_ok=True)
    except OSError:
        return None
    return os.path.join(d, "chat_history")
