"""The manifest: one JSON member that says what a pyfile holds.

:class:`Manifest` is its only reader and writer: the builder and the editor fill one in and
serialise it (deterministically: sorted keys, no timestamps unless SOURCE_DATE_EPOCH), the
run time and ``inspect``/``verify`` parse it. Parsing validates every field it will use and
fills defaults, so no caller handles a missing key or a value of the wrong type.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ... import FORMAT_VERSION
from ..errors import ArchiveError

MANIFEST_NAME = ".pyfile/manifest.json"
MAX_MEMBERS = 100_000


@dataclass
class Manifest:
    """What a pyfile holds: members with their digests, models, GPU variants, runtimes."""

    tool: str = ""
    engine: Optional[str] = None  # llama-cpp-python version of the carried engine
    default_model: Optional[str] = None
    members: List[Dict[str, Any]] = field(default_factory=list)
    models: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    #: Multimodal projectors (member -> summary with its ``projection_dim``); a model they
    #: belong to names one in its record's ``"mmproj"``.
    projectors: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    variants: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    runtimes: List[Dict[str, Any]] = field(default_factory=list)  # one per CPython target
    source_date_epoch: Optional[int] = None
    format: int = FORMAT_VERSION

    # -- reading ---------------------------------------------------------------------------

    def entry(self, name: str) -> Optional[Dict[str, Any]]:
        """The record of member ``name``, or None."""
        for record in self.members:
            if record["name"] == name:
                return record
        return None

    def names(self, kind: str) -> List[str]:
        """Names of the members of one kind ("model", "variant", ...), in file order."""
        return [m["name"] for m in self.members if m.get("kind") == kind]

    def mmproj(self, model: str) -> Optional[str]:
        """The member holding ``model``'s projector, or None (a text-only model)."""
        name = (self.models.get(model) or {}).get("mmproj")
        return name if isinstance(name, str) and self.entry(name) is not None else None

    def pair(self, model: str, projector: str, summary: Dict[str, Any]) -> None:
        """Record ``projector`` (a member) as ``model``'s multimodal projector."""
        self.projectors[projector] = summary
        self.models.setdefault(model, {})["mmproj"] = projector

    @property
    def pythons(self) -> List[str]:
        """The CPython versions whose runtime this file carries ("3.9", ...)."""
        return [str(r.get("python")) for r in self.runtimes]

    # -- writing ---------------------------------------------------------------------------

    def add_member(self, entry: Any, kind: str, align: int = 1) -> None:
        """Record a member written by the zip writer (an ``Entry``-like object)."""
        self.members = [m for m in self.members if m["name"] != entry.name]
        self.members.append({
            "name": entry.name, "kind": kind, "offset": entry.data_offset,
            "size": entry.size, "compressed": entry.method != 0,
            "crc32": f"{entry.crc32:08x}", "sha256": entry.sha256, "align": align,
        })

    def to_bytes(self) -> bytes:
        data: Dict[str, Any] = {
            "format": self.format, "tool": self.tool, "engine": self.engine,
            "default_model": self.default_model, "members": self.members,
            "models": self.models, "variants": self.variants, "runtimes": self.runtimes,
        }
        if self.source_date_epoch is not None:
            data["source_date_epoch"] = self.source_date_epoch
        if self.projectors:  # absent otherwise: text-only files keep their bytes
            data["projectors"] = self.projectors
        return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8")

    # -- parsing ---------------------------------------------------------------------------

    @classmethod
    def parse(cls, raw: bytes, origin: str) -> "Manifest":
        """Validate and load; raise :class:`ArchiveError` naming ``origin`` on any damage."""
        def bad(why: str) -> ArchiveError:
            return ArchiveError(f"{origin}: damaged manifest: {why}")

        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise bad(str(e)) from None
        if not isinstance(data, dict):
            raise bad("not a JSON object")
        fmt = data.get("format")
        if not isinstance(fmt, int) or isinstance(fmt, bool):
            raise bad("no format version")
        if fmt > FORMAT_VERSION:
            raise ArchiveError(f"{origin}: made by a newer pyfile (format {fmt}); "
                               f"this one reads format {FORMAT_VERSION}: upgrade pyfile")
        members = data.get("members")
        if not isinstance(members, list) or len(members) > MAX_MEMBERS:
            raise bad("'members' must be a list")
        seen = set()
        for m in members:
            if not isinstance(m, dict) or not isinstance(m.get("name"), str):
                raise bad("a member without a name")
            for key in ("size", "offset", "align"):
                v = m.get(key, 0)
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    raise bad(f"member {m['name']!r} has a bad {key!r}")
            if not isinstance(m.get("sha256", ""), str) or m["name"] in seen:
                raise bad(f"member {m['name']!r} is malformed or listed twice")
            seen.add(m["name"])
        default = data.get("default_model")
        if default is not None and (not isinstance(default, str) or default not in seen):
            raise bad("default_model does not name a member")
        for key, kind in (("models", dict), ("variants", dict), ("runtimes", list),
                          ("projectors", dict)):
            if not isinstance(data.get(key, kind()), kind):
                raise bad(f"{key!r} must be {'an object' if kind is dict else 'a list'}")
        variants = {k: v for k, v in (data.get("variants") or {}).items()
                    if isinstance(k, str) and isinstance(v, dict)}
        runtimes = [r for r in data.get("runtimes") or [] if isinstance(r, dict)]
        epoch = data.get("source_date_epoch")
        engine = data.get("engine")
        return cls(tool=str(data.get("tool") or ""),
                   engine=engine if isinstance(engine, str) else None,
                   default_model=default, members=members,
                   models={k: v for k, v in (data.get("models") or {}).items()
                           if isinstance(v, dict)},
                   projectors={k: v for k, v in (data.get("projectors") or {}).items()
                               if isinstance(k, str) and isinstance(v, dict)},
                   variants=variants, runtimes=runtimes,
                   source_date_epoch=epoch if isinstance(epoch, int) else None, format=fmt)


__all__ = ["Manifest", "MANIFEST_NAME"]
