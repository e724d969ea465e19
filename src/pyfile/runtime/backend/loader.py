"""Load the model: choose the backend once, then create ``Llama`` instances with the weights
mapped in place from the file (the terminal modes use one; the server one per context)."""

from __future__ import annotations

from typing import Any, Dict, Optional

from . import choice
from .engine import ModelSource, create_llama
from ..container.manifest import Manifest


class Loader:
    """Selects the backend once, then creates as many ``Llama`` instances as asked for.

    Every instance maps the same weights from the pyfile, so on the CPU extra instances
    (server slots) share the weights' memory and cost only their context.
    """

    def __init__(self, source: ModelSource, opts: Any,
                 manifest: Optional[Manifest] = None,
                 archive_path: Optional[str] = None) -> None:
        summary = (manifest.models if manifest else {}).get(source.name) or {}
        self.source = source
        self.selection = choice.select(source, opts.gpu, opts.verbose, manifest=manifest,
                                         archive_path=archive_path,
                                         n_gpu_layers=opts.n_gpu_layers,
                                         n_layers=summary.get("block_count"),
                                         recompile=opts.recompile)
        if opts.rpc:
            from ..rpc.client import add_workers
            from ..rpc.protocol import parse_endpoints
            from .engine import import_llama_cpp
            names = add_workers(import_llama_cpp(), parse_endpoints(opts.rpc))
            self.selection.n_gpu_layers = (999 if opts.n_gpu_layers is None
                                           else opts.n_gpu_layers)
            self.selection.detail += f"; layers split across RPC workers {', '.join(names)}"
        choice.report(self.selection)
        self.kwargs: Dict[str, Any] = dict(
            # llama.cpp pads the context to 256 tokens while llama-cpp-python sizes its token
            # buffer by the requested n_ctx; asking for less than 256 makes them disagree.
            n_ctx=max(opts.ctx_size, 256) if opts.ctx_size else 0, n_batch=opts.batch_size,
            n_gpu_layers=self.selection.n_gpu_layers,
            use_mmap=not opts.no_mmap and source.offset % 32 == 0, verbose=opts.verbose,
            use_mlock=opts.mlock,
            seed=opts.seed if opts.seed >= 0 else 0xFFFFFFFF,
            use_extra_bufts=self.selection.extra_bufts,
        )
        if opts.threads:
            self.kwargs["n_threads"] = self.kwargs["n_threads_batch"] = opts.threads
        if opts.tensor_split:
            self.kwargs["tensor_split"] = opts.tensor_split

    def new(self, **overrides: Any) -> Any:
        return create_llama(self.source, **{**self.kwargs, **overrides})

    def guard(self) -> Any:
        from ..container.guard import FileGuard
        return FileGuard(self.source.path, self.source.offset)


def load(source: ModelSource, opts: Any, manifest: Optional[Manifest] = None,
         archive_path: Optional[str] = None) -> Any:
    """Select the backend, then create the ``Llama`` with the weights mapped in place."""
    loader = Loader(source, opts, manifest, archive_path)
    llm = loader.new()
    llm.pyfile_guard = loader.guard()
    return llm
