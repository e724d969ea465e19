import os
import struct

import numpy as np
import pytest

from ggufgen import gguf_string, header, write_tiny
from pyfile import gguf
from pyfile.runtime.errors import GGUFError


def test_reads_tiny(tiny_gguf):
    info = gguf.read(str(tiny_gguf))
    s = info.summary()
    assert (s["architecture"], s["name"], s["context_length"]) == ("llama", "tiny", 256)
    assert s["tensor_count"] == 3 and s["parameters"] == 3 * 4 * 32
    assert s["chat_template"] is True
    assert s["size"] == os.path.getsize(tiny_gguf)
    assert info.data_offset % 32 == 0


def test_every_truncation_is_an_error(tmp_path, tiny_gguf):
    data = tiny_gguf.read_bytes()
    bad = tmp_path / "cut.gguf"
    step = max(1, len(data) // 300)
    for n in list(range(0, len(data), step)) + [len(data) - 1]:
        bad.write_bytes(data[:n])
        with pytest.raises(GGUFError):
            gguf.read(str(bad))


def test_reads_at_an_offset(tmp_path, tiny_gguf):
    blob = tmp_path / "blob"
    blob.write_bytes(b"x" * 4096 + tiny_gguf.read_bytes() + b"tail")
    info = gguf.read(str(blob), 4096, os.path.getsize(tiny_gguf))
    assert info.summary()["name"] == "tiny"


@pytest.mark.parametrize("data, message", [
    (b"GGML" + b"\0" * 40, "bad magic"),
    (header(0, 0, version=1) + b"\0" * 8, "unsupported GGUF version 1"),
    (header(2 ** 63, 0) + b"\0" * 64, "tensor count"),
    (header(0, 2 ** 60) + b"\0" * 64, "metadata count"),
    (header(0, 1) + struct.pack("<Q", 2 ** 62) + b"k" * 32, "claims"),
    (header(0, 1) + gguf_string("k") + struct.pack("<IIQ", 9, 8, 2 ** 61) + b"\0" * 32,
     "length of 'k'"),
    (header(0, 1) + gguf_string("k") + struct.pack("<I", 99) + b"\0" * 32, "not a GGUF value type"),
    (header(0, 2) + gguf_string("a") + struct.pack("<IB", 0, 1) + gguf_string("a")
     + struct.pack("<IB", 0, 1) + b"\0" * 16, "duplicate metadata key"),
    (header(0, 1) + gguf_string("general.alignment") + struct.pack("<II", 4, 48) + b"\0" * 16,
     "power of two"),
    (header(1, 0) + gguf_string("t") + struct.pack("<IQIQ", 1, 32, 77, 0) + b"\0" * 64,
     "unknown ggml type 77"),
    (header(1, 0) + gguf_string("t") + struct.pack("<I", 9) + b"\0" * 80, "dimensions"),
    (header(1, 0) + gguf_string("t") + struct.pack("<IQIQ", 1, 2 ** 40, 0, 0) + b"\0" * 64,
     "past the end"),
    (header(0, 1) + gguf_string("k") + struct.pack("<II", 9, 9) + b"\0" * 16, "nested array"),
])
def test_hostile_headers(tmp_path, data, message):
    p = tmp_path / "bad.gguf"
    p.write_bytes(data)
    with pytest.raises(GGUFError, match=message):
        gguf.read(str(p))


def test_missing_file(tmp_path):
    with pytest.raises(GGUFError, match="cannot read"):
        gguf.read(str(tmp_path / "nope.gguf"))


def test_custom_alignment_respected(tmp_path):
    p = write_tiny(str(tmp_path / "a.gguf"), alignment=64)
    info = gguf.read(p)
    assert info.alignment == 64 and info.data_offset % 64 == 0


@pytest.mark.slow
def test_real_model_summary(real_model):
    s = gguf.read(str(real_model)).summary()
    assert s["architecture"] == "llama"
    assert s["quantization"] == "Q4_1"
    assert s["context_length"] == 8192 and s["block_count"] == 30
    assert s["vocab_size"] == 49152 and s["chat_template"]
    assert 130e6 < s["parameters"] < 140e6


def _with_vocab(path, n):
    import gguf as gguf_writer
    w = gguf_writer.GGUFWriter(str(path), "llama")
    w.add_token_list([f"tok{i}" for i in range(n)])
    w.add_tensor("t", np.zeros((4, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_vocabulary_skipped_and_counted(tmp_path):
    p = _with_vocab(tmp_path / "v.gguf", 5000)
    info = gguf.read(str(p))
    assert info.summary()["vocab_size"] == 5000
    assert info.tensors[0].name == "t"  # the table after the vocabulary was found


def test_truncated_inside_vocabulary(tmp_path):
    data = _with_vocab(tmp_path / "v.gguf", 500).read_bytes()
    start = data.index(b"tok0") - 8
    end = data.index(b"tok499") + 6
    bad = tmp_path / "cut.gguf"
    for n in range(start, end + 1, 7):  # cuts in lengths and in strings alike
        bad.write_bytes(data[:n])
        with pytest.raises(GGUFError, match="item of 'tokenizer.ggml.tokens'|truncated"):
            gguf.read(str(bad))


def test_vocabulary_string_longer_than_file(tmp_path):
    data = bytearray(_with_vocab(tmp_path / "v.gguf", 100).read_bytes())
    at = data.index(b"tok50") - 8
    data[at:at + 8] = (2 ** 40).to_bytes(8, "little")
    bad = tmp_path / "long.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="claims 1099511627776 bytes"):
        gguf.read(str(bad))
