"""What ``./model.pyfile ARGS`` does: expand ``.args``, pick a mode, load the model, run.

Exit codes: 0 success, 2 usage error, 1 anything else, 130 interrupted (Ctrl-C), 143
terminated (SIGTERM; a server or RPC worker shuts down cleanly and exits 0 instead). Errors
are one line on stderr; ``PYFILE_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, List, Optional

from .. import FORMAT_VERSION, __version__
from . import options
from .backend.engine import GGUF_MAGIC, ModelSource
from .container import argsfile
from .container.archive import Archive
from .errors import ArchiveError, InputError, PyfileError


EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C does (temp files removed, output flushed)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def log(message: str) -> None:
    sys.stderr.write(f"pyfile: {message}\n")
    sys.stderr.flush()


def main(path: str, argv: List[str]) -> int:
    """Entry point used by the bootstrap and by ``__main__.py``; returns the exit status."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return run(path, argv)
    except PyfileError as e:
        log(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return EXIT_INTERRUPTED
    except Terminated:
        return EXIT_TERMINATED
    except BrokenPipeError:
        _silence_stdout()
        return 1
    except Exception as e:
        if os.environ.get("PYFILE_DEBUG"):
            raise
        log(f"internal error: {type(e).__name__}: {e} (set PYFILE_DEBUG=1 for details)")
        return 1


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def run(path: str, argv: List[str]) -> int:
    with Archive.open(path) as arch:
        baked = argsfile.parse(arch.args_text())
        opts = options.parse(argsfile.merge(baked, argv), prog=os.path.basename(path))
        if opts.help:
            options.parser(os.path.basename(path)).print_help()
            return 0
        for line in options.warnings(opts):
            log(f"warning: {line}")
        if opts.verify:
            problems = arch.verify()
            if problems:
                raise ArchiveError(f"{path}: verification failed: {problems[0]}"
                                   + (f" (and {len(problems) - 1} more)" if len(problems) > 1
                                      else ""))
            log(f"{path}: verified {len(arch.members)} members")
        source = resolve_model(arch, opts.model)
        if opts.version:
            return print_version(arch, source)
        manifest = arch.manifest
        from .container.bundle import activate
        activate(arch)  # the carried runtime, when it fits this interpreter
    mode = choose_mode(opts)
    if opts.rpc == "none":  # a supervised server whose workers are all gone: run locally
        opts.rpc = None
    if opts.rpc and mode != "rpc-worker" and not _supervised_child():
        from .rpc import supervisor
        from .rpc.protocol import check_worker, parse_endpoints
        endpoints = parse_endpoints(opts.rpc)
        for host, port in endpoints:  # unreachable or incompatible: a clean error up front
            check_worker(host, port)
        if mode == "server":
            return supervisor.supervise_server(path, argv, endpoints, opts.host, opts.port)
        return supervisor.supervise(path, argv, endpoints)
    if mode == "rpc-worker":
        from .backend import choice
        from .backend.engine import import_llama_cpp
        from .rpc.worker import serve_worker
        sel = choice.select(source, opts.gpu, opts.verbose, manifest=manifest,
                            archive_path=path, recompile=opts.recompile)
        return serve_worker(import_llama_cpp(), opts.host, opts.port, sel.kind)
    if mode == "server":
        from .server.app import serve
        return serve(source, opts, manifest, path, open_browser=True)
    from .backend.loader import load
    llm = load(source, opts, manifest=manifest, archive_path=path)
    if not opts.no_mmproj:  # loaded on the first image (--image, /image)
        from .modes.media import SOURCE_ATTR, projector_source
        setattr(llm, SOURCE_ATTR, projector_source(path, manifest, source.name, opts.mmproj))
    if mode == "chat":
        from .modes.chat import chat
        return chat(llm, opts)
    from .modes.prompt import complete
    return complete(llm, opts)


def _supervised_child() -> bool:
    from .rpc.supervisor import CHILD_ENV
    return bool(os.environ.get(CHILD_ENV))


def choose_mode(opts: Any) -> str:
    """Mode after ``.args`` expansion: explicit flags first, then what the situation implies."""
    if opts.rpc_worker:
        return "rpc-worker"
    if opts.server:
        return "server"
    if opts.chat:
        return "chat"
    if opts.prompt is not None or opts.file is not None or opts.cli:
        return "prompt"
    if sys.stdin.isatty() and sys.stdout.isatty():
        return "chat"
    return "server"  # double-clicked: no terminal, no prompt


def resolve_model(arch: Archive, name: Optional[str]) -> ModelSource:
    """The GGUF to run: a member of this file, a .gguf on disk, or another pyfile's model."""
    if name is None:
        name = arch.default_model
        if name is None:
            raise InputError(f"{arch.path}: this pyfile holds no model; pass -m FILE.gguf")
    if name not in arch.members and name + ".gguf" in arch.manifest.names("model"):
        name += ".gguf"  # a model's id, as the server lists it
    if name in arch.members:
        return _member_source(arch, name)
    if os.path.isfile(name):
        with open(name, "rb") as f:
            head = f.read(4)
        if head == GGUF_MAGIC:
            return ModelSource(os.path.abspath(name), 0, os.path.getsize(name),
                               os.path.basename(name))
        with Archive.open(name) as other:
            if other.default_model is None:
                raise InputError(f"{name}: this pyfile holds no model")
            return _member_source(other, other.default_model)
    models = arch.manifest.names("model")
    raise InputError(f"-m {name}: no such model in this file ({', '.join(models) or 'none'}) "
                     f"and no such file")


def _member_source(arch: Archive, name: str) -> ModelSource:
    m = arch.member(name)
    if not m.stored:
        raise ArchiveError(f"{arch.path}: model {name!r} is compressed; it must be stored "
                           f"to be mapped in place (rebuild it with pyfile build)")
    arch.fp.seek(m.offset)
    if arch.fp.read(4) != GGUF_MAGIC:
        raise ArchiveError(f"{arch.path}: damaged pyfile: member {name!r} is not a GGUF")
    return ModelSource(os.path.abspath(arch.path), m.offset, m.size, name)


def print_version(arch: Archive, source: ModelSource) -> int:
    try:
        from importlib.metadata import version
        engine = version("llama-cpp-python")
    except Exception:
        engine = "not installed"
    summary = arch.manifest.models.get(source.name, {})
    print(f"pyfile {__version__} (format {FORMAT_VERSION}; built by "
          f"{arch.manifest.tool})")
    print(f"llama-cpp-python {engine} (built with {arch.manifest.engine})")
    print(f"model {source.name}: {summary.get('name')} ({summary.get('architecture')}, "
          f"{summary.get('quantization')})")
    return 0
