"""The ``pyfile`` command (build time): build, inspect, verify, args, add.

Library code raises :class:`~pyfile.runtime.errors.PyfileError`; :func:`main` alone turns
errors into one line on stderr and an exit status (2 for usage, 1 otherwise, 130 for Ctrl-C).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, List, Optional

import click

from . import __version__
from .runtime.errors import PyfileError, UsageError
from .runtime.rpc.protocol import DEFAULT_PORT as DEFAULT_RPC_PORT

BAR_THRESHOLD = 64 << 20


class _Bar:
    """click's progress bar on stderr, only for big inputs and only on a terminal."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Any = None

    def start(self, total: int) -> None:
        if total >= BAR_THRESHOLD and sys.stderr.isatty():
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr,
                                         show_eta=True, show_percent=True)
            self.bar.__enter__()

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pyfile")
def cli() -> None:
    """Turn a GGUF language model into one executable file.

    The file is a POSIX shell script and a zip archive at once: copy it anywhere,
    chmod +x, run it.
    """


@cli.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.argument("extra", nargs=-1, type=click.Path(dir_okay=True))
@click.option("-o", "--output", required=True, type=click.Path(),
              help="The pyfile to write (replaced atomically).")
@click.option("--args", "args_text", default="", metavar="TEXT",
              help="Baked arguments (.args syntax; '...' marks where the user's go).")
@click.option("--args-file", type=click.File("r"), default=None,
              help="Read the baked arguments from a file.")
@click.option("--align", default=None, type=int,
              help="Align model data to this many bytes (default 65536: any page size).")
@click.option("--backend", "backends", multiple=True, metavar="KIND=DIR",
              help="Pack the GPU variant in DIR (from scripts/build-variant.sh KIND DIR).")
@click.option("--no-gpu-variants", "no_gpu_variants", is_flag=True,
              help="Leave out the GPU variants packed by default (those in $PYFILE_VARIANTS).")
@click.option("--gpu-variants", "gpu_kinds", default=None, metavar="KIND[,KIND]",
              help="Pack only these of the published GPU variants: cuda, rocm, vulkan.")
@click.option("--slim", is_flag=True,
              help="Leave the runtime out: the target needs llama-cpp-python installed.")
@click.option("--arch", "arches", default=None, metavar="MACHINE[,MACHINE]",
              help="Carry the interpreter for these machines only: x86_64, aarch64 "
                   "(default: both).")
@click.option("--python", "pythons", default=None, metavar="3.X,3.Y",
              help="Carry no interpreter but runtimes for these CPython versions (of "
                   "3.9 to 3.14) found on the target.")
@click.option("--wheels", "wheel_dir", default=None, type=click.Path(),
              help="Take the runtime's wheels from this folder (offline) instead of the index.")
@click.option("--engine", "engine_wheel", default=None, type=click.Path(),
              help="Pack this llama-cpp-python wheel (default: the one 'pyfile engine build' "
                   "made).")
@click.option("--mmproj", default=None, type=click.Path(dir_okay=True), metavar="GGUF",
              help="A multimodal projector for MODEL: the file then takes images.")
@click.option("--sha256", is_flag=True,
              help="Also record the SHA-256 of the model and extra files (as sha256sum "
                   "prints it; one more pass over the weights). CRC-32 always.")
@click.option("--allow-unportable-engine", is_flag=True,
              help="Pack a native or new-glibc engine anyway (the file then runs only on "
                   "machines like this one).")
def build(model: str, extra: List[str], output: str, args_text: str,
          args_file: Any, align: int, backends: List[str], no_gpu_variants: bool, slim: bool,
          pythons: Optional[str], wheel_dir: Optional[str], engine_wheel: Optional[str],
          sha256: bool, allow_unportable_engine: bool, mmproj: Optional[str],
          arches: Optional[str], gpu_kinds: Optional[str]) -> None:
    """Pack MODEL (a .gguf, or a zip holding one) and EXTRA files into OUTPUT.

    EXTRA may hold more models (the file serves them all; MODEL is the default) and
    projectors (each paired with the model before it)."""
    from .builder import DEFAULT_ALIGN, RuntimeOptions, build as do_build
    align = DEFAULT_ALIGN if align is None else align
    if args_file is not None:
        args_text = args_file.read()
    gpu_variants: Any = not no_gpu_variants
    if gpu_kinds is not None and not no_gpu_variants:
        from .runtime.backend.choice import LIB_OF
        gpu_variants = [k.strip() for k in gpu_kinds.split(",") if k.strip()]
        unknown = [k for k in gpu_variants if k not in LIB_OF]
        if unknown:
            raise UsageError(f"--gpu-variants: unknown kind {unknown[0]!r} (choose from "
                             f"{', '.join(LIB_OF)})")
    bar = _Bar("building")
    runtime = RuntimeOptions(slim, pythons, wheel_dir, engine_wheel, allow_unportable_engine,
                             arches)
    try:
        result = do_build(model, output, list(extra), args_text, align, progress=bar.update,
                          on_start=bar.start, backends=list(backends), runtime=runtime,
                          sha256=sha256, gpu_variants=gpu_variants, mmproj=mmproj)
    finally:
        bar.finish()
    for note in result.notes:
        click.echo(f"pyfile: {note}", err=True)
    click.echo(f"pyfile: wrote {result.output} ({_size(result.size)})", err=True)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(file: str, as_json: bool) -> None:
    """Describe a .pyfile or a .gguf without running anything from it."""
    from .inspector import describe, format_text
    info = describe(file)
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
    else:
        click.echo(format_text(info), nl=False)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=True))
def verify(file: str) -> None:
    """Check every member's CRC-32 and recorded SHA-256, the offsets and the alignment."""
    from .runtime.container.archive import Archive
    from .runtime.errors import VerifyError
    bar = _Bar("verifying")
    with Archive.open(file) as arch:
        bar.start(sum(m.size for m in arch.members.values()))
        try:
            problems = arch.verify(progress=bar.update)
        finally:
            bar.finish()
        count = len(arch.members)
        crc_only = sorted(e["name"] for e in arch.manifest.members
                          if not e.get("sha256"))
    if problems:
        for p in problems[:-1]:
            click.echo(f"pyfile: {file}: {p}", err=True)
        raise VerifyError(f"{file}: {problems[-1]}")
    note = f"; CRC-32 only for {', '.join(crc_only)} (built without --sha256)" if crc_only \
        else ""
    click.echo(f"pyfile: {file}: OK ({count} members{note})")


@cli.command()
@click.argument("file", type=click.Path(dir_okay=True))
@click.option("--set", "new_args", default=None, metavar="TEXT",
              help="Replace the baked arguments in place (the weights are not rewritten).")
def args(file: str, new_args: Optional[str]) -> None:
    """Print FILE's baked arguments, or replace them with --set."""
    if new_args is not None:
        from .editor import set_args
        set_args(file, new_args)
        click.echo(f"pyfile: {file}: arguments replaced", err=True)
        return
    from .runtime.container.archive import Archive
    with Archive.open(file) as arch:
        click.echo(arch.args_text(), nl=False)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=True))
@click.argument("extra", nargs=-1, type=click.Path(dir_okay=True))
@click.option("--mmproj", default=None, type=click.Path(dir_okay=True), metavar="GGUF",
              help="A multimodal projector for FILE's default model.")
@click.option("--align", default=None, type=int,
              help="Align the new members' data to this many bytes (default 65536).")
def add(file: str, extra: List[str], align: Optional[int], mmproj: Optional[str]) -> None:
    """Append EXTRA files (another model, an mmproj, a prompt) to FILE in place.

    A projector is paired with the model added before it, else with FILE's default model."""
    from .builder import DEFAULT_ALIGN
    from .editor import add_files
    align = DEFAULT_ALIGN if align is None else align
    bar = _Bar("adding")
    try:
        bar.start(sum(os.path.getsize(p) for p in (*extra, mmproj or "") if os.path.isfile(p)))
        add_files(file, list(extra), align, progress=bar.update, mmproj=mmproj)
    finally:
        bar.finish()
    click.echo(f"pyfile: {file}: added {len(extra) + bool(mmproj)} file(s)", err=True)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=DEFAULT_RPC_PORT, show_default=True, type=int)
def worker(host: str, port: int) -> None:
    """Serve this machine's CPU to a pyfile run with --rpc (no model file needed)."""
    from .runtime.rpc.worker import standalone_worker
    sys.exit(standalone_worker(host, port))


@cli.group()
def engine() -> None:
    """The portable engine every pyfile carries (built once, cached, reused)."""


@engine.command("build")
@click.option("--source", default=None, type=click.Path(),
              help="Build from this llama-cpp-python sdist instead of downloading it.")
@click.option("-j", "--jobs", default=None, type=int, help="Parallel compile jobs.")
@click.option("--force", is_flag=True, help="Build again even if a cached engine exists.")
@click.option("--arch", default="x86_64", show_default=True,
              type=click.Choice(["x86_64", "aarch64"]),
              help="The machine to build for (aarch64 is cross-compiled).")
def engine_build(source: Optional[str], jobs: Optional[int], force: bool, arch: str) -> None:
    """Compile llama-cpp-python for every CPU of a machine and glibc 2.28+ (once; ~10 min).

    Prints the wheel's path on stdout; progress goes to stderr.
    """
    from .engines import build_engine
    progress = _StageProgress()
    try:
        wheel = build_engine(source, jobs, progress.update, force, arch)
    finally:
        progress.finish()
    click.echo(wheel)


@cli.group()
def python() -> None:
    """The CPython every pyfile carries (built once per machine, cached, reused)."""


@python.command("build")
@click.option("--arch", "arches", default=None, metavar="MACHINE[,MACHINE]",
              help="x86_64, aarch64 (default: both).")
@click.option("-j", "--jobs", default=None, type=int, help="Parallel compile jobs.")
@click.option("--force", is_flag=True, help="Build again even if a cached one exists.")
def python_build(arches: Optional[str], jobs: Optional[int], force: bool) -> None:
    """Compile CPython 3.13 and the C libraries its modules need for glibc 2.28+ with zig
    (once per machine; ~15-25 min each on 2 cores).

    Prints each interpreter's tar.gz on stdout; progress goes to stderr.
    """
    from . import carried
    for arch in carried.parse_arches(arches):
        progress = _StageProgress(f"the {arch} interpreter")
        try:
            found = carried.build(arch, jobs, lambda a, pct, stage: progress.update(
                pct, f"{a}: {stage}"), force)
        finally:
            progress.finish()
        click.echo(found.tarball)


@engine.command("check")
@click.argument("wheel", required=False, type=click.Path())
def engine_check(wheel: Optional[str]) -> None:
    """Say whether WHEEL (default: the engine 'pyfile build' would pack) is portable."""
    from . import engines
    eng = engines.from_wheel(wheel) if wheel else engines.find_engine(None, True)
    found = engines.problems(eng)
    where = eng.origin or "the installed llama-cpp-python"
    if found:
        raise engines.EngineBuildError(f"{where}: not portable: {'; '.join(found)}")
    click.echo(f"pyfile: {where}: portable (llama-cpp-python {eng.version}, needs glibc "
               f"{engines.glibc_floor(eng)}+, {sum(1 for p in eng.libraries() if '-cpu-' in p)} "
               f"CPU variants)")


@engine.command("toolchain")
def engine_toolchain() -> None:
    """Print the folder of zig compilers (zig-cc, zig-c++, zig-ar, zig-ranlib) aimed at
    glibc 2.28 that the engine is built with (made once; scripts/build-variant.sh uses it)."""
    from .engines import toolchain
    click.echo(toolchain())


class _StageProgress:
    """A percentage bar on a terminal, a line per stage (and every 10%) otherwise."""

    def __init__(self, what: str = "the engine") -> None:
        self.what = what
        self.bar: Any = None
        self.last = (-1, "")

    def update(self, pct: int, stage: str) -> None:
        if sys.stderr.isatty():
            if self.bar is None and "compiling" in stage:
                self.bar = click.progressbar(length=100, label=f"compiling {self.what}",
                                             file=sys.stderr, show_eta=True)
                self.bar.__enter__()
            if self.bar is not None:
                self.bar.update(max(0, pct - self.bar.pos))
            elif stage != self.last[1]:
                click.echo(f"pyfile: {stage}", err=True)
        elif stage != self.last[1] or pct // 10 > self.last[0] // 10:
            click.echo(f"pyfile: {stage} ({pct}%)", err=True)
        self.last = (pct, stage)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@cli.group()
def cache() -> None:
    """The runtimes and GPU variants that pyfiles unpacked on this machine."""


@cache.command("list")
def cache_list() -> None:
    """List unpacked runtimes with their size, last use and whether a run holds them."""
    import datetime
    from .cache import entries
    from .runtime.container.paths import run_cache
    items = entries()
    click.echo(f"cache: {run_cache()}")
    for e in items:
        when = datetime.datetime.fromtimestamp(e.last_used).strftime("%Y-%m-%d %H:%M")
        click.echo(f"  {e.kind:8} {_size(e.size):>10}  used {when}  "
                   f"{'IN USE' if e.in_use else 'idle  '}  {os.path.basename(e.path)}")
    click.echo(f"{len(items)} folder(s), {_size(sum(e.size for e in items))}")


@cache.command("prune")
@click.option("--older-than", type=float, default=0, metavar="DAYS",
              help="Only remove folders unused for this many days.")
def cache_prune(older_than: float) -> None:
    """Remove unpacked runtimes no running pyfile holds (they unpack again when needed)."""
    from .cache import prune
    removed = prune(older_than)
    for e in removed:
        click.echo(f"removed {e.kind} {os.path.basename(e.path)} ({_size(e.size)})")
    click.echo(f"pyfile: freed {_size(sum(e.size for e in removed))}", err=True)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def main(argv: Optional[List[str]] = None) -> None:
    """Console entry point: run the click group, turning errors into one line + exit code."""
    try:
        cli.main(args=argv, prog_name="pyfile", standalone_mode=False)
    except PyfileError as e:
        _fail(str(e), e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        _fail("interrupted", 130)
    except click.ClickException as e:
        _fail(e.format_message(), e.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BrokenPipeError:
        sys.exit(1)
    except Exception as e:  # a bug: one line, unless PYFILE_DEBUG asks for the traceback
        if os.environ.get("PYFILE_DEBUG"):
            raise
        _fail(f"internal error: {type(e).__name__}: {e} (set PYFILE_DEBUG=1 for details)", 1)
    sys.exit(0)


def _fail(message: str, code: int) -> None:
    click.echo(f"pyfile: {' '.join(message.split())}", err=True)
    sys.exit(code)
