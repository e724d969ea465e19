"""Request bodies of every route (pydantic), and every check of a field that needs nothing
but the body itself: types, ranges, the shape of messages, content blocks and tools.

Extra fields are accepted and ignored, as OpenAI, Anthropic and llama-server clients send
many. A body that breaks a rule is a 400 naming the field (``messages.0.content.1.text``);
the checks that need the model (token ids against the vocabulary, ``max_tokens`` against the
context, grammars) are in :mod:`.limits`.

Lists and objects that the routes read as plain dicts (messages of Anthropic's API, tools,
content parts) keep that type: their validators only check them and return them unchanged.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, \
    model_validator
from typing_extensions import Annotated

from .errors import APIError

#: llama.cpp's token counts and ids are int32: the hard limit of every count field.
INT32_MAX = 2 ** 31 - 1
#: ``seed``: OpenAI's type (int64); negative values ask for a random seed.
SEED_MIN, SEED_MAX = -2 ** 63, 2 ** 63 - 1
#: Alternatives per token a request may ask for (OpenAI: 20 for chat; llama-server: n_probs).
MAX_TOP_LOGPROBS = 20
MAX_N_PROBS = 100
#: Most choices one chat request may ask for (``n``): each takes a slot of its own.
MAX_CHOICES = 16
#: ``logit_bias`` values (OpenAI's range); ``false`` (llama-server) bans a token.
MAX_BIAS = 100.0
#: How deeply a body's JSON may nest (tool schemas included): deeper is refused, not recursed.
MAX_DEPTH = 64
#: Text content-part types (OpenAI chat, Responses).
TEXT_PARTS = ("text", "input_text", "output_text")


class FieldError(ValueError):
    """A complaint about a part of a field: ``where`` continues the field's path
    (``0.content.1.text`` under ``messages``), so the 400 names the exact place."""

    def __init__(self, where: Any, message: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.where, self.message, self.code = str(where), message, code


def _whole(value: Any) -> Any:
    """Counts and ids are JSON integers: ``5`` and ``5.0``, not ``true``, ``"5"`` or ``5.5``."""
    if isinstance(value, bool) or isinstance(value, str):
        raise FieldError("", "must be an integer", "invalid_type")
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise FieldError("", "must be an integer", "invalid_type")
        return int(value)
    return value


#: An integer field (see :func:`_whole`).
Int = Annotated[int, BeforeValidator(_whole)]


def _short(path: str) -> str:
    """A field path fit for a message: the body itself is ``body``; a very deep one elided."""
    if not path:
        return "body"
    return path if len(path) <= 80 else path[:38] + "..." + path[-38:]


def _check_text_and_depth(body: Any) -> None:
    """Every string of the body must be encodable as UTF-8 (a lone surrogate such as
    ``"\\ud800"`` is valid JSON but not text) and nothing may nest deeper than
    :data:`MAX_DEPTH`. Iterative, so a hostile body cannot exhaust the stack."""
    stack: List[tuple] = [(body, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise APIError(400, f"Invalid '{_short(path)}': the text holds a lone "
                                        f"UTF-16 surrogate (not valid Unicode)",
                                   param=_short(path), code="invalid_value") from None
            continue
        if isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise APIError(400, f"Invalid '{_short(path)}': the body nests deeper than "
                                    f"{MAX_DEPTH} levels", param=_short(path),
                               code="invalid_value")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                if isinstance(k, str) and not k.isascii():
                    stack.append((k, path, depth + 1))
                stack.append((v, f"{path}.{k}" if path else str(k), depth + 1))


class Body(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class RequestBody(Body):
    """A whole request body: text and nesting are checked once, before the fields."""

    @model_validator(mode="before")
    @classmethod
    def _text(cls, data: Any) -> Any:
        _check_text_and_depth(data)
        return data


# -- shapes checked in place (the routes read them as dicts) -----------------------------------

def _need(obj: Dict[str, Any], key: str, kind: Any, what: str, where: str,
          optional: bool = False) -> None:
    """``obj[key]`` must be a ``kind`` (absent or null is fine when ``optional``)."""
    value = obj.get(key)
    if value is None and optional:
        return
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise FieldError(f"{where}.{key}" if where else key, f"must be {what}")


def check_text_parts(parts: Any) -> Any:
    """OpenAI content parts: ``{"type": "text", "text": "..."}`` (or ``input_text`` /
    ``output_text``); other kinds (images, audio) are not something this model reads."""
    if not isinstance(parts, list):
        return parts
    for i, part in enumerate(parts):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise FieldError(i, "must be a content part, an object with a type")
        kind = part["type"]
        if kind in ("image_url", "input_image"):  # read by server/media.py
            url = part.get("image_url")
            if isinstance(url, dict):
                url = url.get("url")
            if not isinstance(url, str):
                raise FieldError(f"{i}.image_url", "must be a URL string or {'url': ...} "
                                                   "(a data: URL or base64)")
            continue
        if kind not in TEXT_PARTS:
            raise FieldError(f"{i}.type", f"content parts of type {kind!r} are not supported "
                                          f"by this model (text only)")
        _need(part, "text", str, f"a string (a {kind} part needs its text)", str(i))
    return parts


def check_tool_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or not name or len(name) > 128 or any(
            c.isspace() or not c.isprintable() for c in name):
        raise FieldError(where, "a tool's name must be a non-empty string of at most 128 "
                                "characters without spaces")


def check_openai_tools(tools: Any) -> Any:
    """OpenAI tools: ``{"type": "function", "function": {"name", "description",
    "parameters"}}`` with a string name and an object schema."""
    for i, t in enumerate(tools or []):
        fn = t.get("function")
        if t.get("type", "function") != "function" or not isinstance(fn, dict):
            raise FieldError(i, "must be {'type': 'function', 'function': {'name': ...}}")
        check_tool_name(fn.get("name"), f"{i}.function.name")
        _need(fn, "description", str, "a string", f"{i}.function", optional=True)
        _need(fn, "parameters", dict, "a JSON schema object", f"{i}.function", optional=True)
    return tools


def check_openai_tool_choice(choice: Any) -> Any:
    if choice is None:
        return choice
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise ValueError("must be 'none', 'auto', 'required' or "
                             "{'type': 'function', 'function': {'name': ...}}")
        return choice
    fn = choice.get("function")
    name = fn.get("name") if isinstance(fn, dict) else choice.get("name")
    if not isinstance(name, str):
        raise ValueError("must name a function: {'type': 'function', 'function': {'name': ...}}")
    return choice


def check_response_format(rf: Any) -> Any:
    if rf is None:
        return rf
    if rf.get("type") not in ("text", "json_object", "json_schema"):
        raise FieldError("type", "must be 'text', 'json_object' or 'json_schema'")
    _need(rf, "json_schema", dict, "an object holding schema", "", optional=True)
    _need(rf, "schema", dict, "a JSON schema object", "", optional=True)
    _need(rf.get("json_schema") or {}, "schema", dict, "a JSON schema object", "json_schema",
          optional=True)
    return rf


def check_logit_bias(bias: Any) -> Any:
    """OpenAI's ``{"token id": bias}`` or llama-server's ``[[token id or text, bias]]``;
    a bias is a number in [-100, 100] or ``false`` (never this token)."""
    if bias is None:
        return bias
    if isinstance(bias, dict):
        items = [(k, k, v) for k, v in bias.items()]
    else:
        items = []
        for i, pair in enumerate(bias):
            if not isinstance(pair, list) or len(pair) != 2:
                raise FieldError(i, "must be a pair [token id or text, bias]")
            items.append((i, pair[0], pair[1]))
    for where, key, value in items:
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            raise FieldError(where, f"{key!r} is not a token id or a text")
        if value is False:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or abs(value) > MAX_BIAS:
            raise FieldError(where, f"the bias must be a number from -{MAX_BIAS:g} to "
                                    f"{MAX_BIAS:g} (or false), got {value!r}")
    return bias


# -- OpenAI and llama-server -------------------------------------------------------------------

class ChatMessage(Body):
    role: str = Field(pattern="^(system|developer|user|assistant|tool)$")
    content: Union[str, List[Dict[str, Any]], None] = None
    name: Optional[str] = None
    tool_calls: Optional[List[Dict[str, Any]]] = None
    tool_call_id: Optional[str] = None

    _content = field_validator("content")(check_text_parts)

    @field_validator("tool_calls")
    @classmethod
    def _calls(cls, calls: Any) -> Any:
        for i, call in enumerate(calls or []):
            fn = call.get("function")
            if not isinstance(fn, dict):
                raise FieldError(f"{i}.function", "must be {'name': ..., 'arguments': ...}")
            _need(fn, "name", str, "a string", f"{i}.function")
            _need(fn, "arguments", (str, dict), "a JSON string", f"{i}.function",
                  optional=True)
        return calls


class Sampling(RequestBody):
    """Sampling fields shared by the OpenAI routes and llama-server's native ones."""

    model: Optional[str] = None
    max_tokens: Optional[Int] = Field(default=None, ge=-1, le=INT32_MAX)
    temperature: float = Field(default=0.8, ge=0, le=2)
    top_p: float = Field(default=0.95, ge=0, le=1)
    top_k: Int = Field(default=40, ge=0, le=INT32_MAX)
    min_p: float = Field(default=0.05, ge=0, le=1)
    typical_p: float = Field(default=1.0, ge=0, le=1)
    repeat_penalty: float = Field(default=1.0, ge=0, le=100)
    repeat_last_n: Int = Field(default=64, ge=-1, le=INT32_MAX)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    stop: Union[str, List[str], None] = None
    seed: Optional[Int] = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    stream: bool = False
    n: Int = Field(default=1, ge=1, le=1)
    logit_bias: Union[Dict[str, Any], List[List[Any]], None] = None
    logprobs: Union[bool, Int, None] = None
    top_logprobs: Optional[Int] = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    n_probs: Int = Field(default=0, ge=0, le=MAX_N_PROBS)
    grammar: Optional[str] = None
    json_schema: Optional[Dict[str, Any]] = None
    ignore_eos: bool = False
    stream_options: Optional[Dict[str, Any]] = None
    post_sampling_probs: bool = False   # llama-server: n_probs as probabilities after sampling
    return_progress: bool = False       # llama-server: prompt-progress events in a stream
    verbose: bool = False               # llama-server: __verbose in the answer (as -v does)

    _bias = field_validator("logit_bias")(check_logit_bias)

    @field_validator("logprobs")
    @classmethod
    def _logprobs(cls, v: Any) -> Any:
        if not isinstance(v, bool) and isinstance(v, int) and not 0 <= v <= MAX_TOP_LOGPROBS:
            raise ValueError(f"must be true/false or a count from 0 to {MAX_TOP_LOGPROBS}")
        return v


class ChatRequest(Sampling):
    messages: List[ChatMessage] = Field(min_length=1)
    n: Int = Field(default=1, ge=1, le=MAX_CHOICES)
    add_generation_prompt: bool = True          # llama-server's template switches
    continue_final_message: Optional[bool] = None
    max_completion_tokens: Optional[Int] = Field(default=None, ge=0, le=INT32_MAX)
    response_format: Optional[Dict[str, Any]] = None
    tools: Optional[List[Dict[str, Any]]] = None
    tool_choice: Union[str, Dict[str, Any], None] = None

    _tools = field_validator("tools")(check_openai_tools)
    _choice = field_validator("tool_choice")(check_openai_tool_choice)
    _format = field_validator("response_format")(check_response_format)


class CompletionRequest(Sampling):
    prompt: Union[str, List[str], List[Int]]
    echo: bool = False
    max_tokens: Optional[Int] = Field(default=16, ge=-1, le=INT32_MAX)


#: llama-server's prompt forms (server/prompts.py): text, token ids, a mix, a JSON object
#: ``{"prompt_string": ...}``, or a list of those.
NativePrompt = Union[str, Dict[str, Any],
                     List[Union[Int, str, Dict[str, Any], List[Union[Int, str]]]]]


class NativeCompletionRequest(Sampling):
    """llama-server's ``/completion``: ``n_predict`` rather than ``max_tokens``."""

    prompt: NativePrompt
    n_predict: Int = Field(default=-1, ge=-1, le=INT32_MAX)
    cache_prompt: bool = True


class InfillRequest(NativeCompletionRequest):
    prompt: Union[str, List[Union[Int, str]]] = ""
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: List[Dict[str, Any]] = []

    @field_validator("input_extra")
    @classmethod
    def _extra(cls, chunks: Any) -> Any:
        for i, c in enumerate(chunks):
            _need(c, "filename", str, "a string", str(i), optional=True)
            _need(c, "text", str, "a string", str(i), optional=True)
        return chunks


class EmbeddingRequest(RequestBody):
    input: Optional[NativePrompt] = None
    content: Optional[NativePrompt] = None  # llama-server's /embedding
    model: Optional[str] = None
    encoding_format: Optional[str] = None
    embd_normalize: Int = Field(default=2, ge=-1, le=100)


class RerankRequest(RequestBody):
    query: str
    documents: List[str] = Field(min_length=1)
    top_n: Optional[Int] = Field(default=None, ge=1, le=INT32_MAX)
    model: Optional[str] = None
    return_text: bool = False


class TokenizeRequest(RequestBody):
    content: str
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(RequestBody):
    tokens: List[Int]


class ApplyTemplateRequest(RequestBody):
    messages: List[ChatMessage] = Field(min_length=1)
    tools: Optional[List[Dict[str, Any]]] = None

    _tools = field_validator("tools")(check_openai_tools)


class Knobs(RequestBody):
    """llama.cpp's sampler knobs under their own names (the task layer's ``KNOBS``), for the
    APIs that do not define them (Anthropic's, Responses): declared, so a client's ``seed``
    or ``top_k`` is checked as in :class:`Sampling` instead of reaching the sampler raw.
    None keeps the sampler's default."""

    top_k: Optional[Int] = Field(default=None, ge=0, le=INT32_MAX)
    min_p: Optional[float] = Field(default=None, ge=0, le=1)
    typical_p: Optional[float] = Field(default=None, ge=0, le=1)
    repeat_penalty: Optional[float] = Field(default=None, ge=0, le=100)
    repeat_last_n: Optional[Int] = Field(default=None, ge=-1, le=INT32_MAX)
    presence_penalty: Optional[float] = Field(default=None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2, le=2)
    seed: Optional[Int] = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    ignore_eos: Optional[bool] = None


# -- Anthropic ---------------------------------------------------------------------------------

def _check_blocks(blocks: Any, where: str, nested: bool = False) -> None:
    """Anthropic content blocks: text, tool_use, tool_result (with text inside) and
    thinking / redacted_thinking (earlier turns of a reasoning model)."""
    if isinstance(blocks, str) or (blocks is None and nested):
        return
    if not isinstance(blocks, list):
        raise FieldError(where, "must be a string or a list of content blocks")
    for j, b in enumerate(blocks):
        if not isinstance(b, dict) or not isinstance(b.get("type"), str):
            raise FieldError(f"{where}.{j}", "must be a content block, an object with a type")
        kind, at = b["type"], f"{where}.{j}"
        if kind == "text":
            _need(b, "text", str, "a string", at)
        elif kind == "tool_use" and not nested:
            _need(b, "name", str, "a string", at)
            _need(b, "id", str, "a string", at, optional=True)
            _need(b, "input", dict, "an object", at, optional=True)
        elif kind == "tool_result" and not nested:
            _need(b, "tool_use_id", str, "a string", at, optional=True)
            _check_blocks(b.get("content"), f"{at}.content", nested=True)
        elif kind == "thinking" and not nested:  # a reasoning model's earlier thoughts
            _need(b, "thinking", str, "a string", at)
            _need(b, "signature", str, "a string", at, optional=True)
        elif kind == "redacted_thinking" and not nested:
            _need(b, "data", str, "a string", at, optional=True)
        elif kind == "image":  # read by server/media.py
            _need(b, "source", dict, "an object: {'type': 'base64', 'media_type', 'data'} "
                                     "or {'type': 'url', 'url'}", at)
        else:
            raise FieldError(f"{at}.type", f"content blocks of type {kind!r} are not "
                                           f"supported by this model")


class _AnthropicPrompt(RequestBody):
    """What the Messages API and its token count share: messages, system, tools."""

    model: Optional[str] = None
    messages: List[Dict[str, Any]] = Field(min_length=1)
    system: Union[str, List[Dict[str, Any]], None] = None
    tools: Optional[List[Dict[str, Any]]] = None
    tool_choice: Optional[Dict[str, Any]] = None

    @field_validator("messages")
    @classmethod
    def _messages(cls, messages: Any) -> Any:
        for i, m in enumerate(messages):
            if m.get("role") not in ("user", "assistant"):
                raise FieldError(f"{i}.role", "must be 'user' or 'assistant'")
            if "content" not in m:
                raise FieldError(f"{i}.content", "is required")
            _check_blocks(m["content"], f"{i}.content")
        return messages

    @field_validator("system")
    @classmethod
    def _system(cls, system: Any) -> Any:
        for j, b in enumerate(system if isinstance(system, list) else []):
            if b.get("type") != "text":
                raise FieldError(f"{j}.type", "system blocks must be text blocks")
            _need(b, "text", str, "a string", str(j))
        return system

    @field_validator("tools")
    @classmethod
    def _tools(cls, tools: Any) -> Any:
        for i, t in enumerate(tools or []):
            check_tool_name(t.get("name"), f"{i}.name")
            _need(t, "description", str, "a string", str(i), optional=True)
            _need(t, "input_schema", dict, "a JSON schema object", str(i), optional=True)
        return tools

    @field_validator("tool_choice")
    @classmethod
    def _choice(cls, choice: Any) -> Any:
        if choice is None:
            return choice
        if choice.get("type") not in ("auto", "any", "tool", "none"):
            raise FieldError("type", "must be 'auto', 'any', 'tool' or 'none'")
        if choice["type"] == "tool":
            _need(choice, "name", str, "a string (the tool to use)", "")
        return choice


class AnthropicRequest(_AnthropicPrompt, Knobs):
    """Anthropic's Messages API (``/v1/messages``)."""

    # Anthropic's API requires max_tokens; without one: until the model stops.
    max_tokens: Optional[Int] = Field(default=None, ge=1, le=INT32_MAX)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, ge=0, le=1)
    top_k: Int = Field(default=0, ge=0, le=INT32_MAX)
    stop_sequences: Optional[List[str]] = None
    stream: bool = False
    metadata: Optional[Dict[str, Any]] = None
    output_config: Optional[Dict[str, Any]] = None  # {"format": {"type": "json_schema", ...}}

    @field_validator("output_config")
    @classmethod
    def _output(cls, cfg: Any) -> Any:
        _need(cfg or {}, "format", dict, "{'type': 'json_schema', 'schema': {...}}", "",
              optional=True)
        _need((cfg or {}).get("format") or {}, "schema", dict, "a JSON schema object",
              "format", optional=True)
        return cfg


class AnthropicCountRequest(_AnthropicPrompt):
    """Anthropic's token count (``/v1/messages/count_tokens``): the prompt part of a request."""


# -- OpenAI Responses --------------------------------------------------------------------------

class ResponsesRequest(Knobs):
    """OpenAI's Responses API (``/v1/responses``), text in and out."""

    model: Optional[str] = None
    input: Union[str, List[Dict[str, Any]]]
    instructions: Optional[str] = None
    max_output_tokens: Optional[Int] = Field(default=None, ge=1, le=INT32_MAX)
    temperature: float = Field(default=0.8, ge=0, le=2)
    top_p: float = Field(default=0.95, ge=0, le=1)
    stream: bool = False
    text: Optional[Dict[str, Any]] = None

    @field_validator("input")
    @classmethod
    def _input(cls, items: Any) -> Any:
        for i, item in enumerate(items if isinstance(items, list) else []):
            if item.get("type", "message") != "message":
                continue  # the route names the kinds it does not take
            _need(item, "role", str, "a string", str(i), optional=True)
            content = item.get("content", "")
            if not isinstance(content, (str, list)):
                raise FieldError(f"{i}.content", "must be a string or a list of parts")
            try:
                check_text_parts(content)
            except FieldError as e:
                raise FieldError(f"{i}.content.{e.where}", e.message) from None
        return items

    @field_validator("text")
    @classmethod
    def _text_config(cls, cfg: Any) -> Any:
        fmt = (cfg or {}).get("format")
        if fmt is None:
            return cfg
        if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object",
                                                                 "json_schema"):
            raise FieldError("format", "must be {'type': 'text' | 'json_object' | "
                                       "'json_schema', 'schema': {...}}")
        _need(fmt, "schema", dict, "a JSON schema object", "format", optional=True)
        return cfg
