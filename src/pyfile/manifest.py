"""The manifest: one JSON member that says what a pyfile holds (written at build time)."""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Optional

from . import FORMAT_VERSION, __version__
from .zipwriter import Entry


def member_record(entry: Entry, kind: str, align: int = 1) -> Dict[str, Any]:
    return {
        "name": entry.name,
        "kind": kind,
        "offset": entry.data_offset,
        "size": entry.size,
        "compressed": entry.method != 0,
        "crc32": f"{entry.crc32:08x}",
        "sha256": entry.sha256,
        "align": align,
    }


def engine_version() -> Optional[str]:
    try:
        from importlib.metadata import version
        return version("llama-cpp-python")
    except Exception:
        return None


def render(members: Iterable[Dict[str, Any]], models: Dict[str, Dict[str, Any]],
           default_model: Optional[str], epoch: Optional[int],
           variants: Optional[Dict[str, Any]] = None,
           runtimes: Optional[List[Dict[str, Any]]] = None) -> bytes:
    """Serialise deterministically (sorted keys, no timestamps unless SOURCE_DATE_EPOCH)."""
    data: Dict[str, Any] = {
        "format": FORMAT_VERSION,
        "tool": f"pyfile {__version__}",
        "engine": engine_version(),
        "default_model": default_model,
        "members": list(members),
        "models": models,
        "variants": variants or {},
        "runtimes": runtimes or [],
    }
    if epoch is not None:
        data["source_date_epoch"] = epoch
    return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8")
