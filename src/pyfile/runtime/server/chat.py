"""Chat templates, grammars for structured output, and tool calls.

The prompt of a chat request is rendered with the model's own Jinja2 template through
llama-cpp-python's ``Jinja2ChatFormatter`` (as ``Llama.create_chat_completion`` does), or with
the template ``--chat-template``/``--chat-template-file`` give (Jinja text, or one of
llama.cpp's built-in templates by name, rendered by ``llama_chat_apply_template``). A chat
ending with an assistant message continues that message (llama-server's prefill);
``response_format``, ``json_schema`` and a forced tool become a GBNF grammar through
llama-cpp-python's ``json_schema_to_gbnf``.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

from .errors import APIError


def builtin_templates() -> List[str]:
    """The names of llama.cpp's built-in chat templates (``--chat-template NAME``)."""
    import ctypes
    from llama_cpp import llama_cpp as L
    n = L.llama_chat_builtin_templates(None, 0)
    names = (ctypes.c_char_p * max(n, 1))()
    n = L.llama_chat_builtin_templates(names, n)
    return sorted(names[i].decode() for i in range(n))


def is_jinja(text: str) -> bool:
    """``--chat-template`` is Jinja text when it has a Jinja tag, else a built-in's name."""
    return "{{" in text or "{%" in text


class ChatTemplate:
    """The chat template; ``render`` gives (prompt, extra stop strings, add_bos).

    ``override`` (``--chat-template``): Jinja text, or the name of one of llama.cpp's
    built-in templates; an unknown name raises :class:`UsageError` listing them.
    """

    def __init__(self, llm: Any, override: Optional[str] = None) -> None:
        from llama_cpp import llama_chat_format
        self.source: Optional[str] = llm.metadata.get("tokenizer.chat_template")
        self.builtin: Optional[str] = None
        self.formatter: Any = None
        self._fallback: Any = None
        self._no_gen: Any = None  # the formatter without the generation prompt (prefill)
        if override and not is_jinja(override):
            names = builtin_templates()
            if override not in names:
                from ..errors import UsageError
                raise UsageError(f"--chat-template {override!r}: neither Jinja text nor one "
                                 f"of llama.cpp's built-in templates ({', '.join(names)})")
            self.builtin = self.source = override
            return
        if override:
            self.source = override
        if self.source:
            eos, bos = llm.token_eos(), llm.token_bos()
            kw = dict(template=self.source,
                      eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
                      bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
                      stop_token_ids=[eos])
            try:
                self.formatter = llama_chat_format.Jinja2ChatFormatter(**kw)
                self._no_gen = llama_chat_format.Jinja2ChatFormatter(
                    add_generation_prompt=False, **kw)
            except Exception as e:  # a template that does not even parse
                from ..errors import UsageError
                raise UsageError(f"the chat template does not parse as Jinja: {e}") from None
        else:  # no template in the model: llama-cpp-python's own default (llama-2)
            self._fallback = llama_chat_format.format_llama2

    def render(self, messages: List[Dict[str, Any]],
               tools: Optional[List[Dict[str, Any]]] = None,
               tool_choice: Any = None, add_generation_prompt: bool = True,
               continue_final_message: Optional[bool] = None) -> Tuple[str, List[str], bool]:
        """The prompt for ``messages``. As llama-server: a chat ending with an assistant
        message continues it (unless ``continue_final_message`` is false), and asking for both
        a continuation and a generation prompt is a 400."""
        last_assistant = bool(messages) and messages[-1].get("role") == "assistant"
        # Prefilled by default when it has text to continue (an empty one: a new turn).
        cont = (last_assistant and bool(_text(messages[-1].get("content")))
                and not messages[-1].get("tool_calls")) if continue_final_message is None \
            else bool(continue_final_message)
        if continue_final_message is None and cont:
            add_generation_prompt = False
        if cont and add_generation_prompt:
            raise APIError(400, "Cannot set both add_generation_prompt and "
                                "continue_final_message to true.",
                           param="continue_final_message")
        if cont and not last_assistant:
            raise APIError(400, "continue_final_message needs the last message to be the "
                                "assistant's", param="continue_final_message")
        if cont and len(messages) >= 2 and messages[-2].get("role") == "assistant":
            raise APIError(400, "Cannot have 2 or more assistant messages at the end of the "
                                "list.", param="messages")
        if cont and messages[-1].get("tool_calls"):
            raise APIError(400, "Cannot continue an assistant message that contains tool "
                                "calls.", param="messages")
        try:
            if self.builtin:
                return self._builtin(messages, add_generation_prompt, cont), [], True
            if self.source:
                f = self.formatter if add_generation_prompt else self._no_gen
                r = f(messages=messages, tools=tools, tool_choice=tool_choice)
            else:
                r = self._fallback(messages=messages)
        except APIError:
            raise
        except Exception as e:  # jinja2 errors and the template's raise_exception
            raise APIError(400, f"the model's chat template cannot render these messages: "
                                f"{e}", param="messages") from None
        stop = r.stop if isinstance(r.stop, list) else ([r.stop] if r.stop else [])
        prompt = _cut_after(r.prompt, messages[-1]) if cont and self.source else r.prompt
        return prompt, [s for s in stop if s], not r.added_special

    def _builtin(self, messages: List[Dict[str, Any]], add_ass: bool, cont: bool) -> str:
        import ctypes
        from llama_cpp import llama_cpp as L
        keep = [(str(m.get("role", "")).encode(), _text(m.get("content")).encode())
                for m in messages]
        chat = (L.llama_chat_message * max(len(keep), 1))()
        for i, (role, content) in enumerate(keep):
            chat[i].role, chat[i].content = role, content
        size = 2 * sum(len(r) + len(c) for r, c in keep) + 256
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = L.llama_chat_apply_template(self.builtin.encode(), chat, len(keep), add_ass,
                                            buf, size)
            if n < 0:
                raise APIError(400, f"the built-in template {self.builtin!r} cannot render "
                                    f"these messages", param="messages")
            if n <= size:
                text = buf.raw[:n].decode("utf-8", "replace")
                return _cut_after(text, messages[-1]) if cont else text
            size = n
        raise APIError(500, "the chat template's output kept growing", "server_error")


def _text(content: Any) -> str:
    return content if isinstance(content, str) else "" if content is None else str(content)


def _cut_after(prompt: str, last: Dict[str, Any]) -> str:
    """The prompt cut right after the last message's text: what follows it is the template's
    end-of-turn, which a continued (prefilled) assistant message must not have."""
    text = _text(last.get("content"))
    at = prompt.rfind(text) if text else -1
    return prompt[:at + len(text)] if at >= 0 else prompt


def text_message(msg: Any) -> Dict[str, Any]:
    """An OpenAI chat message as the template wants it: text content, known keys only."""
    out = msg.model_dump(exclude_none=True) if hasattr(msg, "model_dump") else dict(msg)
    if out.get("role") == "developer":
        out["role"] = "system"
    out.setdefault("content", "")  # chat templates expect the key, even when it is empty
    content = out.get("content")
    if isinstance(content, list):
        parts = []
        for part in content:
            if part.get("type") not in ("text", "input_text", "output_text"):
                raise APIError(400, f"content parts of type {part.get('type')!r} are not "
                                    f"supported by this model", param="messages")
            parts.append(str(part.get("text", "")))
        out["content"] = "".join(parts)
    elif content is None:
        out["content"] = ""
    return {k: v for k, v in out.items() if k in ("role", "content", "name", "tool_calls",
                                                    "tool_call_id", "reasoning_content")}


def schema_grammar(schema: Dict[str, Any]) -> str:
    """GBNF text for a JSON schema (llama-cpp-python's converter)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as e:
        raise APIError(400, f"cannot use this JSON schema: {e}", param="json_schema") from None


def json_grammar() -> str:
    from llama_cpp.llama_grammar import JSON_GBNF
    return JSON_GBNF


def response_format_grammar(rf: Optional[Dict[str, Any]]) -> Optional[str]:
    """The grammar an OpenAI ``response_format`` asks for (None: free text)."""
    if not rf:
        return None
    kind = rf.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return schema_grammar(rf["schema"]) if isinstance(rf.get("schema"), dict) \
            else json_grammar()
    if kind == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema", rf.get("schema"))
        if not isinstance(schema, dict):
            raise APIError(400, "response_format json_schema needs json_schema.schema",
                           param="response_format")
        return schema_grammar(schema)
    raise APIError(400, f"unsupported response_format type {kind!r}", param="response_format")


def forced_tool(tools: Optional[List[Dict[str, Any]]], tool_choice: Any) -> Optional[Dict]:
    """The tool that ``tool_choice`` names (its arguments are then grammar-constrained)."""
    if not tools or not isinstance(tool_choice, dict):
        return None
    name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
    for t in tools:
        fn = t.get("function") or {}
        if fn.get("name") == name:
            return fn
    raise APIError(400, f"tool_choice names {name!r}, which is not in tools", param="tool_choice")


def tool_grammar(fn: Dict[str, Any]) -> str:
    params = fn.get("parameters")
    return schema_grammar(params) if isinstance(params, dict) else json_grammar()
