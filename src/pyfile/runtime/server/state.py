"""What every route shares: the model's tokenizer and template, the scheduler, the options,
the checks every request passes, and the runner that executes tasks (:mod:`.runner`).

A route handler only turns its body into a :class:`~.task.Task`, starts it with
``state.runner`` and renders the results; it never touches the model's context.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Union

from .errors import APIError
from .scheduler import Engine


class ServerState:
    """The model, the engine and the options, shared by all routes."""

    def __init__(self, llm: Any, engine: Engine, model_id: str, model_path: str, opts: Any,
                 backend_line: str, guard: Any = None, embedder: Any = None) -> None:
        from .chat import ChatTemplate
        self.llm = llm
        self.engine = engine
        self.model_id = model_id
        self.model_path = model_path
        self.opts = opts
        self.backend_line = backend_line
        self.guard = guard
        self.embedder = embedder
        self.template = ChatTemplate(llm, getattr(opts, "chat_template", None))
        self.n_vocab = llm.n_vocab()
        self.started = time.time()
        self.lock = threading.Lock()
        from .runner import Runner
        self.runner = Runner(self)

    # -- checks --------------------------------------------------------------------------------

    def check_file(self) -> None:
        """503 when the pyfile's bytes changed under the mapped weights."""
        if self.guard is not None:
            try:
                self.guard.check()
            except Exception as e:
                raise APIError(503, str(e), "server_error", "model_file_changed") from None

    def check_scheduler(self) -> None:
        """503 once the scheduler has failed for good (the server is stopping)."""
        if self.engine.failed is not None:
            raise APIError(503, f"the generation scheduler failed ({self.engine.failed}); "
                                f"the server is stopping", "server_error", "scheduler_failed")

    # -- tokens --------------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True
                 ) -> List[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)

    def prompt_tokens(self, prompt: Union[str, List[Any], Dict[str, Any]],
                      add_special: bool = True, param: str = "prompt") -> List[int]:
        """One prompt in any of llama-server's forms (text, token ids, a mix,
        ``{"prompt_string": ...}``: :mod:`.prompts`)."""
        from .prompts import tokens
        return tokens(prompt, lambda text, special: self.tokenize(text, special),
                      self.n_vocab, add_special, param)

    def piece(self, token: int) -> str:
        return self.llm._model.detokenize([token], special=True).decode("utf-8", "replace")

    def check_prompt(self, tokens: List[int], param: str = "messages") -> None:
        if not tokens:
            raise APIError(400, "the prompt must not be empty", param=param)
        n_ctx = self.engine.n_ctx_slot
        if len(tokens) >= n_ctx:  # llama-server's error, with OpenAI's code for its clients
            raise APIError(400, f"request ({len(tokens)} tokens) exceeds the available context "
                                f"size ({n_ctx} tokens), try increasing it (-c/--ctx-size, "
                                f"or fewer -np slots)", "exceed_context_size_error",
                           code="context_length_exceeded", param=param,
                           extra={"n_prompt_tokens": len(tokens), "n_ctx": n_ctx})
