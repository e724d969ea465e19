"""Tiny GGUF files for tests, written with the ``gguf`` package (random weights)."""

from __future__ import annotations

import struct
from typing import Optional

import numpy as np

from pyfile.runtime.backend.engine import GGUF_MAGIC


def write_tiny(path: str, *, n_tensors: int = 3, seed: int = 0, name: str = "tiny",
               alignment: Optional[int] = None, big_tensor: int = 0) -> str:
    """A small but well-formed GGUF (not runnable): a few f32 tensors and some metadata."""
    import gguf
    w = gguf.GGUFWriter(path, "llama")
    w.add_name(name)
    w.add_context_length(256)
    w.add_block_count(1)
    w.add_embedding_length(16)
    w.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    if alignment:
        w.add_custom_alignment(alignment)
    rng = np.random.default_rng(seed)
    for i in range(n_tensors):
        w.add_tensor(f"t{i}", rng.standard_normal((4, 32)).astype(np.float32))
    if big_tensor:
        w.add_tensor("big", np.zeros(big_tensor // 4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def header(n_tensors: int, n_kv: int, version: int = 3, magic: bytes = GGUF_MAGIC) -> bytes:
    """Just a GGUF header: for hostile-count and truncation tests."""
    return magic + struct.pack("<IQQ", version, n_tensors, n_kv)


def gguf_string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def write_sparse(path: str, size: int) -> str:
    """A well-formed GGUF of about ``size`` bytes whose one big tensor is a hole (quick to
    make at any size; reads as zeros)."""
    import gguf
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("sparse")
    n = max(32, size // 4 // 32 * 32)
    w.add_tensor_info("big", [n], np.dtype(np.float32), n * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with open(path, "r+b") as f:
        data_start = -(-f.seek(0, 2) // 32) * 32  # GGUF's default alignment
        f.truncate(data_start + n * 4)
    return path


#: The words the colour-probe projector maps pure red, green and blue images onto: SmolLM2's
#: tokens for " red", " green", " blue" (GPT-2 byte-level BPE spells the space "Ġ").
COLOUR_WORDS = ("red", "green", "blue")
#: The probe projector's shape: 32x32 images, 8x8 patches, all 16 patches pooled into one
#: image token (gemma3 decodes image tokens non-causally; with one token that cannot matter).
PROBE_IMAGE, PROBE_PATCH, PROBE_MERGE, PROBE_WIDTH = 32, 8, 4, 64


def _reader_tensor(reader, name: str):
    import gguf
    for t in reader.tensors:
        if t.name == name:
            return gguf.quants.dequantize(t.data, t.tensor_type).reshape(
                [int(x) for x in reversed(t.shape)])
    raise KeyError(name)


def _token_ids(reader, words) -> list:
    field = reader.fields["tokenizer.ggml.tokens"]
    index = {bytes(field.parts[i]).decode("utf-8", "replace"): n
             for n, i in enumerate(field.data)}
    return [index["Ġ" + w] for w in words]


def write_colour_projector(path: str, text_model: str, *, width: int = None) -> str:
    """A gemma3-type multimodal projector (~300 KB) that maps a pure red, green or blue
    image onto ``text_model``'s input embedding of " red", " green" or " blue".

    How: the patch embedding's output channel c is the mean of colour plane c (weights
    1/64 over an 8x8 patch); the one transformer block has zero attention and feed-forward
    weights (it adds nothing to the residual); the 16 patches are pooled into one token,
    RMS-normalised (a pure colour becomes sqrt(64) times a unit vector) and projected by
    ``mm.input_projection``, whose row c is the word's embedding divided by sqrt(64).
    ``width`` overrides the projection width (to make a projector for another model)."""
    import gguf
    reader = gguf.GGUFReader(text_model)
    emb = None if width is not None else _reader_tensor(reader, "token_embd.weight")
    n_text = emb.shape[1] if emb is not None else width
    proj = np.zeros((PROBE_WIDTH, n_text), dtype=np.float32)
    if emb is not None:  # (vocab, n_embd)
        for c, tok in enumerate(_token_ids(reader, COLOUR_WORDS)):
            proj[c] = emb[tok] / np.sqrt(PROBE_WIDTH)
    v = PROBE_WIDTH
    w = gguf.GGUFWriter(path, "clip")
    w.add_name("colour-probe")
    w.add_clip_projector_type("gemma3")
    w.add_clip_has_vision_encoder(True)
    w.add_vision_embedding_length(v)
    w.add_vision_head_count(1)
    w.add_vision_feed_forward_length(v)
    w.add_vision_block_count(1)
    w.add_vision_projection_dim(n_text)
    w.add_vision_attention_layernorm_eps(1e-6)
    w.add_vision_image_size(PROBE_IMAGE)
    w.add_vision_patch_size(PROBE_PATCH)
    w.add_vision_image_mean([0.0, 0.0, 0.0])
    w.add_vision_image_std([1.0, 1.0, 1.0])
    w.add_vision_projector_scale_factor(PROBE_MERGE)
    patch = np.zeros((v, 3, PROBE_PATCH, PROBE_PATCH), dtype=np.float32)
    for c in range(3):
        patch[c, c] = 1.0 / (PROBE_PATCH * PROBE_PATCH)
    w.add_tensor("v.patch_embd.weight", patch)
    zeros = np.zeros((v, v), dtype=np.float32)
    for part in ("attn_q", "attn_k", "attn_v", "attn_out", "ffn_up", "ffn_down"):
        w.add_tensor(f"v.blk.0.{part}.weight", zeros)
    for ln in ("ln1", "ln2"):
        w.add_tensor(f"v.blk.0.{ln}.weight", np.ones(v, dtype=np.float32))
        w.add_tensor(f"v.blk.0.{ln}.bias", np.zeros(v, dtype=np.float32))
    w.add_tensor("mm.soft_emb_norm.weight", np.ones(v, dtype=np.float32))
    w.add_tensor("mm.input_projection.weight", proj)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def colour_png(colour: str, size: int = PROBE_IMAGE) -> bytes:
    """A PNG of one pure colour ("red", "green", "blue"), written with Pillow."""
    import io
    from PIL import Image
    rgb = tuple(255 if c == colour else 0 for c in COLOUR_WORDS)
    out = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(out, "PNG")
    return out.getvalue()


def write_small_llama(path: str, tokenizer_from: str, *, name: str = "small-llama",
                      n_embd: int = 64, seed: int = 0, pooling: int = 0) -> str:
    """A runnable one-block llama with random weights and the tokenizer (vocabulary,
    merges, special tokens, chat template) of ``tokenizer_from``: a second real model for
    multi-model files. It answers nonsense, quickly. ``pooling`` (llama.cpp's pooling type:
    1 mean, 2 cls, 3 last) makes it an embedding model."""
    import gguf
    reader = gguf.GGUFReader(tokenizer_from)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name(name)
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_block_count(1)
    w.add_feed_forward_length(n_embd * 2)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_rope_dimension_count(n_embd // 2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(1)  # F16
    if pooling:
        w.add_pooling_type(gguf.PoolingType(pooling))
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            sub = field.types[1]
            if sub == gguf.GGUFValueType.STRING:
                value = [bytes(field.parts[i]).decode("utf-8", "surrogateescape")
                         for i in field.data]
            else:
                value = [field.parts[i].tolist()[0] for i in field.data]
            w.add_array(key, value)
        elif kind == gguf.GGUFValueType.STRING:
            w.add_string(key, bytes(field.parts[field.data[0]]).decode("utf-8"))
        else:
            w.add_key_value(key, field.parts[field.data[0]].tolist()[0], kind)
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    rng = np.random.default_rng(seed)

    def mat(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float16)

    w.add_tensor("token_embd.weight", mat(vocab, n_embd))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
    for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
        w.add_tensor(f"blk.0.{part}.weight", mat(n_embd, n_embd))
    w.add_tensor("blk.0.ffn_gate.weight", mat(n_embd * 2, n_embd))
    w.add_tensor("blk.0.ffn_up.weight", mat(n_embd * 2, n_embd))
    w.add_tensor("blk.0.ffn_down.weight", mat(n_embd, n_embd * 2))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
