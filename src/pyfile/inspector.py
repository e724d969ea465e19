"""``pyfile inspect``: describe a .pyfile or .gguf. Reads; never executes or imports."""

from __future__ import annotations

from typing import Any, Dict, List

from . import gguf
from .runtime.container import versions
from .runtime.container.archive import Archive
from .runtime.backend.engine import GGUF_MAGIC


def describe(path: str) -> Dict[str, Any]:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        from .runtime.errors import InputError
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    if head == GGUF_MAGIC:
        info = gguf.read(path)
        return {"kind": "gguf", "path": path, "model": info.summary(),
                "chat_template": _template(info)}
    with Archive.open(path) as arch:
        models: Dict[str, Any] = {}
        projectors: Dict[str, Any] = {}
        members: List[Dict[str, Any]] = []
        for m in sorted(arch.members.values(), key=lambda m: m.offset):
            entry = arch.manifest_entry(m.name) or {}
            align = entry.get("align", 1)
            members.append({
                "name": m.name, "kind": entry.get("kind", "unlisted"), "offset": m.offset,
                "size": m.size, "stored": m.stored, "align": align,
                "aligned": align <= 1 or m.offset % align == 0,
            })
            if entry.get("kind") in ("model", "mmproj"):
                # Read the GGUF in place, straight out of the archive (no extraction).
                summary = gguf.read(path, m.offset, m.size).summary()
                (projectors if entry["kind"] == "mmproj" else models)[m.name] = summary
        for name, summary in models.items():
            summary["mmproj"] = arch.manifest.mmproj(name)
        return {
            "kind": "pyfile", "path": path, "size": arch.file_size,
            "format": arch.manifest.format, "tool": arch.manifest.tool,
            "engine": arch.manifest.engine,
            "default_model": arch.default_model, "models": models, "projectors": projectors,
            "args": arch.args_text(), "members": members,
            "runtimes": [{"python": r.get("python"), "libc": r.get("libc"),
                          "libc_version": r.get("libc_version"), "machine": r.get("machine")}
                         for r in arch.manifest.runtimes],
            "interpreters": {m["name"].rsplit("/", 1)[-1].split(".")[0].replace(
                "cpython-", ""): m["size"] for m in members if m["kind"] == "interpreter"},
        }


def _template(info: gguf.GGUFInfo) -> Any:
    t = info.get("tokenizer.chat_template")
    return t if isinstance(t, str) else None


def _model_lines(name: str, s: Dict[str, Any]) -> List[str]:
    params = s.get("parameters") or 0
    return [
        f"model {name}",
        f"  architecture    {s.get('architecture')}",
        f"  name            {s.get('name')}",
        f"  parameters      {params / 1e6:.1f} M" if params < 1e9 else
        f"  parameters      {params / 1e9:.2f} B",
        f"  quantization    {s.get('quantization')}",
        f"  context length  {s.get('context_length')}",
        f"  layers          {s.get('block_count')}",
        f"  vocabulary      {s.get('vocab_size')}",
        f"  chat template   {'yes' if s.get('chat_template') else 'no'}",
        f"  tensors         {s.get('tensor_count')} (data at +{s.get('data_offset')}, "
        f"aligned {s.get('alignment')})",
    ]


def format_text(info: Dict[str, Any]) -> str:
    lines: List[str] = []
    if info["kind"] == "gguf":
        lines.append(f"{info['path']}: GGUF v{info['model']['gguf_version']}, "
                     f"{info['model']['size']} bytes")
        lines += _model_lines(info["path"], info["model"])
        return "\n".join(lines) + "\n"
    lines.append(f"{info['path']}: pyfile format {info['format']} ({info['tool']}, "
                 f"engine llama-cpp-python {info['engine']}), {info['size']} bytes")
    for name, s in info["models"].items():
        lines += _model_lines(name + (" (default)" if name == info["default_model"] else ""), s)
        proj = info["projectors"].get(s.get("mmproj") or "")
        if proj:
            p = proj["projector"]
            inputs = ", ".join(k for k in ("vision", "audio") if p.get(k)) or "none"
            lines.append(f"  projector       {s['mmproj']} ({p.get('type')}, embeddings "
                         f"{p.get('projection_dim')} wide; inputs: {inputs})")
    rts = info.get("runtimes") or []
    if rts:
        floor = max((str(r.get("libc_version")) for r in rts),
                    key=versions.parse_or)
        machines = sorted({str(r.get("machine")) for r in rts})
        pythons = sorted({str(r["python"]) for r in rts}, key=versions.parse_or)
        lines.append(f"runtime         CPython {', '.join(pythons)} "
                     f"on {', '.join(machines)} Linux, glibc {floor} or newer")
    carried = info.get("interpreters") or {}
    if carried:
        lines.append("interpreter     carried for " + ", ".join(
            f"{m} ({size / 1e6:.1f} MB)" for m, size in sorted(carried.items()))
            + ": the file needs nothing but Linux")
    else:
        lines.append("runtime         none (slim: the target needs llama-cpp-python installed)")
    baked = info["args"].strip()
    lines.append(f"baked args      {baked if baked else '(none)'}")
    lines.append("members")
    for m in info["members"]:
        note = "" if m["align"] <= 1 else (f"  aligned {m['align']}" if m["aligned"]
                                           else f"  NOT aligned to {m['align']}")
        lines.append(f"  {m['offset']:>12}  {m['size']:>12}  {'stored ' if m['stored'] else 'deflate'}"
                     f"  {m['name']}{note}")
    return "\n".join(lines) + "\n"


__all__ = ["describe", "format_text"]
