"""Property-based fuzzing of every parser that reads untrusted input.

Short by default (CI); `FUZZ_EXAMPLES=100000 pytest fuzz/` for a long local run. The
number of inputs each target ran is printed in the session's summary (fuzz/conftest.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fuzz.targets import (COUNTS, fuzz_args, fuzz_container, fuzz_gguf,  # noqa: E402
                          fuzz_manifest)
from ggufgen import write_tiny  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=2000, derandomize=False,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    d = tmp_path_factory.mktemp("seeds")
    gg = write_tiny(str(d / "t.gguf"))
    pf = d / "t.pyfile"
    r = subprocess.run([sys.executable, "-m", "pyfile", "build", gg, "-o", str(pf), "--slim",
                        "--args", "-n 4 ..."], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return Path(gg).read_bytes(), pf.read_bytes()


def mutations(seed: bytes):
    """Overwrite, insert, delete and truncate at drawn positions of a valid file."""
    edit = st.tuples(st.sampled_from(["set", "insert", "delete", "u64"]),
                     st.integers(0, len(seed) - 1), st.binary(min_size=1, max_size=8))
    return st.tuples(st.lists(edit, max_size=6), st.integers(1, len(seed))).map(
        lambda t: _apply(seed, *t))


def _apply(seed: bytes, edits, keep: int) -> bytes:
    b = bytearray(seed)
    kind = "none"
    for kind, pos, val in edits:
        pos %= max(1, len(b))
        if kind == "set":
            b[pos:pos + len(val)] = val
        elif kind == "insert":
            b[pos:pos] = val
        elif kind == "delete":
            del b[pos:pos + len(val)]
        else:  # a large little-endian count: the classic hostile-header trick
            b[pos:pos + 8] = (0xFFFF_FFFF_FFFF_FF00 | val[0]).to_bytes(8, "little")
    return bytes(b[:keep] if keep < len(b) and kind != "insert" else b)


def test_gguf_reader(seeds):
    @SETTINGS
    @given(st.one_of(mutations(seeds[0]), st.binary(max_size=512)))
    def run(data):
        fuzz_gguf(data)
    run()


def test_container_reader(seeds):
    @SETTINGS
    @given(mutations(seeds[1]))
    def run(data):
        fuzz_container(data)
    run()


@SETTINGS
@given(st.one_of(st.text(max_size=80), st.lists(st.sampled_from(
    list("ab $#{}'\"\\\n\t.x0") + ["...", "${X}", "\\x4", "$X"]), max_size=30).map("".join)))
def test_args_parser(text):
    fuzz_args(text)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(
                        st.sampled_from(["format", "members", "name", "size", "offset",
                                         "align", "sha256", "default_model", "models", "x"]),
                        c, max_size=6), max_leaves=20)


@SETTINGS
@given(JSON)
def test_manifest_parser(value):
    fuzz_manifest(value)


def test_each_target_counts_its_inputs():
    """The summary's counters: every target adds one per input, whatever ran before."""
    before = dict(COUNTS)
    fuzz_gguf(b"GGUF")
    fuzz_container(b"PK\x05\x06")
    fuzz_args("-n 1 ...")
    fuzz_manifest({"format": 1, "members": []})
    assert {k: COUNTS[k] - before[k] for k in COUNTS} == dict.fromkeys(COUNTS, 1)
