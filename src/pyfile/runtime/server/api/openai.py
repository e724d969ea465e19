"""OpenAI's API: chat completions, completions, models and the Responses API.

Each route is also served without the ``/v1`` prefix, as llama-server does.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple, Union

from fastapi import APIRouter

from .... import __version__
from ..chat import forced_tool
from ..errors import APIError
from ..http import sse, sse_data
from ..schemas import ChatRequest, CompletionRequest, ResponsesRequest
from ..state import ServerState
from ..runner import Run, off_loop
from ..task import Progress, Result, Step, Task, TokenProb, knobs
from .native import completion_json, model_ftype


#: OpenAI's ``system_fingerprint``: which build answered.
FINGERPRINT = f"pyfile-{__version__}"


def _n_probs(req: Any, chat: bool) -> int:
    if req.n_probs:
        return req.n_probs
    if chat:
        return (req.top_logprobs or 1) if req.logprobs else 0
    return int(req.logprobs) if req.logprobs not in (None, False) else 0


def _stops(stop: Any) -> List[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def chat_logprobs(probs: List[TokenProb]) -> Dict[str, Any]:
    """OpenAI's chat ``logprobs.content`` list (with ``post_sampling_probs``, llama-server's
    ``prob``/``top_probs`` after the sampler chain instead of log-probabilities)."""
    return {"content": [p.as_llama_server() for p in probs]}


def _usage(dones: List[Result]) -> Dict[str, Any]:
    """OpenAI's usage of one or several choices: the prompt once, every choice's tokens."""
    u = dones[0].usage()
    n = sum(d.n_decoded for d in dones)
    u.update(completion_tokens=n, total_tokens=u["prompt_tokens"] + n)
    return u


async def merged(runs: List[Run], progress: bool = False
                 ) -> AsyncIterator[Tuple[int, Union[Step, Progress, Result]]]:
    """The events of several runs as they come, each with its run's index; the first error
    raises (the sse wrapper makes it an error event; the caller cancels the runs)."""
    if len(runs) == 1:
        async for ev in runs[0].events(progress):
            yield 0, ev
        return
    queue: "asyncio.Queue[Tuple[int, Any]]" = asyncio.Queue()

    async def pump(i: int, run: Run) -> None:
        try:
            async for ev in run.events(progress):
                await queue.put((i, ev))
        except APIError as e:
            await queue.put((i, e))

    pumps = [asyncio.ensure_future(pump(i, run)) for i, run in enumerate(runs)]
    try:
        left = len(runs)
        while left:
            i, ev = await queue.get()
            if isinstance(ev, APIError):
                raise ev
            if isinstance(ev, Result):
                left -= 1
            yield i, ev
    finally:
        for t in pumps:
            t.cancel()


def completion_logprobs(probs: List[TokenProb]) -> Dict[str, Any]:
    """The legacy completions ``logprobs`` object."""
    offsets, at = [], 0
    for p in probs:
        offsets.append(at)
        at += len(p.piece)
    return {"tokens": [p.piece for p in probs],
            "token_logprobs": [p.logprob for p in probs],
            "top_logprobs": [{piece: v for _, piece, v in p.top} for p in probs],
            "text_offset": offsets}


def chat_task(req: ChatRequest) -> Task:
    """The task of an OpenAI chat request."""
    return Task(messages=list(req.messages), tools=req.tools, tool_choice=req.tool_choice,
                forced_tool=forced_tool(req.tools, req.tool_choice), param="messages",
                add_generation_prompt=req.add_generation_prompt,
                continue_final_message=req.continue_final_message,
                post_sampling_probs=req.post_sampling_probs,
                return_progress=req.return_progress and req.stream,
                sampling=knobs(req), max_tokens=req.max_completion_tokens or req.max_tokens,
                stop=_stops(req.stop), logit_bias=req.logit_bias, grammar=req.grammar,
                json_schema=req.json_schema, response_format=req.response_format,
                n_probs=_n_probs(req, chat=True))


def responses_task(req: ResponsesRequest) -> Task:
    """The task of a Responses request (text in, text or JSON out)."""
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
            role = item.get("role", "user")
            if role not in ("system", "developer", "user", "assistant"):
                raise APIError(400, f"input message role {role!r} is not one of system, "
                                    f"developer, user, assistant", param="input")
            messages.append({"role": role, "content": item.get("content", "")})
    if not messages:
        raise APIError(400, "input holds no message", param="input")
    fmt = (req.text or {}).get("format")
    response_format = None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        response_format = {"type": "json_schema", "json_schema": {"schema": fmt.get("schema")}}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        response_format = {"type": "json_object"}
    return Task(messages=messages, param="messages", sampling=knobs(req),
                max_tokens=req.max_output_tokens, response_format=response_format)


def router(state: ServerState) -> APIRouter:
    r = APIRouter()
    runner = state.runner

    @r.get("/v1/models")
    @r.get("/models")
    async def models() -> Dict[str, Any]:
        # llama-server's shape: OpenAI's list with its aliases, tags and the slot's context,
        # and the same model as Ollama's "models" list (clients of either read it).
        opts, e = state.opts, state.engine
        meta = {"vocab_type": e.L.llama_vocab_type(e.vocab),
                "n_vocab": state.n_vocab, "n_ctx": e.n_ctx_slot,
                "n_ctx_train": e.L.llama_model_n_ctx_train(e.model),
                "n_embd": e.L.llama_model_n_embd(e.model),
                "n_params": e.L.llama_model_n_params(e.model),
                "size": e.L.llama_model_size(e.model), "ftype": model_ftype(state)}
        return {"object": "list",
                "models": [{"name": state.model_id, "model": state.model_id,
                            "modified_at": "", "size": "", "digest": "", "type": "model",
                            "description": "", "tags": list(getattr(opts, "tags", [])),
                            "capabilities": ["completion"], "parameters": "",
                            "details": {"parent_model": "", "format": "gguf", "family": "",
                                        "families": [], "parameter_size": "",
                                        "quantization_level": ""}}],
                "data": [{"id": state.model_id, "aliases": list(getattr(opts, "aliases", [])),
                          "tags": list(getattr(opts, "tags", [])), "object": "model",
                          "created": int(state.started), "owned_by": "llamacpp",
                          "meta": meta}]}

    async def input_tokens(task: Task) -> Dict[str, Any]:
        """OpenAI's (and llama-server's) token count of the prompt a task would have."""
        tokens, _, _ = await off_loop(runner.render, task)
        return {"object": "response.input_tokens", "input_tokens": len(tokens)}

    @r.post("/v1/chat/completions/input_tokens")
    @r.post("/chat/completions/input_tokens")
    async def chat_input_tokens(req: ChatRequest) -> Dict[str, Any]:
        return await input_tokens(chat_task(req))

    @r.post("/v1/chat/completions")
    @r.post("/chat/completions")
    async def chat(req: ChatRequest) -> Any:
        task = chat_task(req)
        tool = task.forced_tool
        name = req.model or state.model_id
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        runs: List[Run] = []
        try:  # n > 1: one run (and slot) per choice, as llama-server's n_cmpl
            for _ in range(req.n):
                runs.append(await runner.start(task))
        except BaseException:
            for run in runs:
                run.cancel()
            raise
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        verbose = req.verbose or bool(getattr(state.opts, "verbose", False))

        def logprobs(probs: List[TokenProb]) -> Any:
            return chat_logprobs(probs) if task.n_probs else None

        if not req.stream:
            # Tasks of their own, so that the others stop too when one fails or its
            # client hangs up (gather alone would leave them waiting).
            waits = [asyncio.ensure_future(run.collect()) for run in runs]
            try:
                dones = await asyncio.gather(*waits)
            finally:
                for w in waits:
                    w.cancel()
                for run in runs:
                    run.cancel()
            choices = []
            for i, done in enumerate(dones):
                message: Dict[str, Any] = {"role": "assistant", "content": done.text}
                finish = done.finish_reason
                if tool:
                    message = {"role": "assistant", "content": None, "tool_calls": [{
                        "id": call_id, "type": "function",
                        "function": {"name": tool["name"], "arguments": done.text}}]}
                    finish = "tool_calls" if finish == "stop" else finish
                choices.append({"index": i, "message": message, "finish_reason": finish,
                                "logprobs": logprobs(done.probs)})
            out = {"id": cid, "object": "chat.completion", "created": created, "model": name,
                   "system_fingerprint": FINGERPRINT, "choices": choices,
                   "usage": _usage(dones), "timings": dones[0].timings}
            if verbose:  # llama-server's --verbose: the native answer, rendered prompt included
                out["__verbose"] = completion_json(runs[0], dones[0], name, dones[0].text)
            return out

        include_usage = bool((req.stream_options or {}).get("include_usage"))

        def chunk(i: int, delta: Dict[str, Any], finish: Optional[str] = None,
                  lp: Any = None) -> Dict[str, Any]:
            return {"id": cid, "object": "chat.completion.chunk", "created": created,
                    "model": name, "system_fingerprint": FINGERPRINT,
                    "choices": [{"index": i, "delta": delta, "logprobs": lp,
                                 "finish_reason": finish}]}

        def delta(text: str, first: bool) -> Dict[str, Any]:
            if not tool:
                return {"content": text}
            fn: Dict[str, Any] = {"arguments": text}
            call: Dict[str, Any] = {"index": 0, "function": fn}
            if first:
                fn["name"] = tool["name"]
                call.update(id=call_id, type="function")
            return {"tool_calls": [call]}

        async def events() -> AsyncIterator[bytes]:
            # The opening delta of each choice: the role, content null (as OpenAI and
            # llama-server send it).
            for i in range(len(runs)):
                yield sse_data(chunk(i, {"role": "assistant", "content": None}))
            first = [True] * len(runs)
            dones: List[Result] = []
            said: List[str] = []  # choice 0's text, for __verbose
            async for i, ev in merged(runs, progress=task.return_progress):
                if isinstance(ev, Progress):
                    c = chunk(i, {"role": "assistant", "content": None})
                    c["prompt_progress"] = ev.to_json()
                    yield sse_data(c)
                    continue
                if isinstance(ev, Step):
                    if i == 0:
                        said.append(ev.text)
                    lp = logprobs([ev.prob] if ev.prob else [])
                    if ev.text or lp:
                        yield sse_data(chunk(i, delta(ev.text, first[i]), lp=lp))
                        first[i] = False
                    continue
                if ev.text:
                    yield sse_data(chunk(i, delta(ev.text, first[i])))
                finish = ev.finish_reason
                if tool and finish == "stop":
                    finish = "tool_calls"
                last = chunk(i, {}, finish)
                last["timings"] = ev.timings
                if verbose and i == 0:  # as llama-server: on the final result's chunk
                    last["__verbose"] = completion_json(runs[0], ev, name,
                                                        "".join(said) + ev.text, stream=True)
                yield sse_data(last)
                dones.append(ev)
            if include_usage and dones:
                yield sse_data({"id": cid, "object": "chat.completion.chunk",
                                "created": created, "model": name,
                                "system_fingerprint": FINGERPRINT, "choices": [],
                                "usage": _usage(dones)})
            yield b"data: [DONE]\n\n"

        try:
            for run in runs:
                await run.first()
        except BaseException:
            for run in runs:
                run.cancel()
            raise
        return sse(events(), lambda: [run.cancel() for run in runs])

    @r.post("/v1/completions")  # unprefixed /completions is llama-server's native one
    async def completions(req: CompletionRequest) -> Any:
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise APIError(400, "send one prompt per request", param="prompt")
            prompt = prompt[0]
        if not prompt:
            raise APIError(400, "prompt must not be empty", param="prompt")
        task = Task(prompt=prompt, sampling=knobs(req), stop=_stops(req.stop),
                    max_tokens=req.max_tokens if req.max_tokens not in (None, 0) else -1,
                    logit_bias=req.logit_bias, grammar=req.grammar, json_schema=req.json_schema,
                    n_probs=_n_probs(req, chat=False))
        name = req.model or state.model_id
        cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        run = await runner.start(task)
        echo = run.prompt_text if req.echo else ""

        def body(text: str, finish: Optional[str], logprobs: Any = None) -> Dict[str, Any]:
            return {"id": cid, "object": "text_completion", "created": created, "model": name,
                    "system_fingerprint": FINGERPRINT,
                    "choices": [{"index": 0, "text": text, "logprobs": logprobs,
                                 "finish_reason": finish}]}

        if not req.stream:
            done = await run.collect()
            out = body(echo + done.text, done.finish_reason,
                       completion_logprobs(done.probs) if task.n_probs else None)
            out.update(usage=done.usage(), timings=done.timings)
            if req.verbose or getattr(state.opts, "verbose", False):  # as llama-server's
                out["__verbose"] = completion_json(run, done, name, done.text)
            return out

        async def events() -> AsyncIterator[bytes]:
            if echo:
                yield sse_data(body(echo, None))
            async for ev in run.events():
                if isinstance(ev, Step):
                    if ev.text or task.n_probs:
                        lp = completion_logprobs([ev.prob] if ev.prob else []) \
                            if task.n_probs else None
                        yield sse_data(body(ev.text, None, lp))
                    continue
                last = body(ev.text, ev.finish_reason)
                last.update(usage=ev.usage(), timings=ev.timings)
                yield sse_data(last)
            yield b"data: [DONE]\n\n"

        await run.first()
        return sse(events(), run.cancel)

    @r.post("/v1/responses/input_tokens")
    @r.post("/responses/input_tokens")
    async def responses_input_tokens(req: ResponsesRequest) -> Dict[str, Any]:
        return await input_tokens(responses_task(req))

    @r.post("/v1/responses")
    @r.post("/responses")
    async def responses(req: ResponsesRequest) -> Any:
        task = responses_task(req)
        rid, mid = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}"
        name = req.model or state.model_id
        created = int(time.time())
        run = await runner.start(task)

        def response(status: str, text: str, done: Optional[Result]) -> Dict[str, Any]:
            out: Dict[str, Any] = {
                "id": rid, "object": "response", "created_at": created, "status": status,
                "completed_at": None, "model": name, "output": [], "error": None,
                "incomplete_details": None,
                "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
                "temperature": req.temperature, "top_p": req.top_p, "tools": [],
                "tool_choice": "auto", "parallel_tool_calls": False, "text": req.text or
                {"format": {"type": "text"}}, "usage": None}
            if done is not None:
                if done.finish_reason == "length":
                    out["status"] = "incomplete"
                    out["incomplete_details"] = {"reason": "max_output_tokens"}
                out["output"] = [{"type": "message", "id": mid, "status": "completed",
                                  "role": "assistant", "content": [{
                                      "type": "output_text", "text": text,
                                      "annotations": [], "logprobs": []}]}]
                out["completed_at"] = int(time.time())
                out["usage"] = {"input_tokens": done.n_prompt,
                                "input_tokens_details": {"cached_tokens": done.n_cached},
                                "output_tokens": done.n_decoded,
                                "output_tokens_details": {"reasoning_tokens": 0},
                                "total_tokens": done.n_prompt + done.n_decoded}
            return out

        if not req.stream:
            done = await run.collect()
            return response("completed", done.text, done)

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
            async for ev in run.events():
                if ev.text:
                    parts.append(ev.text)
                    yield event("response.output_text.delta", {
                        "item_id": mid, "output_index": 0, "content_index": 0,
                        "delta": ev.text, "logprobs": []})
                if isinstance(ev, Result):
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

        await run.first()
        return sse(events(), run.cancel)

    return r
