"""Hostile containers and faults during a build: clean errors, nothing crashes, nothing lost."""

import os
import signal
import struct
import subprocess
import sys
import time
import zipfile

import pytest

from conftest import pyfile_cli, run_env
from ggufgen import write_sparse, write_tiny
from pyfile.runtime.container.archive import Archive
from pyfile.runtime.errors import PyfileError


@pytest.fixture
def slim(tmp_path, tiny_gguf):
    out = tmp_path / "t.pyfile"
    r = pyfile_cli("build", str(tiny_gguf), "-o", str(out), "--slim")
    assert r.returncode == 0, r.stderr
    return out


def cd_entries(data: bytes):
    """Offsets of central-directory records in a zip."""
    pos, out = 0, []
    while True:
        pos = data.find(b"PK\x01\x02", pos)
        if pos < 0:
            return out
        out.append(pos)
        pos += 4


def patched(path, data, tmp_path, name):
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("bad_name", ["../evil.txt", "/etc/evil", "a/../../b", "x\\y"])
def test_unsafe_member_names(tmp_path, bad_name):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(zipfile.ZipInfo(bad_name), b"x")
    with pytest.raises(PyfileError, match="unsafe member name"):
        Archive.open(str(z), require_manifest=False)


def test_header_offset_past_the_end(tmp_path, slim):
    data = bytearray(slim.read_bytes())
    first = cd_entries(data)[0]
    struct.pack_into("<I", data, first + 42, len(data) + 1000)
    with pytest.raises(PyfileError, match="truncated|damaged"):
        Archive.open(str(patched(slim, data, tmp_path, "past.pyfile")))


def test_overlapping_members(tmp_path, slim):
    data = bytearray(slim.read_bytes())
    entries = cd_entries(data)
    first_offset = struct.unpack_from("<I", data, entries[0] + 42)[0]
    struct.pack_into("<I", data, entries[1] + 42, first_offset)  # two members, one header
    with pytest.raises(PyfileError, match="damaged: members .* overlap"):
        Archive.open(str(patched(slim, data, tmp_path, "overlap.pyfile")))


def _lie_about(data: bytearray, member: str, size: int) -> None:
    """Set ``member``'s uncompressed size in the zip directory to ``size``."""
    for e in cd_entries(data):
        name_len = struct.unpack_from("<H", data, e + 28)[0]
        if bytes(data[e + 46:e + 46 + name_len]) == member.encode():
            struct.pack_into("<I", data, e + 24, size)
            return
    raise AssertionError(f"no directory entry for {member}")


@pytest.mark.parametrize("extra", [1, 1000])
def test_sizes_that_lie(tmp_path, tiny_gguf, extra):
    """The zip directory says ``.args`` holds more bytes than its data does (the manifest,
    read first, is left honest): reading it ends in the size check, not in a short read
    that passes for the whole member."""
    src = tmp_path / "t.pyfile"
    r = pyfile_cli("build", str(tiny_gguf), "-o", str(src), "--slim", "--args", "-n 3")
    assert r.returncode == 0, r.stderr
    data = bytearray(src.read_bytes())
    _lie_about(data, ".args", len("-n 3") + extra)
    p = patched(src, data, tmp_path, "lying.pyfile")
    with Archive.open(str(p)) as arch:
        with pytest.raises(PyfileError, match="damaged member '.args': size mismatch"):
            arch.args_text()


def test_sizes_past_the_limits(tmp_path, slim):
    """Every member claims 2 GiB: the manifest's size cap refuses the file before anything
    that large is read."""
    data = bytearray(slim.read_bytes())
    for e in cd_entries(data):
        struct.pack_into("<I", data, e + 24, 0x7FFFFFFF)  # uncompressed size
    p = patched(slim, data, tmp_path, "lying.pyfile")
    with pytest.raises(PyfileError, match="manifest.json' is 2147483647 bytes, more than"):
        Archive.open(str(p))


def test_zip_bomb_member_is_bounded(tmp_path):
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(".pyfile/manifest.json", b" " * (200 << 20))  # 200 MiB of spaces, ~200 KB
    assert z.stat().st_size < 1 << 20
    t = time.perf_counter()
    with pytest.raises(PyfileError, match="more than the"):
        Archive.open(str(z))
    assert time.perf_counter() - t < 5


def test_inspect_and_verify_never_run_the_file(tmp_path, slim):
    """A pyfile whose stub writes a marker when the file is executed (shown by running it
    once): inspect, verify and args read it, succeed, and never write the marker."""
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pyfile"
    original = slim.read_bytes()
    shebang, comment, rest = original.split(b"\n", 2)
    plant = b'touch "$PYFILE_TEST_MARKER" #'  # the stub's first comment, same length
    assert shebang == b"#!/bin/sh" and comment.startswith(b"# ") and len(comment) > len(plant)
    evil.write_bytes(b"\n".join([shebang, plant.ljust(len(comment), b"x"), rest]))
    evil.chmod(0o755)
    env = run_env(PYFILE_TEST_MARKER=str(marker))
    subprocess.run([str(evil), "--version"], capture_output=True, env=env, timeout=120)
    assert marker.exists(), "the planted command does not run when the file is executed"
    marker.unlink()
    for cmd in ("inspect", "verify", "args"):
        r = pyfile_cli(cmd, str(evil), env=env)
        assert r.returncode == 0, (cmd, r.stderr)
    assert not marker.exists()


def test_disk_full_during_build(tmp_path):
    """A file-size limit stands in for a full disk: clean error, no partial output."""
    src = write_tiny(str(tmp_path / "m.gguf"), big_tensor=8 << 20)
    out = tmp_path / "out.pyfile"
    out.write_bytes(b"old")
    r = subprocess.run(
        ["sh", "-c", f"ulimit -f 4096; exec '{sys.executable}' -m pyfile build '{src}' "
                     f"-o '{out}' --slim"], capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    assert "cannot write the output" in r.stderr and "Traceback" not in r.stderr
    assert out.read_bytes() == b"old"
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


@pytest.mark.parametrize("blocks", [1, 256 << 20])
def test_ctrl_c_during_build(tmp_path, blocks):
    """Ctrl-C while the output's temporary file is being written (sent once it holds
    ``blocks`` bytes of blocks, never from a timer): exit status 130 and one line, the old
    output untouched, no temporary file left. A build that finishes first fails the test."""
    src = write_tiny(str(tmp_path / "m.gguf"), big_tensor=512 << 20)
    out = tmp_path / "out.pyfile"
    out.write_bytes(b"old")
    p = subprocess.Popen([sys.executable, "-m", "pyfile", "build", src, "-o", str(out)],
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    signalled = False
    while not signalled and time.monotonic() < deadline and p.poll() is None:
        for name in os.listdir(tmp_path):
            if name.endswith(".tmp"):
                try:
                    has = os.stat(tmp_path / name).st_blocks * 512
                except FileNotFoundError:
                    continue
                if has >= blocks:
                    p.send_signal(signal.SIGINT)
                    signalled = True
                    break
        time.sleep(0.0005)
    _, err = p.communicate(timeout=60)
    assert signalled, f"the build ended (exit {p.returncode}) before its temporary file " \
                      f"held {blocks} bytes: {err}"
    assert p.returncode == 130, err
    assert err.strip().splitlines() == ["pyfile: interrupted"], err
    assert out.read_bytes() == b"old"
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_input_that_shrinks_while_read(tmp_path):
    """The input is cut while its copy is under way (16 MiB of the output written: its
    blocks, not its size, which jumps when the members after the weights are written)."""
    src = write_sparse(str(tmp_path / "m.gguf"), 2 << 30)
    out = tmp_path / "out.pyfile"
    p = subprocess.Popen([sys.executable, "-m", "pyfile", "build", src, "-o", str(out),
                          "--slim"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and p.poll() is None:
        temps = [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
        if temps and os.stat(tmp_path / temps[0]).st_blocks * 512 > 16 << 20:
            break
        time.sleep(0.001)
    os.truncate(src, 64 << 20)
    _, err = p.communicate(timeout=60)
    if p.returncode == 0:
        pytest.fail("the build finished before the input shrank; enlarge the input")
    assert p.returncode == 1
    assert "shrank while being read" in err, err
    assert not out.exists()


def test_unpacking_never_writes_outside_its_folder(tmp_path, slim):
    """A runtime whose index sends a file (or a link) out of the folder is refused, and so is
    a packed variant with such a path."""
    import hashlib
    import json
    from pyfile.runtime.container.bundle import _unpack, target_key
    from pyfile.runtime.container.extract import extract
    sha = hashlib.sha256(b"bad").hexdigest()
    evil = tmp_path / "evil.zip"
    files = {"ok.txt": sha, "../../escaped.txt": sha}
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr(".pyfile-runtime.json", json.dumps(
            {"format": 3, "targets": {"3.11": {"files": files, "links": {}},
                                      "3.12": {"files": {"ok.txt": sha},
                                               "links": {"lib.so": "../../escaped.txt"}}}}))
        zf.writestr("o/" + sha, "bad")
    assert pyfile_cli("add", str(slim), str(evil)).returncode == 0
    dest = tmp_path / "dest" / "inner"
    dest.mkdir(parents=True)
    with Archive.open(str(slim)) as arch:
        rt = {"member": "evil.zip", "python": "3.11", "key": target_key(files, {})}
        with pytest.raises(PyfileError, match="escapes its folder"):
            _unpack(arch, rt, str(dest))
        rt = {"member": "evil.zip", "python": "3.12",
              "key": target_key({"ok.txt": sha}, {"lib.so": "../../escaped.txt"})}
        with pytest.raises(PyfileError, match="bad runtime link"):
            _unpack(arch, rt, str(dest))
        with pytest.raises(PyfileError, match="unsafe path"):
            extract(arch, [("evil.zip", "../x.so")])
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "dest" / "escaped.txt").exists()
