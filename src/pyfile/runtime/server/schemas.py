"""Request bodies of every route (pydantic). Extra fields are accepted and ignored, as
OpenAI, Anthropic and llama-server clients send many."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(Body):
    role: str = Field(pattern="^(system|developer|user|assistant|tool)$")
    content: Union[str, List[Dict[str, Any]], None] = None
    name: Optional[str] = None
    tool_calls: Optional[List[Dict[str, Any]]] = None
    tool_call_id: Optional[str] = None


class Sampling(Body):
    """Sampling fields shared by the OpenAI routes and llama-server's native ones."""

    model: Optional[str] = None
    max_tokens: Optional[int] = Field(default=None, ge=-1)
    temperature: float = Field(default=0.8, ge=0, le=2)
    top_p: float = Field(default=0.95, ge=0, le=1)
    top_k: int = Field(default=40, ge=0)
    min_p: float = Field(default=0.05, ge=0, le=1)
    typical_p: float = Field(default=1.0, ge=0, le=1)
    repeat_penalty: float = Field(default=1.0, ge=0)
    repeat_last_n: int = Field(default=64, ge=-1)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    stop: Union[str, List[str], None] = None
    seed: Optional[int] = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)
    logit_bias: Union[Dict[str, float], List[List[Any]], None] = None
    logprobs: Union[bool, int, None] = None
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    n_probs: int = Field(default=0, ge=0, le=100)
    grammar: Optional[str] = None
    json_schema: Optional[Dict[str, Any]] = None
    ignore_eos: bool = False
    stream_options: Optional[Dict[str, Any]] = None


class ChatRequest(Sampling):
    messages: List[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=0)
    response_format: Optional[Dict[str, Any]] = None
    tools: Optional[List[Dict[str, Any]]] = None
    tool_choice: Union[str, Dict[str, Any], None] = None


class CompletionRequest(Sampling):
    prompt: Union[str, List[str], List[int]]
    echo: bool = False
    max_tokens: Optional[int] = Field(default=16, ge=-1)


class NativeCompletionRequest(Sampling):
    """llama-server's ``/completion``: ``n_predict`` rather than ``max_tokens``."""

    prompt: Union[str, List[Union[int, str]]]
    n_predict: int = Field(default=-1, ge=-1)
    cache_prompt: bool = True


class InfillRequest(NativeCompletionRequest):
    prompt: Union[str, List[Union[int, str]]] = ""
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: List[Dict[str, Any]] = []


class EmbeddingRequest(Body):
    input: Union[str, List[str], None] = None
    content: Union[str, List[str], None] = None  # llama-server's /embedding
    model: Optional[str] = None
    encoding_format: Optional[str] = None
    embd_normalize: int = 2


class RerankRequest(Body):
    query: str
    documents: List[str] = Field(min_length=1)
    top_n: Optional[int] = Field(default=None, ge=1)
    model: Optional[str] = None
    return_text: bool = False


class TokenizeRequest(Body):
    content: str
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(Body):
    tokens: List[int]


class ApplyTemplateRequest(Body):
    messages: List[ChatMessage] = Field(min_length=1)
    tools: Optional[List[Dict[str, Any]]] = None


class AnthropicRequest(Body):
    """Anthropic's Messages API (``/v1/messages``)."""

    model: Optional[str] = None
    messages: List[Dict[str, Any]] = Field(min_length=1)
    system: Union[str, List[Dict[str, Any]], None] = None
    max_tokens: int = Field(default=4096, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, ge=0, le=1)
    top_k: int = Field(default=0, ge=0)
    stop_sequences: Optional[List[str]] = None
    stream: bool = False
    tools: Optional[List[Dict[str, Any]]] = None
    tool_choice: Optional[Dict[str, Any]] = None
    metadata: Optional[Dict[str, Any]] = None
    output_config: Optional[Dict[str, Any]] = None  # {"format": {"type": "json_schema", ...}}


class AnthropicCountRequest(Body):
    """Anthropic's token count (``/v1/messages/count_tokens``): the prompt part of a request."""

    model: Optional[str] = None
    messages: List[Dict[str, Any]] = Field(min_length=1)
    system: Union[str, List[Dict[str, Any]], None] = None
    tools: Optional[List[Dict[str, Any]]] = None
    tool_choice: Optional[Dict[str, Any]] = None


class ResponsesRequest(Body):
    """OpenAI's Responses API (``/v1/responses``), text in and out."""

    model: Optional[str] = None
    input: Union[str, List[Dict[str, Any]]]
    instructions: Optional[str] = None
    max_output_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: float = Field(default=0.8, ge=0, le=2)
    top_p: float = Field(default=0.95, ge=0, le=1)
    stream: bool = False
    text: Optional[Dict[str, Any]] = None
