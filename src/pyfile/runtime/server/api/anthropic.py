"""Anthropic's Messages API: ``/v1/messages`` (plain and streaming) and
``/v1/messages/count_tokens``, so Anthropic's own clients work against the local model.

Messages are turned into the chat messages the model's template knows (text blocks joined,
``tool_use`` into ``tool_calls``, ``tool_result`` into ``tool`` messages, ``thinking`` into
``reasoning_content``, as llama-server does). A forced tool
(``tool_choice`` ``tool``, or ``any`` with one tool) constrains the output to its
``input_schema`` and answers a ``tool_use`` block.
"""

from __future__ import annotations

import contextvars

import json
import uuid
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple

from fastapi import APIRouter

from ..errors import APIError
from ..http import sse, sse_data
from ..runner import off_loop
from ..schemas import AnthropicCountRequest, AnthropicRequest
from ..state import ServerState
from ..task import Result, Task, knobs

_STOP = {"length": "max_tokens"}
#: The image blocks' sources of the request being turned into a task (see :func:`task_of`).
_IMAGES: "contextvars.ContextVar[Optional[List[Tuple[str, str]]]]" = contextvars.ContextVar(
    "anthropic_images", default=None)


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        kind = block.get("type")
        if kind == "text":
            parts.append(str(block.get("text", "")))
        elif kind == "tool_result":
            parts.append(_text(block.get("content", ""), where))
        elif kind == "image" and _IMAGES.get() is not None:  # its place; the source: task_of
            from ..media import anthropic_image, marker
            _IMAGES.get().append(anthropic_image(block, where))
            parts.append(marker())
        else:
            raise APIError(400, f"{where}: content blocks of type {kind!r} are not supported "
                                f"by this model", param=where)
    return "".join(parts)


def chat_messages(req: Any) -> List[Dict[str, Any]]:
    """Anthropic messages (and system) -> the OpenAI-style messages of the chat template."""
    out: List[Dict[str, Any]] = []
    if req.system:
        out.append({"role": "system", "content": _text(req.system, "system")})
    for i, m in enumerate(req.messages):
        role = m.get("role")
        if role not in ("user", "assistant"):
            raise APIError(400, f"messages.{i}.role must be 'user' or 'assistant'",
                           param=f"messages.{i}.role")
        content = m.get("content", "")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        text: List[str] = []
        calls: List[Dict[str, Any]] = []
        thoughts: List[str] = []
        for block in content:
            kind = block.get("type")
            if kind == "thinking":  # as llama-server: the template's reasoning_content
                thoughts.append(str(block.get("thinking", "")))
            elif kind == "redacted_thinking":  # encrypted by another provider: nothing to show
                continue
            elif kind == "tool_use":
                calls.append({"id": block.get("id", ""), "type": "function", "function": {
                    "name": block.get("name", ""),
                    "arguments": json.dumps(block.get("input", {}))}})
            elif kind == "tool_result":
                out.append({"role": "tool", "tool_call_id": block.get("tool_use_id", ""),
                            "content": _text(block.get("content", ""), f"messages.{i}")})
            else:
                text.append(_text([block], f"messages.{i}.content"))
        if text or calls or thoughts or not content:
            msg: Dict[str, Any] = {"role": role, "content": "".join(text)}
            if calls:
                msg["tool_calls"] = calls
            if thoughts:
                msg["reasoning_content"] = "".join(thoughts)
            out.append(msg)
    return out


def _tools(req: Any) -> Tuple[Optional[List[Dict[str, Any]]], Optional[Dict[str, Any]]]:
    """(OpenAI-style tools for the template, the forced tool's function or None)."""
    if not req.tools:
        return None, None
    tools = [{"type": "function", "function": {"name": t.get("name"),
                                               "description": t.get("description", ""),
                                               "parameters": t.get("input_schema") or {}}}
             for t in req.tools]
    choice = req.tool_choice or {"type": "auto"}
    kind = choice.get("type")
    if kind == "none":
        return None, None
    if kind == "tool":
        for t in tools:
            if t["function"]["name"] == choice.get("name"):
                return tools, t["function"]
        raise APIError(400, f"tool_choice names {choice.get('name')!r}, which is not in tools",
                       param="tool_choice")
    if kind == "any" and len(tools) == 1:
        return tools, tools[0]["function"]
    return tools, None


def task_of(req: Any) -> Task:
    """The task of a Messages request (or of its prompt part, for ``count_tokens``)."""
    tools, forced = _tools(req)
    fmt = (getattr(req, "output_config", None) or {}).get("format") or {}
    schema = fmt.get("schema") if fmt.get("type") == "json_schema" else None
    images: List[Tuple[str, str]] = []
    reset = _IMAGES.set(images)
    try:
        messages = chat_messages(req)
    finally:
        _IMAGES.reset(reset)
    return Task(messages=messages, images=images, tools=tools, forced_tool=forced,
                param="messages", sampling=knobs(req, min_p=0.0),
                max_tokens=getattr(req, "max_tokens", None),
                stop=list(getattr(req, "stop_sequences", None) or []),
                json_schema=schema if isinstance(schema, dict) else None)


def router(state: ServerState) -> APIRouter:
    r = APIRouter()

    @r.post("/v1/messages/count_tokens")
    async def count_tokens(req: AnthropicCountRequest) -> Dict[str, Any]:
        tokens, _, _ = await off_loop(state.runner.render, task_of(req))
        return {"input_tokens": len(tokens)}

    @r.post("/v1/messages")
    async def messages(req: AnthropicRequest) -> Any:
        task = task_of(req)
        forced = task.forced_tool
        run = await state.runner.start(task)
        mid, name = f"msg_{uuid.uuid4().hex[:24]}", req.model or state.model_id
        tool_id = f"toolu_{uuid.uuid4().hex[:24]}"

        def stop_of(done: Result) -> Tuple[str, Optional[str]]:
            word = done.stop_word
            if word and word in (req.stop_sequences or []):
                return "stop_sequence", word
            if forced and done.finish_reason == "stop":
                return "tool_use", None
            return _STOP.get(done.finish_reason, "end_turn"), None

        if not req.stream:
            done = await run.collect()
            reason, seq = stop_of(done)
            if forced:
                try:
                    args = json.loads(done.text)
                except ValueError:
                    args = {}
                    reason = "max_tokens" if done.finish_reason == "length" else reason
                content = [{"type": "tool_use", "id": tool_id, "name": forced["name"],
                            "input": args}]
            else:
                content = [{"type": "text", "text": done.text}]
            return {"id": mid, "type": "message", "role": "assistant", "model": name,
                    "content": content, "stop_reason": reason, "stop_sequence": seq,
                    "usage": {"input_tokens": done.n_prompt,
                              "output_tokens": done.n_decoded,
                              "cache_read_input_tokens": done.n_cached}}

        def event(kind: str, data: Dict[str, Any]) -> bytes:
            return f"event: {kind}\n".encode() + sse_data(dict(data, type=kind))

        async def events() -> AsyncIterator[bytes]:
            yield event("message_start", {"message": {
                "id": mid, "type": "message", "role": "assistant", "model": name,
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": len(run.prompt), "output_tokens": 0}}})
            block = ({"type": "tool_use", "id": tool_id, "name": forced["name"], "input": {}}
                     if forced else {"type": "text", "text": ""})
            yield event("content_block_start", {"index": 0, "content_block": block})
            yield event("ping", {})
            async for ev in run.events():
                if ev.text:
                    delta = ({"type": "input_json_delta", "partial_json": ev.text} if forced
                             else {"type": "text_delta", "text": ev.text})
                    yield event("content_block_delta", {"index": 0, "delta": delta})
                if isinstance(ev, Result):
                    reason, seq = stop_of(ev)
                    yield event("content_block_stop", {"index": 0})
                    yield event("message_delta", {
                        "delta": {"stop_reason": reason, "stop_sequence": seq},
                        "usage": {"output_tokens": ev.n_decoded}})
                    yield event("message_stop", {})

        await run.first()
        return sse(events(), run.cancel, flavor="anthropic")

    return r
