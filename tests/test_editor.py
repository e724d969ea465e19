"""In-place edits: `pyfile args --set` and `pyfile add` append, never rewrite the weights."""

import os
import time

from conftest import pyfile_cli
from ggufgen import write_tiny
from pyfile.runtime.container.archive import Archive


def built(tmp_path, src, args="-n 3"):
    out = tmp_path / "t.pyfile"
    r = pyfile_cli("build", str(src), "-o", str(out), "--args", args)
    assert r.returncode == 0, r.stderr
    return out


def test_args_print_and_set_in_place(tmp_path, tiny_gguf):
    out = built(tmp_path, tiny_gguf)
    assert pyfile_cli("args", str(out)).stdout == "-n 3"
    before = os.stat(out)
    with Archive.open(str(out)) as arch:
        model_offset = arch.member("tiny.gguf").offset
        model_bytes = out.read_bytes()[model_offset:model_offset + arch.member("tiny.gguf").size]
    t0 = time.perf_counter()
    r = pyfile_cli("args", str(out), "--set", "--server --port 9000 ...")
    elapsed = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    assert elapsed < 5  # includes the interpreter start; the edit itself is O(small)
    after = os.stat(out)
    assert after.st_ino == before.st_ino  # edited in place, not replaced
    assert before.st_size < after.st_size < before.st_size + 64 * 1024
    assert pyfile_cli("args", str(out)).stdout == "--server --port 9000 ..."
    assert pyfile_cli("verify", str(out)).returncode == 0
    with Archive.open(str(out)) as arch:
        assert arch.member("tiny.gguf").offset == model_offset
        assert out.read_bytes()[model_offset:model_offset + len(model_bytes)] == model_bytes
        assert arch.manifest_entry(".args")["size"] == len("--server --port 9000 ...")


def test_args_set_rejects_bad_syntax_and_leaves_file(tmp_path, tiny_gguf):
    out = built(tmp_path, tiny_gguf)
    data = out.read_bytes()
    r = pyfile_cli("args", str(out), "--set", '"unterminated')
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == data


def test_add_model_and_prompt(tmp_path, tiny_gguf):
    out = built(tmp_path, tiny_gguf)
    second = write_tiny(str(tmp_path / "second.gguf"), name="second", seed=2)
    note = tmp_path / "system.txt"
    note.write_text("be brief")
    r = pyfile_cli("add", str(out), second, str(note), "--align", "16384")
    assert r.returncode == 0, r.stderr
    with Archive.open(str(out)) as arch:
        assert arch.member("second.gguf").offset % 16384 == 0
        assert arch.read("system.txt") == b"be brief"
        assert arch.manifest.models["second.gguf"]["name"] == "second"
        assert arch.default_model == "tiny.gguf"
        assert arch.verify() == []
    r = pyfile_cli("add", str(out), str(note))
    assert r.returncode == 2 and "already holds" in r.stderr
    assert pyfile_cli("verify", str(out)).returncode == 0
