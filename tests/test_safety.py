"""Data safety: writes that survive a crash, locks where two processes meet, a cache that never
mixes contents and never loses a folder someone is using (issue 25)."""

import fcntl
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import pyfile_cli, run_env
from pyfile.runtime.container import atomic
from pyfile.runtime.container.archive import Archive
from pyfile.runtime.errors import PyfileError


@pytest.fixture
def slim(tmp_path, tiny_gguf):
    out = tmp_path / "t.pyfile"
    r = pyfile_cli("build", str(tiny_gguf), "-o", str(out), "--slim")
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture
def syscalls(monkeypatch):
    """Records fsync (of what: the path behind the descriptor), replace and rename, in order."""
    calls = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        calls.append(("rename", str(src), str(dst)))
        return real_replace(src, dst, **kw)

    def rename(src, dst, **kw):
        calls.append(("rename", str(src), str(dst)))
        return real_rename(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    return calls


def test_build_output_is_flushed_before_and_after_its_rename(tmp_path, syscalls):
    """The build's output (pyfile.atomic.atomic_output): the temporary file's data reaches
    the disk before it is renamed over the target, and the folder after, so a power cut
    leaves the old file or the complete new one, never an empty one."""
    from pyfile.atomic import atomic_output
    target = tmp_path / "out.pyfile"
    with atomic_output(str(target)) as f:
        f.write(b"new contents")
    renames = [c for c in syscalls if c[0] == "rename"]
    assert len(renames) == 1 and renames[0][2] == str(target)
    tmp = renames[0][1]
    at = syscalls.index(renames[0])
    assert ("fsync", tmp) in syscalls[:at], syscalls  # the data, before the rename
    assert ("fsync", str(tmp_path)) in syscalls[at:], syscalls  # the folder entry, after
    assert target.read_bytes() == b"new contents"
    assert os.stat(target).st_mode & 0o100  # executable, as before


def test_published_folders_are_flushed_before_and_after_their_rename(tmp_path, syscalls):
    """A cache folder (runtime unpack, build cache entry): every file in it is flushed
    before the work folder becomes the target, and the parent folder after."""
    from pyfile import buildcache
    target = tmp_path / "cache" / "entry"
    with buildcache.publishing(str(target)) as work:
        os.makedirs(os.path.join(work, "sub"))
        for rel in ("a.so", "sub/b.py"):
            with open(os.path.join(work, rel), "w") as f:
                f.write(rel)
    renames = [c for c in syscalls if c[0] == "rename"]
    assert [r[2] for r in renames] == [str(target)]
    at = syscalls.index(renames[0])
    work = renames[0][1]
    flushed = {c[1] for c in syscalls[:at] if c[0] == "fsync"}
    assert {os.path.join(work, "a.so"), os.path.join(work, "sub", "b.py"),
            os.path.join(work, "sub"), work} <= flushed
    assert ("fsync", str(tmp_path / "cache")) in syscalls[at:]
    assert (target / "sub" / "b.py").read_text() == "sub/b.py"


def test_cache_objects_never_share_a_temporary_name(tmp_path, monkeypatch):
    """Two writers of the same object (two builds) each write their own temporary file: one
    lying around from the other is neither reused nor renamed into place."""
    from pyfile import buildcache
    monkeypatch.setenv("PYFILE_BUILD_CACHE", str(tmp_path))
    objects = tmp_path / "objects"
    objects.mkdir()
    # what the fixed names of the old code would have been (pid/thread, or ".tmp")
    others = [objects / f"x.bin.{os.getpid()}.{threading.get_ident()}.tmp", objects / "x.bin.tmp"]
    for p in others:
        p.write_bytes(b"another build, half-way")
    assert buildcache.remembered("x.bin", lambda: b"mine") == b"mine"
    assert (objects / "x.bin").read_bytes() == b"mine"
    for p in others:
        assert p.read_bytes() == b"another build, half-way"


def test_bundle_index_of_two_builds_at_once(tmp_path):
    """The runtime bundle's index in the build cache is written under a temporary name of
    its own: another build writing the same index at the same time (its temporary file
    here) is left alone, and the index is whole."""
    from pyfile import bundle
    index = tmp_path / "runtime-abc.json"
    other = tmp_path / "runtime-abc.json.tmp"  # the fixed name every build used
    other.write_bytes(b'{"half": ')
    t = bundle.Target("3.11", "2.17", {"a.py": "0" * 64})
    bundle._save_index(str(index), [t], {"other": 1}, "f" * 64)
    assert other.read_bytes() == b'{"half": '
    assert json.loads(index.read_text())["sha256"] == "f" * 64
    assert sorted(p.name for p in tmp_path.iterdir()) == [index.name, other.name]


def test_a_cached_bundle_index_that_cannot_be_read_is_a_miss(tmp_path):
    """The build cache is shared by every pyfile version on the machine: a bundle index it
    cannot read (damaged, or with a field another version added) means "assemble the bundle
    again", never a build that dies with an internal error."""
    from pyfile import bundle
    index = tmp_path / "runtime-abc.json"
    t = bundle.Target("3.11", "2.17", {"a.py": "0" * 64})
    bundle._save_index(str(index), [t], {"other": 1}, "f" * 64)
    assert bundle._load_index(str(index)) == ([t], {"other": 1}, "f" * 64)
    for bad in ('{"targets": [{"python": "3.11", "libc_version": "2.17", "from": "later"}], '
                '"sizes": {}, "sha256": "f"}', '{"targets": [', '[]',
                '{"targets": [], "sizes": {}}', '{"targets": [1], "sizes": {}, "sha256": ""}'):
        index.write_text(bad)
        assert bundle._load_index(str(index)) is None, bad
    assert bundle._load_index(str(tmp_path / "missing.json")) is None


def test_a_member_without_a_sha256_is_not_unpacked_into_the_shared_cache(tmp_path, slim,
                                                                        monkeypatch):
    """Native files are unpacked to a cache folder named by their SHA-256s. An entry with an
    empty digest (a damaged or hand-made manifest) would name the same folder for any
    content: refused in one line, and nothing is unpacked."""
    from pyfile.runtime.container.extract import extract
    monkeypatch.setenv("PYFILE_CACHE_DIR", str(tmp_path / "cache"))
    one, two = tmp_path / "one.so", tmp_path / "two.so"
    one.write_bytes(b"\x7fELF one")
    two.write_bytes(b"\x7fELF two")
    assert pyfile_cli("add", str(slim), str(one), str(two)).returncode == 0
    with Archive.open(str(slim)) as arch:
        for name in ("one.so", "two.so"):  # as a manifest with "sha256": "" reads
            arch.manifest_entry(name)["sha256"] = ""
        with pytest.raises(PyfileError, match="'one.so' has no SHA-256"):
            extract(arch, [("one.so", "libx.so")])
        with pytest.raises(PyfileError, match="'two.so' has no SHA-256"):
            extract(arch, [("two.so", "libx.so")])
    native = tmp_path / "cache" / "native"
    assert not native.exists() or not [p for p in native.iterdir() if p.is_dir()]


def test_prune_keeps_a_folder_another_process_is_unpacking(tmp_path, monkeypatch):
    """While one process fills a cache folder (its work folder, before the rename),
    ``pyfile cache prune`` in another process leaves it alone; the fill completes."""
    from pyfile.runtime.container.extract import cached_folder
    cache = tmp_path / "cache"
    monkeypatch.setenv("PYFILE_CACHE_DIR", str(cache))
    half, go = threading.Event(), threading.Event()
    result = {}

    def fill(work):
        with open(os.path.join(work, "first.so"), "w") as f:
            f.write("1")
        half.set()
        go.wait(30)
        with open(os.path.join(work, "second.so"), "w") as f:
            f.write("2")

    def unpack():
        try:
            result["folder"] = cached_folder("native", "k" * 24, fill)
        except BaseException as e:  # reported below
            result["error"] = e

    t = threading.Thread(target=unpack)
    t.start()
    assert half.wait(30)
    work = [p for p in (cache / "native").iterdir() if p.name.startswith(".k") and p.is_dir()]
    assert len(work) == 1
    r = pyfile_cli("cache", "prune", env=run_env(PYFILE_CACHE_DIR=str(cache)))
    assert r.returncode == 0, r.stderr
    assert work[0].is_dir(), "prune removed a folder that was being unpacked"
    go.set()
    t.join(30)
    assert "error" not in result, result.get("error")
    folder = result["folder"]
    assert folder == str(cache / "native" / ("k" * 24))
    assert sorted(os.listdir(folder)) == ["first.so", "second.so"]


def test_prune_removes_an_abandoned_work_folder_and_unused_folders(tmp_path):
    """What no process holds goes: a work folder whose filler died, an unused folder; a
    folder a running pyfile holds (shared lock on ``<folder>.lock``) stays."""
    cache = tmp_path / "cache"
    native = cache / "native"
    (native / ".dead.abc123").mkdir(parents=True)
    (native / "unused").mkdir()
    (native / "used").mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl,sys; f=open(sys.argv[1],'a+'); "
         "fcntl.flock(f, fcntl.LOCK_SH); print('held', flush=True); sys.stdin.read()",
         str(native / "used.lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = pyfile_cli("cache", "prune", env=run_env(PYFILE_CACHE_DIR=str(cache)))
        assert r.returncode == 0, r.stderr
        assert sorted(p.name for p in native.iterdir() if p.is_dir()) == ["used"]
    finally:
        holder.stdin.close()
        holder.wait(10)


def _lock_state(path, flag):
    """Whether a new open file description can take ``flag`` on ``path`` right now."""
    with open(path, "rb") as f:
        try:
            fcntl.flock(f, flag | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def test_an_edit_waits_for_a_run_reading_the_file(tmp_path, slim):
    """``pyfile args --set`` takes the file's exclusive lock: while a reader (a run opening
    the archive: ``Archive.open``) has it open, the edit waits, then completes."""
    with Archive.open(str(slim)) as arch:
        assert arch.args_text() == ""
        assert not _lock_state(slim, fcntl.LOCK_EX)  # the open archive holds the shared lock
        p = subprocess.Popen([sys.executable, "-m", "pyfile", "args", str(slim), "--set",
                              "-n 7"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=run_env())
        time.sleep(1.5)
        assert p.poll() is None, f"the edit did not wait for the reader: {p.communicate()}"
        assert arch.args_text() == ""  # the reader's view is intact
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert pyfile_cli("args", str(slim)).stdout == "-n 7"


def test_a_run_waits_for_an_edit_in_progress(tmp_path, slim):
    """While an edit holds the exclusive lock (another ``pyfile args --set`` half-way), a
    reader waits instead of reading a half-written directory, and then sees the edit."""
    seen = {}
    with open(slim, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # what the editor holds for a whole edit

        def read():
            with Archive.open(str(slim)) as arch:
                seen["args"] = arch.args_text()

        t = threading.Thread(target=read)
        t.start()
        t.join(1.0)
        assert t.is_alive(), "the reader did not wait for the edit"
        fcntl.flock(f, fcntl.LOCK_UN)
    t.join(30)
    assert not t.is_alive()
    assert seen["args"] == ""


def test_a_run_started_during_an_edit_waits_for_it(tmp_path, slim):
    """A run that starts while an edit holds the file, with 128 KiB of the edit already
    appended (the old end record is then out of a zip reader's reach), waits for the edit
    instead of failing as a damaged file, then runs: the stub's bootstrap takes the shared
    lock before it reads the zip directory."""
    size = slim.stat().st_size
    with open(slim, "r+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # what the editor holds for a whole edit
        f.seek(0, os.SEEK_END)
        f.write(b"\0" * (128 << 10))  # new members written, no new directory yet
        f.flush()
        p = subprocess.Popen(["sh", str(slim), "--help"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=run_env())
        time.sleep(1.5)
        assert p.poll() is None, f"the run did not wait for the edit: {p.communicate()}"
        f.truncate(size)  # the edit fails and truncates back, as the editor does
        fcntl.flock(f, fcntl.LOCK_UN)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "usage:" in out


def test_fill_lock_and_work_folder_names_agree():
    """prune finds the lock of a work folder by its name: the two helpers agree."""
    target = "/c/native/0123abcd"
    assert atomic.fill_lock(target) == "/c/native/.0123abcd.lock"
    assert atomic.target_of_work("/c/native/.0123abcd.x1_y2z") == target
    assert atomic.target_of_work("/c/native/.0123abcd.lock") is None
    assert atomic.target_of_work("/c/native/0123abcd") is None


def test_one_version_parser():
    from pyfile.runtime.container import versions
    assert versions.parse("2.31") == (2, 31) and versions.parse(" 3.10\n") == (3, 10)
    assert versions.parse("2.31") > versions.parse("2.4")
    for bad in ("", "2.", "2..3", "v2", "2.3a", "²"):
        with pytest.raises(ValueError):
            versions.parse(bad)
    assert versions.parse_or("2.x") == () and versions.parse_or(None, (0,)) == (0,)
    assert versions.text((2, 28)) == "2.28" and versions.text(None) == "none"


def test_one_place_computes_the_cache_folders(monkeypatch, tmp_path):
    from pyfile import buildcache, variants
    from pyfile.runtime.container import paths
    for var in ("PYFILE_CACHE_DIR", "PYFILE_BUILD_CACHE", "PYFILE_VARIANTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert paths.run_cache() == str(tmp_path / "pyfile")
    assert buildcache.root() == str(tmp_path / "pyfile" / "build")
    assert variants.variants_dir() == str(tmp_path / "pyfile-dev" / "variants")
    monkeypatch.setenv("PYFILE_CACHE_DIR", str(tmp_path / "run"))
    assert paths.run_cache() == str(tmp_path / "run")
    assert buildcache.root() == str(tmp_path / "pyfile" / "build")  # apart on purpose
    root = os.path.dirname(os.path.dirname(paths.__file__))
    hits = subprocess.run(["grep", "-rlF", "\"XDG_CACHE_HOME\"", os.path.dirname(root)],
                          capture_output=True, text=True).stdout.split()
    assert [os.path.relpath(h, os.path.dirname(root)) for h in hits
            if h.endswith(".py")] == ["runtime/container/paths.py"]
