"""Build-time: the CPython every pyfile carries, compiled from source once per architecture.

A pyfile needs nothing on the target but Linux (glibc 2.28 or newer): it carries its own
interpreter, one per architecture (x86-64 and aarch64), and the stub runs it straight away.
This module makes those interpreters (``pyfile python build``):

* sources: Debian's original tarballs of CPython 3.13 and of the C libraries the runtime's
  modules need (libffi for ctypes, OpenSSL for ssl/hashlib, SQLite for diskcache, zlib,
  xz for lzma), each pinned by SHA-256 and fetched once into the build cache;
* compiler: zig (as for the engine, :func:`pyfile.engines.toolchain`) aimed at
  ``<arch>-linux-gnu.2.28``; the C libraries are linked statically into the extension
  modules, so the result needs only glibc (libc, libm, libpthread, libdl, librt);
* what is kept: the interpreter (``bin/python3``), the extension modules the runtime uses
  and a trimmed standard library with bytecode (no tests, IDLE, tkinter, ensurepip...).

The result per architecture is ``python.tar.gz`` (deterministic: sorted, owner 0, time 0)
in ``<build cache>/python/cpython-<version>-<arch>-<key>/``, the key being a digest of
everything that produced it (sources, zig, glibc target, configure flags, this recipe);
``python.json`` beside it records its SHA-256, size and glibc floor. The stub extracts the
tarball with ``gzip`` and ``tar`` (every Linux has them, busybox included).

The aarch64 interpreter is cross-compiled; CPython then needs a build Python of the same
version, which is the x86-64 one made first.
"""

from __future__ import annotations

import fcntl
import glob
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from . import buildcache, elf
from .runtime.errors import PyfileError, UsageError

#: The carried CPython (its bytecode tag must match the runtime's build-time bytecode).
PYTHON_VERSION = "3.13.5"
PYTHON_MINOR = "3.13"
ARCHES = ("x86_64", "aarch64")
#: The glibc the interpreter is compiled against (the engine's floor too).
TARGET_GLIBC = "2.28"
#: Bump when the steps below change in a way that changes the result.
RECIPE = 1
MIRROR = "http://deb.debian.org/debian/pool/main/"


@dataclass(frozen=True)
class SourceTarball:
    name: str  # short name, the folder it unpacks to starts with it
    path: str  # under MIRROR
    sha256: str

    @property
    def file(self) -> str:
        return os.path.basename(self.path).replace("%2b", "+")


#: Debian's original (upstream) tarballs; Debian keeps these while the release ships them.
SOURCES = (
    SourceTarball("Python", "p/python3.13/python3.13_3.13.5.orig.tar.xz",
                  "93e583f243454e6e9e4588ca2c2662206ad961659863277afcdb96801647d640"),
    SourceTarball("openssl", "o/openssl/openssl_3.5.7.orig.tar.gz",
                  "a8c0d28a529ca480f9f36cf5792e2cd21984552a3c8e4aa11a24aa31aeac98e8"),
    SourceTarball("libffi", "libf/libffi/libffi_3.4.8.orig.tar.gz",
                  "cbb7f0b3b095dc506387ec1e35b891bfb4891d05b90a495bc69a10f2293f80ff"),
    SourceTarball("sqlite3", "s/sqlite3/sqlite3_3.46.1.orig.tar.xz",
                  "d0cdd2ece271b29e7ce18095745d892517ee26d0f270065b3a25c2e9eb11639c"),
    SourceTarball("zlib", "z/zlib/zlib_1.3.dfsg%2breally1.3.1.orig.tar.gz",
                  "60dd315c07f616887caa029408308a018ace66e3d142726a97db164b3b8f69fb"),
    SourceTarball("xz", "x/xz-utils/xz-utils_5.8.1.orig.tar.xz",
                  "0b54f79df85912504de0b14aec7971e3f964491af1812d83447005807513cd9e"),
)

#: Position-independent, optimised, and without UBSan (zig turns it on in unoptimised
#: compiles, which configure's test programs are; CPython trips it).
CFLAGS = "-O2 -fPIC -fno-sanitize=undefined"
#: zig makes __DATE__/__TIME__ an error in optimised builds; CPython's getbuildinfo.c uses
#: them (the build date sys.version shows).
PYTHON_CFLAGS = CFLAGS + " -Wno-date-time"
OPENSSL_OPTIONS = ("no-shared", "no-module", "no-tests", "no-docs", "no-asm", "no-legacy",
                   "no-engine", "no-comp", "no-srp", "no-gost", "no-idea", "no-seed",
                   "no-camellia", "no-aria", "no-sm2", "no-sm3", "no-sm4", "no-whirlpool",
                   "no-rc2", "no-rc4", "no-rc5", "no-mdc2", "no-bf", "no-cast", "no-quic")
#: libffi's static trampolines crash ctypes callbacks (llama.cpp's log callback) on aarch64
#: when libffi is linked into _ctypes this way; the mmap'd ones work.
LIBFFI_OPTIONS = {"aarch64": ("--disable-exec-static-tramp",)}
#: Extension modules the runtime never uses (or whose libraries are not carried): marked
#: unavailable so configure neither looks for them nor builds them.
UNWANTED_MODULES = ("_tkinter", "_curses", "_curses_panel", "_dbm", "_gdbm", "readline",
                    "_uuid", "_bz2", "nis", "_tkinter", "xxlimited", "xxlimited_35",
                    "_testcapi", "_testinternalcapi", "_testbuffer", "_testimportmultiple",
                    "_testmultiphase", "_testsinglephase", "_testexternalinspection",
                    "_testlimitedcapi", "_testclinic", "_testclinic_limited", "_ctypes_test",
                    "xxsubtype", "_xxtestfuzz")
CONFIGURE_FLAGS = ("--disable-shared", "--disable-test-modules", "--without-ensurepip",
                   "--with-computed-gotos", "--without-doc-strings", "--with-openssl-rpath=no",
                   "--without-readline")
#: Parts of the standard library a pyfile never imports.
STDLIB_DROP = re.compile(r"^(test|idlelib|tkinter|turtledemo|ensurepip|pydoc_data|lib2to3|"
                         r"venv|__phello__|site-packages|config-[^/]*)(/|$)|"
                         r"^(turtle|pydoc|doctest|tabnanny|__hello__|_pydecimal|_pylong)\.py$|"
                         r"(^|/)tests?/|(^|/)__pycache__/")
#: The extension modules the runtime needs; a build without one of them is refused.
REQUIRED_MODULES = ("_ctypes", "_ssl", "_hashlib", "_sqlite3", "zlib", "_lzma", "_json",
                    "_socket", "select", "math", "_struct", "_datetime", "_posixsubprocess",
                    "_multiprocessing", "_random", "_decimal", "binascii", "mmap", "fcntl")
#: Programs the build runs besides zig (libffi's release tarball needs autotools).
BUILD_TOOLS = ("make", "perl", "autoreconf", "libtoolize", "aclocal")
TARBALL = "python.tar.gz"
INFO = "python.json"
#: How a compiled interpreter becomes what a pyfile carries; bump when that changes (the
#: cached tree is packed again in seconds, not compiled again).
PACK_RECIPE = 2
#: What differs between machines: the interpreter, the extension modules, the build's
#: configuration. The rest, the standard library, is bytecode only (no sources: 3.7 instead
#: of 5.8 MB zipped) in one member that every machine shares.
MACHINE_PART = re.compile(r"^(bin/|lib/python3\.13/lib-dynload/|lib/python3\.13/_sysconfigdata_)")
#: Not carried: OpenSSL a second time (1.5 MB zipped per machine; hashlib then uses
#: CPython's own hashes, ssl its own copy).
PACK_DROP = re.compile(r"^lib/python3\.13/lib-dynload/_hashlib\.")
CACHE_TAG = "cpython-313"


class PythonBuildError(PyfileError):
    """Compiling the carried interpreter failed."""


Progress = Optional[Callable[[str, int, str], None]]  # (arch, percent, stage)


@dataclass
class Carried:
    """A built interpreter for one architecture, as a pyfile carries it: its machine's part
    and the standard library every machine shares (both tar.gz)."""

    arch: str
    tarball: str  # path of this machine's python.tar.gz
    sha256: str
    size: int
    glibc: str  # the newest GLIBC_x.y any of its files needs
    version: str
    compiled: str  # the folder of the compiled interpreter (its tree/)
    stdlib: str  # path of the shared stdlib.tar.gz
    stdlib_sha256: str
    stdlib_size: int

    def tree(self) -> str:
        """The compiled interpreter, laid out as installed (the aarch64 build and the
        runtime's bytecode run the x86-64 one)."""
        return os.path.join(self.compiled, "tree")


def deps_key(arch: str) -> str:
    """What the C libraries of ``arch`` were made from (they are cached on their own)."""
    from .engines import ZIG_VERSION
    text = "|".join([arch, ZIG_VERSION, TARGET_GLIBC, str(RECIPE), CFLAGS,
                     *(s.sha256 for s in SOURCES if s.name != "Python"), *OPENSSL_OPTIONS,
                     *LIBFFI_OPTIONS.get(arch, ())])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_key(arch: str) -> str:
    text = "|".join([PYTHON_VERSION, deps_key(arch), PYTHON_CFLAGS,
                     *(s.sha256 for s in SOURCES), *UNWANTED_MODULES, *CONFIGURE_FLAGS,
                     STDLIB_DROP.pattern])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def target_folder(arch: str) -> str:
    return os.path.join(buildcache.folder("python"),
                        f"cpython-{PYTHON_VERSION}-{arch}-{build_key(arch)}")


def cached(arch: str) -> Optional[Carried]:
    """The interpreter for ``arch`` if it was built, else None; packed for carrying the
    first time it is asked for (seconds)."""
    folder = target_folder(arch)
    try:
        with open(os.path.join(folder, INFO), encoding="utf-8") as f:
            info = json.load(f)
        glibc, version = str(info["glibc"]), str(info["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    mine = _packed(arch, os.path.join(folder, "tree"), "python", MACHINE_PART.match)
    shared = None
    if arch == "x86_64" or cached_compiled("x86_64"):  # the shared part is packed from x86-64's
        shared = _packed("x86_64", os.path.join(target_folder("x86_64"), "tree"), "stdlib",
                         lambda rel: not MACHINE_PART.match(rel))
    if mine is None or shared is None:
        return None
    return Carried(arch, *mine, glibc, version, folder, *shared)


def cached_compiled(arch: str) -> bool:
    return os.path.isfile(os.path.join(target_folder(arch), INFO))


def _packed(arch: str, tree: str, part: str, select: Callable[[str], object]
            ) -> Optional[Tuple[str, str, int]]:
    """(path, sha256, size) of one part of ``tree`` packed for carrying, made once."""
    key = hashlib.sha256("|".join([build_key(arch), part, str(PACK_RECIPE),
                                   MACHINE_PART.pattern, PACK_DROP.pattern]).encode())
    folder = os.path.join(buildcache.folder("python"), f"{part}-{arch}-{key.hexdigest()[:16]}")
    record = os.path.join(folder, "part.json")
    try:
        with open(record, encoding="utf-8") as f:
            info = json.load(f)
        return os.path.join(folder, f"{part}.tar.gz"), info["sha256"], int(info["size"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if not os.path.isdir(tree):
        return None
    with buildcache.publishing(folder) as work:
        out = os.path.join(work, f"{part}.tar.gz")
        _pack({rel: full for rel, full in _carried_files(tree).items() if select(rel)}, out)
        with open(os.path.join(work, "part.json"), "w", encoding="utf-8") as f:
            json.dump({"sha256": _sha256(out), "size": os.path.getsize(out)}, f)
    return _packed(arch, tree, part, select)


def _carried_files(tree: str) -> Dict[str, str]:
    """What of a compiled tree is carried: name in the tarball -> file. Modules travel as
    their bytecode in the place of their source (sourceless imports)."""
    out: Dict[str, str] = {}
    suffix = f".{CACHE_TAG}.pyc"
    for root, _dirs, files in os.walk(tree):
        rel_root = os.path.relpath(root, tree).replace(os.sep, "/")
        for name in files:
            full = os.path.join(root, name)
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            if PACK_DROP.match(rel):
                continue
            if rel.startswith("lib/") and name.endswith(".py") and os.path.isfile(
                    os.path.join(root, "__pycache__", name[:-3] + suffix)):
                continue  # its bytecode goes instead
            if rel_root.endswith("/__pycache__"):
                if not name.endswith(suffix):
                    continue
                rel = f"{rel_root[:-len('/__pycache__')]}/{name[:-len(suffix)]}.pyc"
            out[rel] = full
    return out


def check_arch(arch: str) -> str:
    if arch not in ARCHES:
        raise UsageError(f"--arch {arch}: not one of {', '.join(ARCHES)}")
    return arch


# -- the toolchain ---------------------------------------------------------------------------

def toolchain(arch: str, log: str) -> Dict[str, str]:
    """zig's compilers for ``arch`` (:func:`pyfile.engines.toolchain`): name -> path."""
    from .engines import TOOLS, toolchain as zig_tools
    folder = zig_tools(log, arch)
    return {name: os.path.join(folder, f"zig-{name}") for name in TOOLS}


# -- sources ---------------------------------------------------------------------------------

def fetch_sources(log: str) -> Dict[str, str]:
    """name -> local path of each source tarball, downloaded once and checked by SHA-256."""
    folder = buildcache.folder("sources")
    os.makedirs(folder, exist_ok=True)
    out = {}
    for src in SOURCES:
        path = os.path.join(folder, src.file)
        if not (os.path.isfile(path) and _sha256(path) == src.sha256):
            url = MIRROR + src.path
            _log(log, f"fetching {url}")
            tmp = f"{path}.{os.getpid()}.tmp"
            try:
                with urllib.request.urlopen(url, timeout=120) as r, open(tmp, "wb") as f:
                    shutil.copyfileobj(r, f, 1 << 20)
                got = _sha256(tmp)
                if got != src.sha256:
                    raise PythonBuildError(f"{url}: SHA-256 {got}, expected {src.sha256}")
                os.replace(tmp, path)
            except OSError as e:
                raise PythonBuildError(f"cannot fetch {url}: {e}") from None
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        out[src.name] = path
    return out


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- building --------------------------------------------------------------------------------

def _log(log: str, text: str) -> None:
    with open(log, "a") as f:
        f.write(text + "\n")


def _run(cmd: List[str], cwd: str, log: str, env: Optional[Dict[str, str]] = None,
         on_line: Optional[Callable[[str], None]] = None) -> None:
    from .engines import run_logged
    code = run_logged(cmd, log, cwd=cwd, env=env, on_line=on_line)
    if code:
        raise PythonBuildError(f"'{' '.join(cmd[:2])}' failed in {os.path.basename(cwd)} "
                               f"(exit {code}); the full log is {log}")


def _unpack(tarball: str, into: str) -> str:
    with tarfile.open(tarball) as tf:
        top = tf.getmembers()[0].name.split("/")[0]
        tf.extractall(into, filter="data") if hasattr(tarfile, "data_filter") \
            else tf.extractall(into)
    return os.path.join(into, top)


def _env(tools: Dict[str, str], deps: str, cflags: str = CFLAGS) -> Dict[str, str]:
    env = dict(os.environ, CC=tools["cc"], CXX=tools["c++"], AR=tools["ar"],
               RANLIB=tools["ranlib"], CFLAGS=cflags, CPPFLAGS=f"-I{deps}/include",
               LDFLAGS=f"-L{deps}/lib")
    for var in ("MAKEFLAGS", "PYTHONPATH", "PYTHONHOME", "CONFIG_SITE"):
        env.pop(var, None)
    return env


def _deps(arch: str, srcs: Dict[str, str], tools: Dict[str, str], host_cc: str, work: str,
          deps: str, jobs: int, log: str, say: Callable[[int, str], None]) -> None:
    """zlib, xz (liblzma), libffi, SQLite and OpenSSL as static, PIC libraries in ``deps``."""
    host = f"{arch}-linux-gnu"
    env = _env(tools, deps)
    j = f"-j{jobs}"
    auto = ["--host=" + host, "--build=x86_64-linux-gnu", "--prefix=" + deps,
            "--disable-shared", "--enable-static", "--with-pic"]

    say(2, "zlib")
    d = _unpack(srcs["zlib"], work)
    _run(["./configure", "--static", "--prefix=" + deps], d, log, env)
    _run(["make", j, "libz.a"], d, log, env)
    _run(["make", "install"], d, log, env)

    say(5, "xz")
    d = _unpack(srcs["xz"], work)
    _run(["./configure", *auto, "--disable-xz", "--disable-xzdec", "--disable-lzmadec",
          "--disable-lzmainfo", "--disable-lzma-links", "--disable-scripts", "--disable-doc",
          "--disable-nls", "--disable-microlzma", "--disable-lzip-decoder"], d, log, env)
    _run(["make", j, "-C", "src/liblzma"], d, log, env)
    _run(["make", "-C", "src/liblzma", "install"], d, log, env)

    say(10, "libffi")
    d = _unpack(srcs["libffi"], work)
    _run(["./autogen.sh"], d, log, env)  # the release tarball has no configure script
    _run(["./configure", *auto, "--disable-docs", "--disable-multi-os-directory",
          *LIBFFI_OPTIONS.get(arch, ())], d, log, env)
    _run(["make", j], d, log, env)
    _run(["make", "install"], d, log, env)

    say(15, "sqlite")
    d = _unpack(srcs["sqlite3"], work)
    # The amalgamation (one sqlite3.c) is generated by tools built for the build machine.
    native = dict(env, CC=host_cc, CFLAGS="-O1 -fno-sanitize=undefined", CPPFLAGS="",
                  LDFLAGS="")
    _run(["./configure", "--disable-tcl"], d, log, native)
    _run(["make", j, "sqlite3.c"], d, log, native)
    _run([tools["cc"], *CFLAGS.split(), "-DSQLITE_THREADSAFE=1", "-DSQLITE_ENABLE_FTS5",
          "-DSQLITE_OMIT_LOAD_EXTENSION", "-c", "sqlite3.c", "-o", "sqlite3.o"], d, log, env)
    os.makedirs(os.path.join(deps, "lib"), exist_ok=True)
    _run([tools["ar"], "rcs", os.path.join(deps, "lib", "libsqlite3.a"), "sqlite3.o"], d, log,
         env)
    for h in ("sqlite3.h", "sqlite3ext.h"):
        shutil.copy(os.path.join(d, h), os.path.join(deps, "include", h))

    say(20, "openssl")
    d = _unpack(srcs["openssl"], work)
    target = {"x86_64": "linux-x86_64", "aarch64": "linux-aarch64"}[arch]
    ossl_env = dict(env, CFLAGS=CFLAGS)
    ossl_env.pop("CPPFLAGS")
    _run(["perl", "./Configure", target, *OPENSSL_OPTIONS, "--prefix=" + deps, "--libdir=lib",
          "--openssldir=/etc/ssl"], d, log, ossl_env)
    _run(["make", j, "build_libs"], d, log, ossl_env)
    _run(["make", "install_dev"], d, log, ossl_env)


def _configure_python(arch: str, src: str, tools: Dict[str, str], deps: str,
                      build_python: Optional[str], log: str) -> None:
    env = _env(tools, deps, PYTHON_CFLAGS)
    lib = f"{deps}/lib"
    env.update({
        "LIBFFI_CFLAGS": f"-I{deps}/include", "LIBFFI_LIBS": f"-L{lib} -lffi",
        "ZLIB_CFLAGS": f"-I{deps}/include", "ZLIB_LIBS": f"-L{lib} -lz",
        "LIBLZMA_CFLAGS": f"-I{deps}/include", "LIBLZMA_LIBS": f"-L{lib} -llzma",
        "LIBSQLITE3_CFLAGS": f"-I{deps}/include", "LIBSQLITE3_LIBS": f"-L{lib} -lsqlite3",
        # Not pkg-config: the libraries were installed under their build folder's name.
        "PKG_CONFIG_LIBDIR": os.path.join(deps, "no-pkg-config"), "PKG_CONFIG_PATH": "",
        "LDFLAGS": f"-L{lib} -s",
    })
    args = ["./configure", f"--host={arch}-linux-gnu", "--build=x86_64-linux-gnu",
            "--prefix=/pyfile-python", f"--with-openssl={deps}", *CONFIGURE_FLAGS]
    args += [f"py_cv_module_{m}=n/a" for m in UNWANTED_MODULES]
    if build_python:  # cross: what configure cannot find out by running programs
        args += [f"--with-build-python={build_python}", "ac_cv_file__dev_ptmx=yes",
                 "ac_cv_file__dev_ptc=no", "ac_cv_buggy_getaddrinfo=no"]
    _run(args, src, log, env)


def _stage(src: str, tree: str, arch: str) -> None:
    """The interpreter, its extension modules and the trimmed standard library, laid out
    as an installation (``bin/python3``, ``lib/python3.13/``, ``.../lib-dynload/``) so that
    it finds its standard library from wherever it is unpacked."""
    lib = os.path.join(tree, "lib", f"python{PYTHON_MINOR}")
    os.makedirs(os.path.join(tree, "bin"))
    shutil.copy2(os.path.join(src, "python"), os.path.join(tree, "bin", "python3"))
    stdlib = os.path.join(src, "Lib")
    for root, dirs, files in os.walk(stdlib):
        dirs.sort()
        rel_root = os.path.relpath(root, stdlib)
        for name in sorted(files):
            rel = os.path.normpath(os.path.join(rel_root, name)).replace(os.sep, "/")
            if STDLIB_DROP.search(rel) or not name.endswith(".py"):
                continue
            dest = os.path.join(lib, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copyfile(os.path.join(root, name), dest)
    dynload = os.path.join(lib, "lib-dynload")
    os.makedirs(dynload)
    (built,) = glob.glob(os.path.join(src, "build", f"lib.linux-{arch}-{PYTHON_MINOR}"))
    for name in sorted(os.listdir(built)):
        if name.endswith(".so"):
            shutil.copy2(os.path.join(built, name), os.path.join(dynload, name))
        elif name.startswith("_sysconfigdata_") and name.endswith(".py"):
            shutil.copyfile(os.path.join(built, name), os.path.join(lib, name))
    missing = [m for m in REQUIRED_MODULES
               if not glob.glob(os.path.join(dynload, m + ".cpython-*.so"))
               and not _builtin(src, m)]
    if missing:
        raise PythonBuildError(f"the {arch} interpreter lacks the modules "
                               f"{', '.join(missing)} (see the build log)")


def _builtin(src: str, module: str) -> bool:
    """Is ``module`` compiled into the interpreter itself (Modules/config.c)?"""
    try:
        with open(os.path.join(src, "Modules", "config.c"), encoding="utf-8") as f:
            return f'{{"{module}",' in f.read()
    except OSError:
        return False


def _bytecode(tree: str, python: str, log: str) -> None:
    """Bytecode for the standard library (unchecked hash-based: the files never change
    where they are unpacked), compiled by ``python`` (an interpreter of the same version)."""
    lib = os.path.join(tree, "lib", f"python{PYTHON_MINOR}")
    _run([python, "-I", "-m", "compileall", "-q", "-j0", "-x", "lib-dynload",
          "--invalidation-mode", "unchecked-hash", lib], tree, log,
         dict(os.environ, SOURCE_DATE_EPOCH="0"))


def _glibc_floor(tree: str) -> str:
    worst: Tuple[int, ...] = (2, 17)
    for root, _dirs, files in os.walk(tree):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                if f.read(4) != b"\x7fELF":
                    continue
            v = elf.read_file_needs(path).newest("GLIBC")
            if v and v > worst:
                worst = v
    return elf.version_text(worst)


def _pack(files: Dict[str, str], out: str) -> None:
    """A deterministic tar.gz of ``files`` (name -> path) and their folders: sorted, owner
    root, time 0."""
    folders = sorted({"/".join(rel.split("/")[:i]) for rel in files
                      for i in range(1, rel.count("/") + 1)})
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for rel in folders + sorted(files):
            info = tarfile.TarInfo(rel)
            info.uid = info.gid = 0
            info.mtime = 0
            if rel in files:
                info.size = os.path.getsize(files[rel])
                info.mode = 0o755 if os.stat(files[rel]).st_mode & 0o100 else 0o644
                with open(files[rel], "rb") as f:
                    tf.addfile(info, f)
            else:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
    with open(out, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9,
                                             mtime=0, filename="") as gz:
        gz.write(raw.getvalue())


def build(arch: str, jobs: Optional[int] = None, progress: Progress = None,
          force: bool = False) -> Carried:
    """The interpreter for ``arch``: from the build cache, else compiled now (15-25 minutes
    on 2 cores). ``progress`` receives (arch, percent, stage). Raises
    :class:`PythonBuildError` naming the log."""
    check_arch(arch)
    if os.uname().sysname != "Linux" or os.uname().machine != "x86_64":
        raise UsageError("pyfile python build runs on x86-64 Linux only")
    lacking = [t for t in BUILD_TOOLS if shutil.which(t) is None]
    if lacking:
        raise UsageError(f"pyfile python build needs {', '.join(lacking)} (Debian: apt-get "
                         f"install make perl autoconf automake libtool)")
    found = cached(arch)
    if found and not force:
        return found
    target = target_folder(arch)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    # One build per machine at a time (two `make setup`s, or the aarch64 build waiting for
    # the x86-64 interpreter it cross-compiles with); the one that waited finds it done.
    with open(f"{target}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = cached(arch)
        if found and not force:
            return found
        if force and os.path.isdir(target):
            shutil.rmtree(target)
        return _build_locked(arch, target, jobs or os.cpu_count() or 2, progress)


def _build_locked(arch: str, target: str, jobs: int, progress: Progress) -> Carried:
    log = os.path.join(os.path.dirname(target), f"build-{arch}-{build_key(arch)}.log")
    with open(log, "w"):
        pass

    def say(pct: int, stage: str) -> None:
        if progress:
            progress(arch, pct, stage)

    say(0, "fetching sources and zig")
    srcs = fetch_sources(log)
    tools = toolchain(arch, log)
    host_cc = toolchain("x86_64", log)["cc"]
    with buildcache.publishing(target) as pub, tempfile.TemporaryDirectory(
            prefix=f"pyfile-python-{arch}-") as work:
        deps = os.path.join(buildcache.folder("python"), f"deps-{arch}-{deps_key(arch)}")
        if not os.path.isfile(os.path.join(deps, "lib", "libssl.a")):
            with buildcache.publishing(deps) as made:  # kept: a failed CPython step reuses it
                _deps(arch, srcs, tools, host_cc, work, made, jobs, log, say)
        build_python = None
        if arch != "x86_64":  # cross-compiling CPython needs the same version to build it
            say(44, "waiting for the x86_64 interpreter")
            host = build("x86_64", jobs, progress)
            build_python = os.path.join(host.tree(), "bin", "python3")
        say(45, "configuring CPython")
        src = _unpack(srcs["Python"], work)
        _configure_python(arch, src, tools, deps, build_python, log)
        say(50, "compiling CPython")
        count = [0]

        def on_line(line: str) -> None:  # ~600 compiler lines for the whole interpreter
            if "-c " in line or line.startswith(tools["cc"]):
                count[0] += 1
                if count[0] % 20 == 0:
                    say(min(50 + count[0] * 40 // 600, 89), "compiling CPython")

        _run(["make", f"-j{jobs}"], src, log, _env(tools, deps, PYTHON_CFLAGS), on_line)
        say(90, "packing")
        tree = os.path.join(pub, "tree")
        _stage(src, tree, arch)
        _bytecode(tree, build_python or os.path.join(tree, "bin", "python3"), log)
        glibc = _glibc_floor(tree)
        if tuple(map(int, glibc.split("."))) > tuple(map(int, TARGET_GLIBC.split("."))):
            raise PythonBuildError(f"the {arch} interpreter needs GLIBC_{glibc}, newer than "
                                   f"{TARGET_GLIBC} (log: {log})")
        info = {"version": PYTHON_VERSION, "arch": arch, "glibc": glibc}
        with open(os.path.join(pub, INFO), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1)
    say(100, "done")
    result = cached(arch)
    assert result is not None
    return result




# -- packing into a pyfile -------------------------------------------------------------------

def parse_arches(text: Optional[str]) -> List[str]:
    """``--arch x86_64,aarch64`` -> the machines, in :data:`ARCHES` order (None: all)."""
    if not text:
        return list(ARCHES)
    wanted = [a.strip() for a in text.split(",")]
    for a in wanted:
        if a not in ARCHES:
            raise UsageError(f"--arch {text}: {a or '(empty)'} is not one of "
                             f"{', '.join(ARCHES)}")
    return [a for a in ARCHES if a in wanted]


def for_build(arches: Optional[str], slim: bool, pythons: Optional[str],
              notes: List[str]) -> List[Carried]:
    """The interpreters a build packs: one per machine of ``--arch`` (default: every one
    built) for a file that carries its interpreter; none for ``--slim`` or ``--python``
    files (they run on a Python found on the target). Without ``--arch``, a machine whose
    interpreter was never built is left out with a note (none built: a file for the
    target's Python, as ``--python`` makes); with it, that raises :class:`InputError`."""
    from .runtime.errors import InputError
    if slim or pythons:
        if arches:
            raise UsageError("--arch chooses the machines of a file that carries its "
                             "interpreter; it does not go with --slim or --python")
        return []
    how = (f"run 'pyfile python build' once (CPython {PYTHON_VERSION} for x86-64 and "
           f"aarch64, about 15 minutes each on 2 cores)")
    from .engines import cached_wheels
    out, missing = [], []
    for arch in parse_arches(arches):
        found = cached(arch)
        if found is not None and arch != "x86_64" and not arches and not cached_wheels(arch):
            found = None  # no engine for it yet ('pyfile engine build --arch ...'): left out
            how = (f"run 'pyfile engine build --arch {arch}' once (cross-compiled, about "
                   f"15 minutes on 2 cores)")
        if found is None:
            if arches:
                raise InputError(f"no carried {arch} interpreter: {how}, or leave {arch} "
                                 f"out of --arch")
            missing.append(arch)
        else:
            out.append(found)
    if missing and out:
        notes.append(f"the file leaves out {', '.join(missing)} (it runs on "
                     f"{', '.join(c.arch for c in out)} only): {how}")
    elif missing:
        notes.append(f"no carried interpreter, so the file needs Python 3.9+ on the target: "
                     f"{how} for a file that needs nothing but Linux")
    return out


def members(carry: List[Carried]) -> List[Tuple[str, str, int, str]]:
    """(member name, file, size, sha256) of what a file carrying ``carry`` holds: each
    machine's part, then the shared standard library once."""
    from .runtime.container.bundle import INTERPRETER_MEMBER, STDLIB_MEMBER
    out = [(INTERPRETER_MEMBER.format(machine=c.arch), c.tarball, c.size, c.sha256)
           for c in carry]
    if carry:
        out.append((STDLIB_MEMBER, carry[0].stdlib, carry[0].stdlib_size,
                    carry[0].stdlib_sha256))
    return out


def stub_table(entries: List[object], carry: List[Carried]) -> List[Tuple[str, int, int, str]]:
    """(machine, data offset, size, sha256) of each carried part as written; the shared
    standard library's machine is "any"."""
    from .runtime.container.bundle import STDLIB_MEMBER
    where = {e.name: e for e in entries}  # type: ignore[attr-defined]
    out = []
    for name, _path, size, sha in members(carry):
        e = where[name]
        machine = "any" if name == STDLIB_MEMBER else name.rsplit("-", 1)[1].split(".")[0]
        out.append((machine, e.data_offset, size, sha))  # type: ignore[attr-defined]
    return out


__all__ = ["ARCHES", "PYTHON_VERSION", "PYTHON_MINOR", "Carried", "PythonBuildError",
           "build", "cached", "check_arch", "toolchain", "parse_arches", "for_build",
           "members", "stub_table"]
