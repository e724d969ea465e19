"""End-to-end container tests on tiny generated GGUFs: real zip tools, alignment, determinism."""

import hashlib
import json
import os
import stat
import subprocess
import zipfile

import pytest

from conftest import need, pyfile_cli
from ggufgen import write_tiny
from pyfile.runtime.container.archive import Archive


def build(src, out, *extra, args=None):
    cmd = ["build", str(src), *map(str, extra), "-o", str(out)]
    if args is not None:
        cmd += ["--args", args]
    r = pyfile_cli(*cmd)
    assert r.returncode == 0, r.stderr
    return out


def test_zip_tools_accept_it_without_warnings(tmp_path, tiny_gguf):
    out = build(tiny_gguf, tmp_path / "t.pyfile")
    need("unzip"), need("7z"), need("zipinfo")
    r = subprocess.run(["unzip", "-t", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and "No errors detected" in r.stdout, r.stdout + r.stderr
    assert "extra bytes" not in r.stdout + r.stderr
    r = subprocess.run(["zipinfo", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and "warning" not in (r.stdout + r.stderr).lower()
    r = subprocess.run(["7z", "t", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and "Everything is Ok" in r.stdout
    assert "WARNING" not in r.stdout + r.stderr
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        assert zf.read("tiny.gguf") == tiny_gguf.read_bytes()


def test_layout_stub_then_aligned_stored_model(tmp_path, tiny_gguf):
    out = build(tiny_gguf, tmp_path / "t.pyfile")
    data = out.read_bytes()
    assert data.startswith(b"#!/bin/sh\n")
    first_lines = data.split(b"\n")[:3]
    assert all(b"\0" not in line for line in first_lines)
    assert os.stat(out).st_mode & stat.S_IXUSR
    with Archive.open(str(out)) as arch:
        m = arch.member("tiny.gguf")
        assert m.stored and m.offset % 65536 == 0
        assert data[m.offset:m.offset + m.size] == tiny_gguf.read_bytes()
        man = arch.manifest
        assert man.default_model == "tiny.gguf"
        entry = arch.manifest_entry("tiny.gguf")
        assert entry["offset"] == m.offset and entry["align"] == 65536
        assert entry["sha256"] == ""  # the weights: the zip's CRC-32 only, unless --sha256
        assert entry["crc32"] == f"{zipfile.ZipFile(out).getinfo('tiny.gguf').CRC:08x}"
        runtime = arch.manifest_entry("pyfile/runtime/main.py")
        assert runtime["sha256"] == hashlib.sha256(arch.read("pyfile/runtime/main.py")).hexdigest()
        assert man.models["tiny.gguf"]["name"] == "tiny"
        names = set(arch.members)
        assert {".args", "__main__.py", "pyfile/runtime/main.py", ".pyfile/manifest.json"} <= names


@pytest.mark.parametrize("align", [4096, 16384])
def test_align_option(tmp_path, tiny_gguf, align):
    out = tmp_path / "t.pyfile"
    r = pyfile_cli("build", str(tiny_gguf), "-o", str(out), "--align", str(align))
    assert r.returncode == 0, r.stderr
    with Archive.open(str(out)) as arch:
        assert arch.member("tiny.gguf").offset % align == 0
        assert arch.verify() == []


def test_deterministic_and_source_date_epoch(tmp_path, tiny_gguf):
    a = build(tiny_gguf, tmp_path / "a.pyfile", args="-n 5")
    b = build(tiny_gguf, tmp_path / "b.pyfile", args="-n 5")
    assert a.read_bytes() == b.read_bytes()
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    c = tmp_path / "c.pyfile"
    r = subprocess.run([__import__("sys").executable, "-m", "pyfile", "build", str(tiny_gguf),
                        "-o", str(c), "--args", "-n 5"], env=env, capture_output=True)
    assert r.returncode == 0
    assert c.read_bytes() != a.read_bytes()
    with zipfile.ZipFile(c) as zf:
        assert zf.getinfo("tiny.gguf").date_time[:3] == (2023, 11, 14)


def test_inspect_text_and_json(tmp_path, tiny_gguf):
    out = build(tiny_gguf, tmp_path / "t.pyfile", args="--temp 0 ...")
    r = pyfile_cli("inspect", str(out))
    assert r.returncode == 0, r.stderr
    assert "architecture    llama" in r.stdout and "baked args      --temp 0 ..." in r.stdout
    assert "aligned 65536" in r.stdout
    info = json.loads(pyfile_cli("inspect", str(out), "--json").stdout)
    assert info["models"]["tiny.gguf"]["context_length"] == 256
    assert info["args"] == "--temp 0 ..."
    assert all(m["aligned"] for m in info["members"])
    r = pyfile_cli("inspect", str(tiny_gguf), "--json")
    assert json.loads(r.stdout)["model"]["tensor_count"] == 3


@pytest.mark.parametrize("sha256", [False, True])
def test_verify_ok_and_detects_corruption(tmp_path, tiny_gguf, sha256):
    out = tmp_path / "t.pyfile"
    r = pyfile_cli("build", str(tiny_gguf), "-o", str(out), *(["--sha256"] if sha256 else []))
    assert r.returncode == 0, r.stderr
    with Archive.open(str(out)) as arch:
        off = arch.member("tiny.gguf").offset + 1000
        recorded = arch.manifest_entry("tiny.gguf")["sha256"]
    assert recorded == (hashlib.sha256(tiny_gguf.read_bytes()).hexdigest() if sha256 else "")
    r = pyfile_cli("verify", str(out))
    assert r.returncode == 0 and "OK" in r.stdout
    assert ("CRC-32 only for tiny.gguf" in r.stdout) is not sha256
    data = bytearray(out.read_bytes())
    data[off] ^= 0xFF
    out.write_bytes(bytes(data))
    r = pyfile_cli("verify", str(out))
    assert r.returncode == 1
    assert "CRC-32 mismatch" in r.stderr
    assert ("SHA-256 mismatch" in r.stderr) is sha256
    assert "Traceback" not in r.stderr


def test_zip_inputs_stored_deflate_and_deflate64(tmp_path, tiny_gguf):
    need("7z")
    stored = tmp_path / "stored.zip"
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as zf:
        zf.write(tiny_gguf, "models/tiny.gguf")
    deflated = tmp_path / "deflated.zip"
    with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(tiny_gguf, "tiny.gguf")
    d64 = tmp_path / "d64.zip"
    r = subprocess.run(["7z", "a", "-tzip", "-mm=Deflate64", str(d64), str(tiny_gguf)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
    with zipfile.ZipFile(d64) as zf:
        assert zf.infolist()[0].compress_type == 9  # really Deflate64
    for src in (stored, deflated, d64):
        out = build(src, tmp_path / (src.stem + ".pyfile"))
        with Archive.open(str(out)) as arch:
            m = arch.member("tiny.gguf")
            assert out.read_bytes()[m.offset:m.offset + m.size] == tiny_gguf.read_bytes()
            assert arch.verify() == []
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".pyfile-extract")]


def test_extra_files_and_second_model(tmp_path, tiny_gguf):
    second = write_tiny(str(tmp_path / "second.gguf"), name="second", seed=1)
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("hello")
    out = build(tiny_gguf, tmp_path / "t.pyfile", second, prompt)
    with Archive.open(str(out)) as arch:
        assert arch.member("second.gguf").offset % 65536 == 0
        assert arch.read("prompt.txt") == b"hello"
        assert set(arch.manifest.models) == {"tiny.gguf", "second.gguf"}
        assert arch.verify() == []


@pytest.mark.slow
def test_zip64_for_a_model_over_4_gib(tmp_path):
    """A sparse 4.1 GiB GGUF: ZIP64 records, still clean for unzip, 7z and zipfile."""
    need("unzip"), need("7z")
    src = write_tiny(str(tmp_path / "big.gguf"), big_tensor=(4 << 30) + (64 << 20))
    out = tmp_path / "big.pyfile"
    r = pyfile_cli("build", src, "-o", str(out), timeout=600)
    assert r.returncode == 0, r.stderr
    os.unlink(src)
    assert subprocess.run(["unzip", "-tq", str(out)], capture_output=True).returncode == 0
    r = subprocess.run(["7z", "t", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and "WARNING" not in r.stdout
    with Archive.open(str(out)) as arch:
        m = arch.member("big.gguf")
        assert m.size > 2 ** 32 and m.offset % 65536 == 0
        assert arch.manifest_entry("big.gguf")["size"] == m.size
    r = pyfile_cli("inspect", str(out), "--json")
    assert json.loads(r.stdout)["models"]["big.gguf"]["tensor_count"] == 4


@pytest.mark.parametrize("sha256", [False, True])
def test_copy_between_filesystems_falls_back_to_python(tmp_path, monkeypatch, sha256):
    """The kernel cannot copy from tmpfs to the test folder's filesystem (EXDEV): the weights
    then go through Python buffers, and the file is byte for byte the one the kernel's
    copy makes, with the same digests."""
    from pyfile import builder, copier
    shm = "/dev/shm"
    assert os.stat(shm).st_dev != os.stat(tmp_path).st_dev, "needs tmpfs at /dev/shm"
    big = 24 << 20  # several kernel steps and Python buffers
    local = write_tiny(str(tmp_path / "m.gguf"), big_tensor=big, seed=3)
    elsewhere = os.path.join(shm, f"pyfile-test-{os.getpid()}-{sha256}")
    os.makedirs(elsewhere)
    try:
        remote = os.path.join(elsewhere, "m.gguf")
        with open(local, "rb") as f, open(remote, "wb") as g:
            g.write(f.read())
        used = []
        real = copier.user_copy
        monkeypatch.setattr(copier, "user_copy",
                            lambda *a: used.append(a[4]) or real(*a))
        opts = builder.RuntimeOptions(slim=True)
        builder.build(local, str(tmp_path / "k.pyfile"), runtime=opts, gpu_variants=False,
                      sha256=sha256)
        assert used == []  # same filesystem: the kernel copied
        python = builder.build(remote, str(tmp_path / "p.pyfile"), runtime=opts,
                               gpu_variants=False, sha256=sha256)
        assert used == [os.path.getsize(local)]  # across filesystems: Python did
    finally:
        import shutil
        shutil.rmtree(elsewhere)
    assert (tmp_path / "k.pyfile").read_bytes() == (tmp_path / "p.pyfile").read_bytes()
    model = [e for e in python.entries if e.name == "m.gguf"][0]
    if sha256:
        assert model.sha256 == hashlib.sha256(open(local, "rb").read()).hexdigest()
    r = pyfile_cli("verify", str(tmp_path / "p.pyfile"))
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr


def test_preallocate_gives_blocks_and_reports_a_full_disk(tmp_path):
    """The copy's destination gets its blocks up front (where the filesystem can: here),
    and a write that cannot fit is an OSError before any byte is copied."""
    from pyfile.copier import preallocate
    path = tmp_path / "f"
    with open(path, "wb") as f:
        preallocate(f.fileno(), 65536, 8 << 20)
        st = os.fstat(f.fileno())
    assert st.st_size == 65536 + (8 << 20)
    assert st.st_blocks * 512 >= 8 << 20  # allocated, not a hole
    code = ("import resource, sys; from pyfile.copier import preallocate\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
            "f = open(sys.argv[1], 'wb')\n"
            "try:\n    preallocate(f.fileno(), 0, 8 << 20)\n"
            "except OSError as e:\n    print(e.errno)\n")
    r = subprocess.run([__import__("sys").executable, "-c", code, str(tmp_path / "g")],
                       capture_output=True, text=True)
    assert r.stdout.strip() == str(__import__("errno").EFBIG), r.stderr
