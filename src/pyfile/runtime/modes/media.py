"""Images in the terminal modes (``--image FILE``, ``/image PATH``): find the model's
projector, render the conversation with the model's chat template (each image where its
message puts it), put it into the context through the projector and stream the answer."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional

from ..backend.vision import projector_source  # noqa: F401  (main.py imports it here)
from ..errors import InputError

#: Attribute of a loaded ``Llama`` naming its projector's :class:`ModelSource` (or None).
SOURCE_ATTR = "pyfile_mmproj"


def projector(llm: Any, opts: Any) -> Any:
    """The :class:`~pyfile.runtime.backend.vision.Projector` of ``llm`` (made on first use);
    raises :class:`InputError` when the model has none."""
    proj = getattr(llm, "pyfile_projector", None)
    if proj is not None:
        return proj
    source = getattr(llm, SOURCE_ATTR, None)
    if source is None:
        raise InputError("this model cannot see images: the file holds no projector for it "
                         "(build it with --mmproj, or give --mmproj FILE)")
    from ..backend.vision import load_projector
    proj = load_projector(llm.model, source, getattr(opts, "threads", None),
                          getattr(opts, "verbose", False))
    llm.pyfile_projector = proj
    return proj


def user_content(text: str, n_images: int) -> str:
    """A user message's text with its images after it (question first, then the picture:
    small models read it better that way)."""
    from ..backend.vision import MARKER
    return "\n".join([text, *[MARKER] * n_images]) if n_images else text


def stream_answer(llm: Any, opts: Any, messages: List[Dict[str, Any]], pictures: List[Any],
                  max_tokens: Optional[int], params: Dict[str, Any]) -> Iterator[str]:
    """Render ``messages`` (images marked in their content, ``pictures`` in order), put
    them into the context (what it already holds is reused: a repeated image is not encoded
    again) and yield the answer's text pieces."""
    from ..server.chat import ChatTemplate
    proj = projector(llm, opts)
    template = getattr(llm, "pyfile_template", None)
    if template is None:
        template = llm.pyfile_template = ChatTemplate(llm)
    prompt, stop, add_bos = template.render(messages)
    stats = proj.prefill(llm, prompt, pictures, add_special=add_bos)
    if getattr(opts, "verbose", False):
        import sys
        sys.stderr.write(f"pyfile: {stats.images} image(s), {stats.encoded} encoded in "
                         f"{stats.encode_s * 1000:.0f} ms, {stats.cached_cells} of "
                         f"{stats.prompt_cells} prompt cells from the cache\n")
    params = dict(params)
    params["stop"] = list(params.get("stop") or []) + stop or None
    for chunk in llm.create_completion(llm.input_ids[:llm.n_tokens].tolist(), stream=True,
                                       max_tokens=max_tokens or -1, **params):
        text = chunk["choices"][0]["text"]
        if text:
            yield text


__all__ = ["projector_source", "projector", "user_content", "stream_answer", "SOURCE_ATTR"]
