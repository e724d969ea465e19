"""Bad input: one line on stderr, non-zero exit, no traceback, no output file left behind."""

import os
import struct

import pytest

from conftest import pyfile_cli
from ggufgen import header


def assert_clean_failure(r, code, fragment, out_dir=None):
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("pyfile: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    if out_dir is not None:
        left = [p for p in os.listdir(out_dir) if p.endswith((".tmp", ".pyfile"))]
        assert left == [], left


@pytest.mark.parametrize("content, fragment", [
    (b"hello, this is not a model\n" * 10, "not a GGUF"),
    (header(5, 5), "truncated"),
    (header(2 ** 63, 0) + b"\0" * 100, "more than the file could hold"),
    (b"", "not a GGUF"),
])
def test_bad_models(tmp_path, content, fragment):
    src = tmp_path / "in.gguf"
    src.write_bytes(content)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = pyfile_cli("build", str(src), "-o", str(out_dir / "x.pyfile"))
    assert_clean_failure(r, 1, fragment, out_dir)


def test_truncated_real_structure(tmp_path, tiny_gguf):
    src = tmp_path / "cut.gguf"
    src.write_bytes(tiny_gguf.read_bytes()[:-10])
    r = pyfile_cli("build", str(src), "-o", str(tmp_path / "x.pyfile"))
    assert_clean_failure(r, 1, "truncated", tmp_path)


def test_missing_input(tmp_path):
    r = pyfile_cli("build", str(tmp_path / "nope.gguf"), "-o", str(tmp_path / "x.pyfile"))
    assert_clean_failure(r, 1, "No such file", tmp_path)


def test_input_is_a_directory(tmp_path):
    r = pyfile_cli("build", str(tmp_path), "-o", str(tmp_path / "x.pyfile"))
    assert_clean_failure(r, 1, "is a directory", tmp_path)


def test_unwritable_output(tmp_path, tiny_gguf):
    r = pyfile_cli("build", str(tiny_gguf), "-o", "/proc/no-such-dir/x.pyfile")
    assert_clean_failure(r, 1, "does not exist")
    r = pyfile_cli("build", str(tiny_gguf), "-o", "/proc/x.pyfile")
    assert_clean_failure(r, 1, "cannot write the output")


def test_output_is_input_or_directory(tmp_path, tiny_gguf):
    r = pyfile_cli("build", str(tiny_gguf), "-o", str(tiny_gguf))
    assert_clean_failure(r, 2, "overwrite the input")
    r = pyfile_cli("build", str(tiny_gguf), "-o", str(tmp_path))
    assert_clean_failure(r, 2, "is a directory")


@pytest.mark.parametrize("opts, fragment", [
    (["--align", "100"], "power of two"),
    (["--align", "16"], "power of two"),
    (["--args", "'unterminated"], "unterminated"),
    (["--bogus"], "No such option"),
])
def test_usage_errors(tmp_path, tiny_gguf, opts, fragment):
    r = pyfile_cli("build", str(tiny_gguf), "-o", str(tmp_path / "x.pyfile"), *opts)
    assert_clean_failure(r, 2, fragment, tmp_path)


def test_failed_build_keeps_the_old_output(tmp_path, tiny_gguf):
    out = tmp_path / "x.pyfile"
    out.write_bytes(b"previous")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(header(1, 0) + struct.pack("<Q", 1) + b"t" + struct.pack("<IQIQ", 1, 1 << 40, 0, 0))
    r = pyfile_cli("build", str(bad), "-o", str(out))
    # a bad input: exit status 1 (README: 2 is for usage errors), one line naming the file
    assert (r.returncode, r.stderr) == (1, f"pyfile: {bad}: truncated: the data section "
                                           f"would start at 64, past the end (57 bytes)\n")
    assert out.read_bytes() == b"previous"
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


@pytest.mark.parametrize("cmd", ["inspect", "verify", "args"])
def test_readers_on_garbage(tmp_path, cmd):
    junk = tmp_path / "junk.pyfile"
    junk.write_bytes(b"#!/bin/sh\necho hi\n" + os.urandom(5000))
    r = pyfile_cli(cmd, str(junk))
    assert_clean_failure(r, 1, "not a pyfile")
    r = pyfile_cli(cmd, str(tmp_path / "missing.pyfile"))
    assert_clean_failure(r, 1, "cannot")


def test_help_and_version():
    r = pyfile_cli("--help")
    assert r.returncode == 0 and "build" in r.stdout and "inspect" in r.stdout
    r = pyfile_cli("--version")
    assert r.returncode == 0 and "pyfile" in r.stdout
