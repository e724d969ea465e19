"""Chat templates, grammars for structured output, and tool calls.

The prompt of a chat request is rendered with the model's own Jinja2 template through
llama-cpp-python's ``Jinja2ChatFormatter`` (as ``Llama.create_chat_completion`` does);
``response_format``, ``json_schema`` and a forced tool become a GBNF grammar through
llama-cpp-python's ``json_schema_to_gbnf``.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

from .errors import APIError


class ChatTemplate:
    """The model's chat template; ``render`` gives (prompt, extra stop strings, add_bos)."""

    def __init__(self, llm: Any) -> None:
        from llama_cpp import llama_chat_format
        self.source: Optional[str] = llm.metadata.get("tokenizer.chat_template")
        self.formatter: Any = None
        self._fallback: Any = None
        if self.source:
            eos, bos = llm.token_eos(), llm.token_bos()
            self.formatter = llama_chat_format.Jinja2ChatFormatter(
                template=self.source,
                eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
                bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
                stop_token_ids=[eos])
        else:  # no template in the model: llama-cpp-python's own default (llama-2)
            self._fallback = llama_chat_format.format_llama2

    def render(self, messages: List[Dict[str, Any]],
               tools: Optional[List[Dict[str, Any]]] = None,
               tool_choice: Any = None) -> Tuple[str, List[str], bool]:
        try:
            if self.source:
                r = self.formatter(messages=messages, tools=tools, tool_choice=tool_choice)
            else:
                r = self._fallback(messages=messages)
        except Exception as e:  # jinja2 errors and the template's raise_exception
            raise APIError(400, f"the model's chat template cannot render these messages: "
                                f"{e}", param="messages") from None
        stop = r.stop if isinstance(r.stop, list) else ([r.stop] if r.stop else [])
        return r.prompt, [s for s in stop if s], not r.added_special


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
                                                    "tool_call_id")}


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
