"""OpenAI's API: chat completions, completions, models and the Responses API.

Each route is also served without the ``/v1`` prefix, as llama-server does.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, AsyncIterator, Dict, List, Optional

from fastapi import APIRouter

from ..chat import forced_tool, response_format_grammar, text_message, tool_grammar
from ..errors import APIError
from ..http import sse, sse_data
from ..schemas import ChatRequest, CompletionRequest, ResponsesRequest
from ..state import ServerState


def _n_probs(req: Any, chat: bool) -> int:
    if req.n_probs:
        return req.n_probs
    if chat:
        return (req.top_logprobs or 1) if req.logprobs else 0
    return int(req.logprobs) if req.logprobs not in (None, False) else 0


def _usage(done: Dict[str, Any]) -> Dict[str, Any]:
    return {"prompt_tokens": done["n_prompt"], "completion_tokens": done["n_decoded"],
            "total_tokens": done["n_prompt"] + done["n_decoded"],
            "prompt_tokens_details": {"cached_tokens": done["n_cached"]}}


def chat_logprobs(state: ServerState, tokens: List[int], lps: List[Any]) -> Dict[str, Any]:
    """OpenAI's chat ``logprobs.content`` list."""
    content = []
    for tok, lp in zip(tokens, lps):
        if lp is None:
            continue
        piece = state.piece(tok)
        content.append({"token": piece, "logprob": lp["logprob"],
                        "bytes": list(piece.encode("utf-8")),
                        "top_logprobs": [{"token": state.piece(t), "logprob": v,
                                          "bytes": list(state.piece(t).encode("utf-8"))}
                                         for t, v in lp["top"]]})
    return {"content": content}


def completion_logprobs(state: ServerState, tokens: List[int], lps: List[Any]
                        ) -> Dict[str, Any]:
    """The legacy completions ``logprobs`` object."""
    out: Dict[str, List[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                                 "text_offset": []}
    offset = 0
    for tok, lp in zip(tokens, lps):
        if lp is None:
            continue
        piece = state.piece(tok)
        out["tokens"].append(piece)
        out["token_logprobs"].append(lp["logprob"])
        out["top_logprobs"].append({state.piece(t): v for t, v in lp["top"]})
        out["text_offset"].append(offset)
        offset += len(piece)
    return out


def chat_prompt(state: ServerState, req: ChatRequest) -> tuple:
    """(prompt tokens, extra stop strings, forced tool) for a chat request."""
    messages = [text_message(m) for m in req.messages]
    text, stop, add_bos = state.template.render(messages, req.tools, req.tool_choice)
    tokens = state.tokenize(text, add_special=add_bos)
    state.check_prompt(tokens)
    return tokens, stop, forced_tool(req.tools, req.tool_choice)


def router(state: ServerState) -> APIRouter:
    r = APIRouter()

    @r.get("/v1/models")
    @r.get("/models")
    async def models() -> Dict[str, Any]:
        return {"object": "list", "data": [{
            "id": state.model_id, "object": "model", "created": int(state.started),
            "owned_by": "pyfile", "meta": {"n_ctx": state.engine.n_ctx,
                                           "n_vocab": state.n_vocab}}]}

    @r.post("/v1/chat/completions")
    @r.post("/chat/completions")
    async def chat(req: ChatRequest) -> Any:
        tokens, stop, tool = chat_prompt(state, req)
        grammar = tool_grammar(tool) if tool else response_format_grammar(req.response_format)
        n_probs = _n_probs(req, chat=True)
        params = state.params(req, req.max_completion_tokens or req.max_tokens, grammar,
                              stop, n_probs)
        name = req.model or state.model_id
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        gen = state.start(tokens, params)
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        if not req.stream:
            done = await gen.collect()
            message: Dict[str, Any] = {"role": "assistant", "content": done["text"]}
            finish = done["finish_reason"]
            if tool:
                message = {"role": "assistant", "content": None, "tool_calls": [{
                    "id": call_id, "type": "function",
                    "function": {"name": tool["name"], "arguments": done["text"]}}]}
                finish = "tool_calls" if finish == "stop" else finish
            return {"id": cid, "object": "chat.completion", "created": created, "model": name,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish,
                                 "logprobs": chat_logprobs(state, done["tokens"],
                                                           done["logprobs"])
                                 if n_probs else None}],
                    "usage": _usage(done), "timings": done["timings"]}

        include_usage = bool((req.stream_options or {}).get("include_usage"))

        def chunk(delta: Dict[str, Any], finish: Optional[str] = None,
                  logprobs: Any = None) -> Dict[str, Any]:
            return {"id": cid, "object": "chat.completion.chunk", "created": created,
                    "model": name, "choices": [{"index": 0, "delta": delta,
                                                "logprobs": logprobs, "finish_reason": finish}]}

        def tool_delta(text: str, first: bool) -> Dict[str, Any]:
            fn: Dict[str, Any] = {"arguments": text}
            call: Dict[str, Any] = {"index": 0, "function": fn}
            if first:
                fn["name"] = tool["name"]  # type: ignore[index]
                call.update(id=call_id, type="function")
            return {"tool_calls": [call]}

        async def events() -> AsyncIterator[bytes]:
            yield sse_data(chunk({"role": "assistant", "content": None if tool else ""}))
            first = True
            async for ev in gen.events():
                text = ev["text"]
                if ev["type"] == "token":
                    lp = chat_logprobs(state, [ev["token"]], [ev["logprobs"]]) \
                        if n_probs else None
                    if text or lp:
                        yield sse_data(chunk(tool_delta(text, first) if tool
                                             else {"content": text}, logprobs=lp))
                        first = False
                    continue
                if text:
                    yield sse_data(chunk(tool_delta(text, first) if tool else {"content": text}))
                finish = ev["finish_reason"]
                if tool and finish == "stop":
                    finish = "tool_calls"
                last = chunk({}, finish)
                last["timings"] = ev["timings"]
                yield sse_data(last)
                if include_usage:
                    yield sse_data({"id": cid, "object": "chat.completion.chunk",
                                    "created": created, "model": name, "choices": [],
                                    "usage": _usage(ev)})
            yield b"data: [DONE]\n\n"

        await gen.first()
        return sse(events(), gen.cancel)

    @r.post("/v1/completions")
    @r.post("/completions")
    async def completions(req: CompletionRequest) -> Any:
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise APIError(400, "send one prompt per request", param="prompt")
            prompt = prompt[0]
        if not prompt:
            raise APIError(400, "prompt must not be empty", param="prompt")
        tokens = state.prompt_tokens(prompt)
        state.check_prompt(tokens, "prompt")
        n_probs = _n_probs(req, chat=False)
        max_tokens = req.max_tokens if req.max_tokens not in (None, 0) else -1
        params = state.params(req, max_tokens, None, None, n_probs)
        name = req.model or state.model_id
        cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        echo = (prompt if isinstance(prompt, str) else
                state.llm.detokenize(tokens).decode("utf-8", "replace")) if req.echo else ""
        gen = state.start(tokens, params)

        def body(text: str, finish: Optional[str], logprobs: Any = None) -> Dict[str, Any]:
            return {"id": cid, "object": "text_completion", "created": created, "model": name,
                    "choices": [{"index": 0, "text": text, "logprobs": logprobs,
                                 "finish_reason": finish}]}

        if not req.stream:
            done = await gen.collect()
            out = body(echo + done["text"], done["finish_reason"],
                       completion_logprobs(state, done["tokens"], done["logprobs"])
                       if n_probs else None)
            out.update(usage=_usage(done), timings=done["timings"])
            return out

        async def events() -> AsyncIterator[bytes]:
            if echo:
                yield sse_data(body(echo, None))
            async for ev in gen.events():
                if ev["type"] == "token":
                    if ev["text"] or n_probs:
                        lp = completion_logprobs(state, [ev["token"]], [ev["logprobs"]]) \
                            if n_probs else None
                        yield sse_data(body(ev["text"], None, lp))
                    continue
                last = body(ev["text"], ev["finish_reason"])
                last.update(usage=_usage(ev), timings=ev["timings"])
                yield sse_data(last)
            yield b"data: [DONE]\n\n"

        await gen.first()
        return sse(events(), gen.cancel)

    @r.post("/v1/responses")
    @r.post("/responses")
    async def responses(req: ResponsesRequest) -> Any:
        messages: List[Dict[str, Any]] = []
        if req.instructions:
            messages.append({"role": "system", "content": req.instructions})
        if isinstance(req.input, str):
            messages.append({"role": "user", "content": req.input})
        else:
            for item in req.input:
                if item.get("type", "message") != "message":
                    raise APIError(400, f"input items of type {item.get('type')!r} are not "
                                        f"supported", param="input")
                messages.append(text_message({"role": item.get("role", "user"),
                                              "content": item.get("content", "")}))
        if not messages:
            raise APIError(400, "input holds no message", param="input")
        fmt = (req.text or {}).get("format")
        grammar = None
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            grammar = response_format_grammar({"type": "json_schema",
                                               "json_schema": {"schema": fmt.get("schema")}})
        elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
            grammar = response_format_grammar({"type": "json_object"})
        chat_req = ChatRequest(messages=messages, temperature=req.temperature, top_p=req.top_p)
        tokens, stop, _ = chat_prompt(state, chat_req)
        params = state.params(chat_req, req.max_output_tokens, grammar, stop)
        rid, mid = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}"
        name = req.model or state.model_id
        created = int(time.time())
        gen = state.start(tokens, params)

        def response(status: str, text: str, done: Optional[Dict[str, Any]]) -> Dict[str, Any]:
            out: Dict[str, Any] = {
                "id": rid, "object": "response", "created_at": created, "status": status,
                "model": name, "output": [], "error": None, "incomplete_details": None,
                "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
                "temperature": req.temperature, "top_p": req.top_p, "tools": [],
                "tool_choice": "auto", "parallel_tool_calls": False, "text": req.text or
                {"format": {"type": "text"}}, "usage": None}
            if done is not None:
                if done["finish_reason"] == "length":
                    out["status"] = "incomplete"
                    out["incomplete_details"] = {"reason": "max_output_tokens"}
                out["output"] = [{"type": "message", "id": mid, "status": "completed",
                                  "role": "assistant", "content": [{
                                      "type": "output_text", "text": text,
                                      "annotations": []}]}]
                out["usage"] = {"input_tokens": done["n_prompt"],
                                "input_tokens_details": {"cached_tokens": done["n_cached"]},
                                "output_tokens": done["n_decoded"],
                                "output_tokens_details": {"reasoning_tokens": 0},
                                "total_tokens": done["n_prompt"] + done["n_decoded"]}
            return out

        if not req.stream:
            done = await gen.collect()
            return response("completed", done["text"], done)

        async def events() -> AsyncIterator[bytes]:
            seq = 0

            def event(kind: str, data: Dict[str, Any]) -> bytes:
                nonlocal seq
                seq += 1
                return (f"event: {kind}\n".encode() +
                        sse_data(dict(data, type=kind, sequence_number=seq)))

            yield event("response.created", {"response": response("in_progress", "", None)})
            item = {"type": "message", "id": mid, "status": "in_progress",
                    "role": "assistant", "content": []}
            yield event("response.output_item.added", {"output_index": 0, "item": item})
            part = {"type": "output_text", "text": "", "annotations": []}
            yield event("response.content_part.added", {"item_id": mid, "output_index": 0,
                                                        "content_index": 0, "part": part})
            parts: List[str] = []
            async for ev in gen.events():
                if ev["text"]:
                    parts.append(ev["text"])
                    yield event("response.output_text.delta", {
                        "item_id": mid, "output_index": 0, "content_index": 0,
                        "delta": ev["text"], "logprobs": []})
                if ev["type"] == "done":
                    text = "".join(parts)
                    yield event("response.output_text.done", {
                        "item_id": mid, "output_index": 0, "content_index": 0, "text": text,
                        "logprobs": []})
                    yield event("response.content_part.done", {
                        "item_id": mid, "output_index": 0, "content_index": 0,
                        "part": dict(part, text=text)})
                    final = response("completed", text, ev)
                    yield event("response.output_item.done", {"output_index": 0,
                                                              "item": final["output"][0]})
                    yield event("response.completed", {"response": final})

        await gen.first()
        return sse(events(), gen.cancel)

    return r

