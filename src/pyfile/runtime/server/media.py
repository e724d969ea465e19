"""Image inputs of every API, found and put in place: OpenAI's ``image_url`` content parts
(a ``data:`` URL or raw base64; an http(s) URL only with ``--allow-image-urls``), the
Responses API's ``input_image``, Anthropic's ``image`` blocks (``source.type`` base64, or
url) and llama-server's ``/completion`` ``{"prompt_string", "multimodal_data"}``.

Each image becomes :data:`~pyfile.runtime.backend.vision.MARKER` in the text, in order,
and one entry of the task's ``images`` (its source and the body field it came from);
:func:`decode` turns them into checked pictures (:mod:`.images`) in the runner, off the
event loop. Every problem is a 400 naming the field.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from .errors import APIError

#: The marker llama-server's clients put in a ``/completion`` prompt_string where each
#: ``multimodal_data`` item goes (its default; ``/props`` reports it as ``media_marker``).
PUBLIC_MARKER = "<__media__>"
#: OpenAI content part types that carry an image (chat: image_url; Responses: input_image).
IMAGE_PARTS = ("image_url", "input_image")

#: One image input: (its source: a URL or base64 text, the body field it came from).
Source = Tuple[str, str]


def marker() -> str:
    """Where an image goes in a prompt (random per process)."""
    from ..backend.vision import MARKER
    return MARKER


def part_source(part: Dict[str, Any], where: str) -> str:
    """The URL or base64 text of an OpenAI image part (``image_url`` is ``{"url": ...}`` or a
    string, in chat and in the Responses API alike)."""
    value = part.get("image_url")
    if isinstance(value, dict):
        value = value.get("url")
    if not isinstance(value, str) or not value:
        raise APIError(400, f"Invalid '{where}': an image part needs image_url.url (a data: "
                            f"URL or base64)", param=where, code="invalid_value")
    return value


def openai_messages(messages: List[Any], param: str = "messages"
                    ) -> Tuple[List[Any], List[Source]]:
    """Messages whose image parts became text parts holding the marker, and the images'
    sources in order. Messages without images come back as they were."""
    out: List[Any] = []
    sources: List[Source] = []
    for i, msg in enumerate(messages):
        m = msg.model_dump(exclude_none=True) if hasattr(msg, "model_dump") else msg
        content = m.get("content") if isinstance(m, dict) else None
        if not isinstance(content, list) or not any(
                isinstance(p, dict) and p.get("type") in IMAGE_PARTS for p in content):
            out.append(msg)
            continue
        parts = []
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") in IMAGE_PARTS:
                where = f"{param}.{i}.content.{j}"
                sources.append((part_source(part, where), where))
                parts.append({"type": "text", "text": marker()})
            else:
                parts.append(part)
        out.append({**m, "content": parts})
    return out, sources


def anthropic_image(block: Dict[str, Any], where: str) -> Source:
    """An Anthropic ``image`` block's source: base64 data (any media type; the bytes decide)
    or a URL."""
    src = block.get("source")
    if not isinstance(src, dict):
        raise APIError(400, f"{where}: an image block needs a source", param=where)
    if src.get("type") == "base64" and isinstance(src.get("data"), str):
        return src["data"], where
    if src.get("type") == "url" and isinstance(src.get("url"), str):
        return src["url"], where
    raise APIError(400, f"{where}: an image source must be {{'type': 'base64', 'media_type', "
                        f"'data'}} or {{'type': 'url', 'url'}}", param=where)


def completion_prompt(prompt: Any, param: str = "prompt") -> Tuple[Any, List[Source]]:
    """llama-server's ``{"prompt_string": "... <__media__> ...", "multimodal_data": [b64]}``:
    the text with the markers swapped for ours, and the images; other prompts unchanged."""
    if not isinstance(prompt, dict) or "multimodal_data" not in prompt:
        return prompt, []
    data = prompt.get("multimodal_data")
    text = prompt.get("prompt_string")
    if not isinstance(text, str):
        raise APIError(400, f"Invalid '{param}.prompt_string': must be a string",
                       param=f"{param}.prompt_string")
    if not isinstance(data, list) or not all(isinstance(d, str) for d in data):
        raise APIError(400, f"Invalid '{param}.multimodal_data': must be a list of base64 "
                            f"strings", param=f"{param}.multimodal_data")
    if text.count(PUBLIC_MARKER) != len(data):
        raise APIError(400, f"the prompt has {text.count(PUBLIC_MARKER)} {PUBLIC_MARKER} "
                            f"marker(s) for {len(data)} multimodal_data item(s): one each",
                       param=f"{param}.multimodal_data")
    rest = {k: v for k, v in prompt.items() if k not in ("multimodal_data", "prompt_string")}
    if rest:
        raise APIError(400, f"Invalid '{param}': unknown key {sorted(rest)[0]!r}", param=param)
    return text.replace(PUBLIC_MARKER, marker()), [
        (d, f"{param}.multimodal_data.{i}") for i, d in enumerate(data)]


def decode(sources: List[Source], allow_remote: bool = False) -> List[Any]:
    """The pictures of ``sources`` (any thread); a bad one is a 400 naming its field."""
    from .images import ImageError, from_url
    out = []
    for source, where in sources:
        try:
            out.append(from_url(source, allow_remote, where))
        except ImageError as e:
            raise APIError(400, str(e), param=where, code="invalid_image") from None
    return out


def no_projector(model: Optional[str] = None) -> APIError:
    """The 400 for an image sent to a model without a projector (llama-server: a 500)."""
    name = f"the model '{model}'" if model else "this model"
    return APIError(400, f"image input is not supported: {name} has no projector (mmproj); "
                         f"build the pyfile with --mmproj to give it one",
                    "invalid_request_error", "image_input_not_supported", "messages")




# -- the runner's side ----------------------------------------------------------------------

def take_images(task: Any, allow_remote: bool = False) -> Tuple[Any, List[Any]]:
    """The task with its messages' image parts turned into markers, and every picture it
    carries (``task.images`` first: Anthropic's blocks and ``multimodal_data`` are turned
    into markers by their APIs) decoded and checked. Any thread."""
    sources = list(getattr(task, "images", None) or [])
    if task.messages is not None:
        messages, found = openai_messages(task.messages, task.param or "messages")
        if found:
            import dataclasses
            task = dataclasses.replace(task, messages=messages)
            sources += found
    return task, decode(sources, allow_remote) if sources else []


def tokenize(state: Any, text: str, tokens: List[int], pictures: List[Any],
             param: str = "messages") -> Tuple[List[Any], Any]:
    """The prompt's cells (token ids, and (image id, index) for each image position) and
    the libmtmd pieces the scheduler reads the images from; ``tokens`` is the text
    tokenization (it tells whether the model's BOS goes first)."""
    proj = getattr(state, "projector", None)
    if proj is None:
        raise no_projector(getattr(state, "model_id", None))
    from ..backend.vision import VisionError
    add_special = len(tokens) != len(state.tokenize(text, add_special=False))
    try:
        pieces = proj.tokenize(text, pictures, add_special)
    except VisionError as e:
        raise APIError(400, str(e), param=param, code="invalid_image") from None
    if pieces.pieces and pieces.pieces[-1].image is not None:
        pieces.close()
        raise APIError(400, "the prompt must go on after its last image", param=param)
    return pieces.cells, pieces


def attach(state: Any, engine: Any, model: Any, source: Any, opts: Any, manifest: Any,
           archive_path: Optional[str]) -> None:
    """Load the model's projector (paired in the manifest, or ``--mmproj FILE``) for the
    server: the runner tokenizes with it, the scheduler encodes images with it."""
    state.projector = engine.projector = None
    if getattr(opts, "no_mmproj", False):
        return
    from ..backend.vision import load_projector, projector_source
    src = projector_source(archive_path or source.path, manifest, source.name,
                           getattr(opts, "mmproj", None))
    if src is None:
        return
    proj = load_projector(model, src, getattr(opts, "threads", None),
                          getattr(opts, "verbose", False))
    state.projector = engine.projector = proj


__all__ = ["PUBLIC_MARKER", "IMAGE_PARTS", "openai_messages", "anthropic_image",
           "completion_prompt", "decode", "marker", "no_projector", "part_source", "take_images",
           "tokenize", "attach"]
