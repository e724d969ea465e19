"""Which published GPU variants a build packs by default (no engine or model needed)."""

import json

from pyfile import variants


def publish(root, kind, lib, **meta):
    folder = root / kind
    folder.mkdir(parents=True)
    (folder / lib).write_bytes(b"\x7fELF")
    (folder / "variant.json").write_text(json.dumps(
        {"kind": kind, "engine": "llama-cpp-python 0.3.36", **meta}))
    return folder


def test_published_variants_are_packed_and_checked(tmp_path):
    publish(tmp_path, "vulkan", "libggml-vulkan.so", needs=["libvulkan.so.1"], glibc="2.27")
    cuda = publish(tmp_path, "cuda", "libggml-cuda.so", needs=[], glibc="2.36")
    publish(tmp_path, "rocm", "libggml-hip.so", engine="llama-cpp-python 0.3.35")
    notes = []
    found = variants.published("0.3.36", [], notes, {"PYFILE_VARIANTS": str(tmp_path)})
    assert list(found) == ["vulkan"] and found["vulkan"].libs == ["libggml-vulkan.so"]
    assert notes == [
        f"left out the CUDA variant in {cuda}: it needs GLIBC_2.36, newer than the 2.31 a "
        f"pyfile runs on (--backend cuda={cuda} packs it anyway)",
        f"left out the ROCm variant in {tmp_path / 'rocm'}: built for llama-cpp-python 0.3.35, "
        f"this engine is llama-cpp-python 0.3.36"]
    # An explicit --backend packs what it is given.
    assert variants.read_specs([f"cuda={cuda}"])["cuda"].requires["glibc"] == "2.36"


def test_missing_vulkan_is_one_note_and_skip_wins(tmp_path):
    notes = []
    assert variants.published("0.3.36", [], notes, {"PYFILE_VARIANTS": str(tmp_path)}) == {}
    assert len(notes) == 1 and "carries no Vulkan variant" in notes[0]
    notes = []
    variants.published("0.3.36", ["vulkan"], notes, {"PYFILE_VARIANTS": str(tmp_path)})
    assert notes == []


def test_default_folder_follows_xdg_cache_home(tmp_path):
    assert variants.variants_dir({"XDG_CACHE_HOME": str(tmp_path)}) == str(
        tmp_path / "pyfile-dev" / "variants")
