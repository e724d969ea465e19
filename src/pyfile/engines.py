"""Build-time: the engine that travels inside every pyfile, built once to run anywhere.

llama-cpp-python is ctypes plus shared libraries, so ONE build of it serves every CPython.
What makes a build portable is how its libraries were compiled:

* all of ggml's CPU variants as loadable modules (``libggml-cpu-<arch>.so``) instead of one
  ``-march=native`` library, which dies with SIGILL on CPUs unlike the builder's;
* a C library floor old enough for the targets we promise (glibc 2.31: Debian 11, Ubuntu
  20.04). A compiler built on a new distribution links against its new glibc, so we compile
  with zig (PyPI package ``ziglang``), which targets a chosen glibc version (2.28) and links
  LLVM's libc++ statically (no libstdc++ or libgomp dependency). Debian 11's own gcc 10 was
  tried and cannot build every CPU variant (see the research notes).

:func:`build_engine` compiles such a wheel once (``pyfile engine build``) into the build
cache; :func:`find_engine` picks the engine for ``pyfile build`` and :func:`problems`
says why an engine is not portable.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from . import buildcache, elf
from .runtime.backend.engine import ENGINE_VERSION
from .runtime.errors import InputError, PyfileError, UsageError

ZIG_VERSION = "0.17.1"
#: The glibc the engine is compiled against; every target with this or newer loads it.
TARGET_GLIBC = "2.28"
#: The oldest glibc a pyfile promises to run on (Debian 11, Ubuntu 20.04).
PROMISED_GLIBC = (2, 31)
#: libstdc++ of that floor (GCC 10): newer symbol versions would not resolve there.
PROMISED_GLIBCXX = (3, 4, 28)
CMAKE_FLAGS = ("-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON",
               "-DGGML_RPC=ON", "-DGGML_OPENMP=OFF", "-DLLAMA_CURL=OFF")
#: Libraries a portable engine may not need: minimal systems lack them.
UNPORTABLE_LIBS = ("libgomp.so.1",)
WHEEL_GLOB = "llama_cpp_python-*.whl"
CPU_VARIANT = re.compile(r"(^|/)libggml-cpu-[a-z0-9_.]+\.so$")  # x64 ... armv9.2_2
#: What of a llama-cpp-python install a runtime needs: the package, and the CPU variants
#: that some builds put in a top-level bin/ folder of site-packages.
ENGINE_FILE = re.compile(r"(llama_cpp/|bin/libggml)")
LIB_NAME = re.compile(r"\.so(\.\d+)*$")


class EngineBuildError(PyfileError):
    """Compiling the portable engine failed."""


@dataclass
class Engine:
    """An engine to pack: a wheel file, or the llama-cpp-python installed here."""

    origin: str  # the wheel, or the installed package's folder (for messages)
    files: Dict[str, bytes] = field(default_factory=dict)  # path inside site-packages -> bytes
    version: str = ""
    identity: str = ""  # changes whenever the files do (buildcache.identity of them)
    checked: Optional[Dict[str, object]] = None  # problems and glibc, remembered per identity
    paths: Dict[str, str] = field(default_factory=dict)  # installed: path inside -> on disk

    def libraries(self) -> List[str]:
        return sorted(p for p in self.load().files if LIB_NAME.search(p))

    def load(self) -> "Engine":
        """Read the files now if they were left unread (a wheel or an installed package
        whose check was remembered: a warm build never reads their ~100 MB)."""
        if not self.files and self.origin.endswith(".whl"):
            wheel = from_wheel(self.origin)
            self.files, self.version = wheel.files, self.version or wheel.version
        elif not self.files and self.paths:
            for rel, full in self.paths.items():
                with open(full, "rb") as fh:
                    self.files[rel] = fh.read()
        return self


# -- reading engines -----------------------------------------------------------------------

def from_wheel(path: str) -> Engine:
    """Read a llama-cpp-python wheel (the files a pip install would put in site-packages)."""
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise InputError(f"--engine {path}: not a readable wheel: {e}") from None
    eng = Engine(path)
    with zf:
        for info in zf.infolist():
            rel = info.filename
            m = re.match(r"[^/]+\.data/(purelib|platlib)/(.*)", rel)
            if m:
                rel = m.group(2)
            elif ".data/" in rel.split("/")[0] or info.is_dir():
                continue
            if rel.startswith("llama_cpp_python-") and rel.split("/")[0].endswith(".dist-info"):
                if rel.endswith("/METADATA"):  # kept: importlib.metadata reads the version
                    eng.files[rel] = zf.read(info)
                    v = re.search(rb"^Version: (\S+)", eng.files[rel], re.M)
                    eng.version = v.group(1).decode() if v else ""
                continue
            if ENGINE_FILE.match(rel):
                eng.files[rel] = zf.read(info)
    if not eng.files:
        raise InputError(f"--engine {path}: not a llama-cpp-python wheel (no llama_cpp/)")
    return eng


def installed() -> Optional[Engine]:
    """The llama-cpp-python of this environment, or None. Its files are listed, not read:
    their paths, sizes and times are its identity, by which its check is remembered."""
    from importlib import metadata
    try:
        dist = metadata.distribution("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return None
    eng = Engine("", version=dist.version)
    identity = hashlib.sha256(b"installed")
    for f in dist.files or []:
        rel = str(f).replace(os.sep, "/")
        if not rel.endswith(".dist-info/METADATA") and (
                not ENGINE_FILE.match(rel) or "__pycache__" in rel):
            continue
        full = str(dist.locate_file(f))
        try:
            identity.update(f"{rel}|{buildcache.identity(full)}\n".encode())
        except OSError:
            continue
        eng.paths[rel] = full
    if not any(ENGINE_FILE.match(rel) for rel in eng.paths):
        return None
    eng.origin = str(dist.locate_file("llama_cpp"))
    eng.identity = f"installed:{identity.hexdigest()}"
    eng.checked = _remembered_check(eng)
    return eng


def problems(eng: Engine) -> List[str]:
    """Why ``eng`` would not run on every x86-64 CPU with glibc >= 2.31 (empty: portable)."""
    return list(_check(eng)["problems"])  # type: ignore[call-overload]


def glibc_floor(eng: Engine) -> str:
    """The newest GLIBC version any library of ``eng`` needs, as text ("2.27")."""
    return str(_check(eng)["glibc"])


def _check(eng: Engine) -> Dict[str, object]:
    """``eng.checked``: its problems and glibc floor, from one pass over its libraries."""
    if eng.checked is not None:
        return eng.checked
    out: List[str] = []
    libs = eng.libraries()  # reads the files (and a wheel's version) if they were not
    if eng.version and eng.version != ENGINE_VERSION:
        out.append(f"it is llama-cpp-python {eng.version}, pyfile needs {ENGINE_VERSION}")
    if not any(CPU_VARIANT.search(p) for p in libs):
        out.append("it is a native build without CPU variants (libggml-cpu-*.so), so it "
                   "dies with SIGILL on CPUs unlike the builder's")
    worst: Dict[str, Tuple[Tuple[int, ...], str]] = {}
    for rel in libs:
        try:
            needs = elf.read_needs(eng.files[rel])
        except elf.ELFError:
            continue
        for prefix in ("GLIBC", "GLIBCXX"):
            v = needs.newest(prefix)
            if v and (prefix not in worst or v > worst[prefix][0]):
                worst[prefix] = (v, rel.rsplit("/", 1)[-1])
        for lib in needs.libraries:
            if lib in UNPORTABLE_LIBS:
                out.append(f"{rel.rsplit('/', 1)[-1]} needs {lib}, which minimal systems lack")
    for prefix, floor in (("GLIBC", PROMISED_GLIBC), ("GLIBCXX", PROMISED_GLIBCXX)):
        if prefix in worst and worst[prefix][0] > floor:
            v, lib = worst[prefix]
            out.append(f"{lib} needs {prefix}_{elf.version_text(v)}, newer than "
                       f"{'glibc' if prefix == 'GLIBC' else 'libstdc++'} "
                       f"{elf.version_text(floor)} of Debian 11")
    glibc = elf.version_text(worst["GLIBC"][0]) if "GLIBC" in worst else "2.17"
    eng.checked = {"version": eng.version, "problems": out, "glibc": glibc}
    return eng.checked


def _remembered_check(eng: Engine) -> Dict[str, object]:
    """:func:`_check` of ``eng``, kept in the build cache by ``eng.identity`` (a damaged
    entry is checked again)."""
    import json
    key = hashlib.sha256(eng.identity.encode()).hexdigest()
    raw = buildcache.remembered(f"{key}.check", lambda: json.dumps(_check(eng)).encode())
    try:
        checked = json.loads(raw)
        if isinstance(checked.get("problems"), list) and "glibc" in checked:
            return checked
    except (ValueError, AttributeError):
        pass
    return _check(eng)


# -- choosing the engine for a build -------------------------------------------------------

def engines_dir() -> str:
    return buildcache.folder("engines")


#: The machines an engine is built for (on an x86-64 builder; aarch64 cross-compiled).
ARCHES = ("x86_64", "aarch64")


def _engine_folder_glob(arch: str) -> str:
    # x86-64 engines keep the folder name they had before aarch64 ones existed.
    tag = "" if arch == "x86_64" else f"{arch}-"
    return os.path.join(engines_dir(), f"llama-cpp-python-{ENGINE_VERSION}-{tag}*")


def cached_wheels(arch: str = "x86_64") -> List[str]:
    """Portable engine wheels for ``arch`` built by ``pyfile engine build``, newest first."""
    found = glob.glob(os.path.join(_engine_folder_glob(arch), WHEEL_GLOB))
    if arch == "x86_64":
        found = [w for w in found if not any(f"-{a}-" in os.path.basename(os.path.dirname(w))
                                             for a in ARCHES if a != arch)]
    return sorted(found, key=os.path.getmtime, reverse=True)


HOW_TO_GET = (f"run 'pyfile engine build' once (it compiles llama-cpp-python {ENGINE_VERSION} "
              f"for every x86-64 CPU and glibc {TARGET_GLIBC}+, about 10 minutes on 2 cores), "
              f"or give --engine WHEEL")


def find_engine(wheel: Optional[str] = None, allow_unportable: bool = False,
                arch: str = "x86_64") -> Engine:
    """The engine to pack: ``--engine WHEEL``, else the cached portable build, else the
    installed one if it is portable. An unportable engine is refused unless allowed.
    For another ``arch`` than x86-64 only the cached build will do."""
    if not wheel:
        cached = cached_wheels(arch)
        wheel = cached[0] if cached else None
        if wheel is None and arch != "x86_64":
            raise InputError(f"no {arch} engine to pack: run 'pyfile engine build --arch "
                             f"{arch}' once (cross-compiled with zig, about 15 minutes on "
                             f"2 cores), or narrow the file with --arch x86_64")
    if wheel:
        eng = _checked_wheel(wheel)
    else:
        eng = installed()
        if eng is None:
            raise InputError(f"no engine to pack: {HOW_TO_GET}")
    found = problems(eng)
    if found and not allow_unportable:
        where = eng.origin or "the installed llama-cpp-python"
        raise InputError(f"refusing to pack the engine from {where}: {found[0]}; {HOW_TO_GET} "
                         f"(--allow-unportable-engine packs it anyway, for this machine only)")
    if eng.version and eng.version != ENGINE_VERSION:
        raise InputError(f"{eng.origin}: llama-cpp-python {eng.version} cannot be packed; "
                         f"pyfile runs on {ENGINE_VERSION} only")
    return eng


def _checked_wheel(path: str) -> Engine:
    """The engine in wheel ``path``; its portability check is remembered in the build cache
    by the wheel's identity, so later builds neither read nor parse its 100 MB of files."""
    try:
        eng = Engine(path, identity=buildcache.identity(path))
    except OSError as e:
        raise InputError(f"--engine {path}: cannot read: {e.strerror or e}") from None
    eng.checked = _remembered_check(eng)  # reads the wheel only when not remembered
    eng.version = str(eng.checked.get("version") or "")
    return eng


# -- building the portable engine ----------------------------------------------------------

Progress = Optional[Callable[[int, str], None]]


def build_key(arch: str = "x86_64") -> str:
    parts = [ENGINE_VERSION, ZIG_VERSION, TARGET_GLIBC, *CMAKE_FLAGS]
    if arch != "x86_64":  # (the x86-64 key stays what it was: its cached builds remain)
        parts += [arch, *CROSS_FLAGS, ARM_CC_WRAPPER]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def run_logged(cmd: List[str], log: str, cwd: Optional[str] = None,
               env: Optional[Dict[str, str]] = None,
               on_line: Optional[Callable[[str], None]] = None) -> int:
    """Run ``cmd`` (in ``cwd``) with its output appended to ``log`` and each line handed to
    ``on_line`` (progress); its exit status. Ctrl-C or any error kills it before re-raising."""
    with open(log, "a") as out:
        out.write(f"$ (cd {cwd} && {' '.join(cmd)})\n" if cwd else f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env, errors="replace")
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                out.write(line)
                if on_line:
                    on_line(line)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return proc.wait()


def _pip(*args: str, log: Optional[str] = None, env: Optional[Dict[str, str]] = None,
         on_line: Optional[Callable[[str], None]] = None) -> None:
    code = run_logged([sys.executable, "-m", "pip", *args], log or os.devnull, env=env,
                      on_line=on_line)
    if code:
        raise EngineBuildError(f"'pip {args[0]}' failed (exit {code}); the full log is {log}"
                               if log else f"'pip {' '.join(args)}' failed (exit {code})")


def _zig(tools: str, log: str) -> str:
    """The zig compiler from the ``ziglang`` wheel, unpacked once into the build cache."""
    target = os.path.join(tools, f"zig-{ZIG_VERSION}")
    exe = os.path.join(target, "ziglang", "zig")
    if os.path.isfile(exe):
        return exe
    with tempfile.TemporaryDirectory() as d:
        _pip("download", "--quiet", "--no-deps", "--only-binary", ":all:", "-d", d,
             f"ziglang=={ZIG_VERSION}", log=log)
        (wheel,) = glob.glob(os.path.join(d, "ziglang-*.whl"))
        with buildcache.publishing(target) as work:
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(work)
            os.chmod(os.path.join(work, "ziglang", "zig"), 0o755)
    return exe


#: The compiler wrappers :func:`toolchain` makes: name -> zig subcommand.
TOOLS = {"cc": f"cc -target x86_64-linux-gnu.{TARGET_GLIBC}",
         "c++": f"c++ -target x86_64-linux-gnu.{TARGET_GLIBC}",
         "ar": "ar", "ranlib": "ranlib"}
#: CMake's cross-compiling switches for an aarch64 engine.
CROSS_FLAGS = ("-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64")
#: zig reads ``-march`` as ``-mcpu`` on aarch64 and spells architecture versions and some
#: features its own way, so ggml's per-variant ``-march=armv8.2-a+dotprod+fp16`` is
#: rewritten to ``-mcpu=generic+v8_2a+dotprod+fullfp16`` before zig sees it.
ARM_CC_WRAPPER = r"""#!/bin/sh
for a do
    shift
    case $a in
        -march=armv*)
            spec=${a#-march=armv}
            base=${spec%%+*}
            feats=$(printf '%s' "${spec#"$base"}" | sed -e 's/+fp16/+fullfp16/g' -e 's/+no\([a-z0-9]*\)/-\1/g')
            base=v$(printf '%s' "${base%-a}" | tr . _)a
            set -- "$@" "-mcpu=generic+$base$feats" ;;
        *) set -- "$@" "$a" ;;
    esac
done
exec "@ZIG@" @SUB@ -target aarch64-linux-gnu.@GLIBC@ "$@"
"""


def toolchain(log: Optional[str] = None, arch: str = "x86_64") -> str:
    """A folder of compilers around zig (``zig-cc``, ``zig-c++``, ``zig-ar``,
    ``zig-ranlib``: CMake and configure want one executable per tool) aiming at
    ``<arch>-linux-gnu`` with glibc :data:`TARGET_GLIBC`: what the engine, the carried
    interpreter and ``scripts/build-variant.sh`` compile with. Made once in the build cache
    (``pyfile engine toolchain`` prints the x86-64 one)."""
    zig = _zig(buildcache.folder("tools"), log or os.devnull)
    if arch not in ARCHES:
        raise UsageError(f"--arch {arch}: not one of {', '.join(ARCHES)}")
    key = hashlib.sha256(ARM_CC_WRAPPER.encode()).hexdigest()[:8]
    folder = os.path.join(os.path.dirname(os.path.dirname(zig)),
                          "bin" if arch == "x86_64" else f"bin-{arch}-{key}")
    if not all(os.path.isfile(os.path.join(folder, f"zig-{n}")) for n in TOOLS):
        with buildcache.publishing(folder) as work:
            for name, sub in TOOLS.items():
                path = os.path.join(work, f"zig-{name}")
                if arch == "x86_64" or name in ("ar", "ranlib"):
                    text = f'#!/bin/sh\nexec "{zig}" {sub} "$@"\n'
                else:
                    text = (ARM_CC_WRAPPER.replace("@ZIG@", zig).replace("@SUB@", name)
                            .replace("@GLIBC@", TARGET_GLIBC))
                with open(path, "w") as f:
                    f.write(text)
                os.chmod(path, 0o755)
    return folder


def build_engine(source: Optional[str] = None, jobs: Optional[int] = None,
                 progress: Progress = None, force: bool = False, arch: str = "x86_64") -> str:
    """Compile the portable engine wheel for ``arch`` once; return its path in the build
    cache (an aarch64 engine is cross-compiled, with ggml's ARM CPU variants).

    ``source``: a llama-cpp-python sdist to build from (default: downloaded). ``progress``
    receives (percent, stage). Raises :class:`EngineBuildError` with the log's path.
    """
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        raise UsageError("pyfile engine build makes Linux engines and runs on x86-64 "
                         "Linux only")
    if arch not in ARCHES:
        raise UsageError(f"--arch {arch}: not one of {', '.join(ARCHES)}")
    tag = "" if arch == "x86_64" else f"{arch}-"
    target = os.path.join(engines_dir(),
                          f"llama-cpp-python-{ENGINE_VERSION}-{tag}{build_key(arch)}")
    done = glob.glob(os.path.join(target, WHEEL_GLOB))
    if done and not force:
        return done[0]
    os.makedirs(engines_dir(), exist_ok=True)
    import fcntl
    with open(f"{target}.lock", "a") as lock:  # one build of an engine at a time; the
        fcntl.flock(lock, fcntl.LOCK_EX)  # one that waited finds it done
        done = glob.glob(os.path.join(target, WHEEL_GLOB))
        if done and not force:
            return done[0]
        return _build_engine_locked(target, source, jobs, progress, force, arch, tag)


def _build_engine_locked(target: str, source: Optional[str], jobs: Optional[int],
                         progress: Progress, force: bool, arch: str, tag: str) -> str:
    if force and os.path.isdir(target):
        shutil.rmtree(target)
    log = os.path.join(engines_dir(), f"build-{tag}{build_key(arch)}.log")
    with open(log, "w"):
        pass
    say = progress or (lambda pct, stage: None)
    say(0, "fetching zig and the llama-cpp-python source")
    bin_dir = toolchain(log, arch)
    with buildcache.publishing(target) as work, tempfile.TemporaryDirectory() as scratch:
        if source is None:
            _pip("download", "--quiet", "--no-deps", "--no-binary", ":all:", "-d", scratch,
                 f"llama-cpp-python=={ENGINE_VERSION}", log=log)
            (source,) = glob.glob(os.path.join(scratch, "llama_cpp_python-*.tar.gz"))
        elif not os.path.isfile(source):
            raise InputError(f"--source {source}: no such file")
        tool = {name: os.path.join(bin_dir, f"zig-{name}") for name in TOOLS}
        flags = [f"-DCMAKE_C_COMPILER={tool['cc']}", f"-DCMAKE_CXX_COMPILER={tool['c++']}",
                 f"-DCMAKE_AR={tool['ar']}", f"-DCMAKE_RANLIB={tool['ranlib']}",
                 *CMAKE_FLAGS, *(CROSS_FLAGS if arch != "x86_64" else ())]
        env = dict(os.environ, CMAKE_ARGS=" ".join(flags),
                   CMAKE_GENERATOR="Unix Makefiles",  # Ninja loops on "still dirty" with zig
                   CMAKE_BUILD_PARALLEL_LEVEL=str(jobs or os.cpu_count() or 2))
        env.pop("MAKEFLAGS", None)

        def on_line(line: str) -> None:
            m = re.match(r"\s*\[\s*(\d+)%\]", line)
            if m:
                say(int(m.group(1)), "compiling")

        say(1, "compiling")
        _pip("wheel", "-v", "--no-deps", "--no-cache-dir", "-w", work, source, log=log,
             env=env, on_line=on_line)
        (wheel,) = glob.glob(os.path.join(work, WHEEL_GLOB))
        found = problems(from_wheel(wheel))
        if found:
            raise EngineBuildError(f"the engine built but is not portable: {found[0]} "
                                   f"(log: {log})")
    say(100, "done")
    return glob.glob(os.path.join(target, WHEEL_GLOB))[0]


__all__ = ["Engine", "EngineBuildError", "build_engine", "find_engine", "problems",
           "from_wheel", "installed", "cached_wheels", "glibc_floor", "toolchain",
           "PROMISED_GLIBC", "ARCHES"]
