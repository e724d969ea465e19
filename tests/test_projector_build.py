"""Build side of images: a projector (mmproj) is paired with its model in the manifest,
shown by inspect, refused when its width does not match; several models in one file."""

import json
import os

from conftest import pyfile_cli
from ggufgen import write_colour_projector, write_tiny
from pyfile.runtime.container.archive import Archive


def _build(*args):
    return pyfile_cli("build", *map(str, args), "--slim")


def test_build_pairs_a_projector_with_its_model_and_inspect_shows_it(tmp_path, tiny_gguf):
    proj = write_colour_projector(str(tmp_path / "mmproj.gguf"), str(tiny_gguf), width=16)
    out = tmp_path / "m.pyfile"
    r = _build(tiny_gguf, "--mmproj", proj, "-o", out)
    assert r.returncode == 0, r.stderr
    with Archive.open(str(out)) as arch:
        assert arch.manifest.mmproj("tiny.gguf") == "mmproj.gguf"
        assert arch.manifest_entry("mmproj.gguf")["kind"] == "mmproj"
        assert list(arch.manifest.models) == ["tiny.gguf"]  # a projector is not a model
        assert arch.manifest.names("model") == ["tiny.gguf"]
        assert arch.verify() == []
    info = json.loads(pyfile_cli("inspect", str(out), "--json").stdout)
    assert info["models"]["tiny.gguf"]["mmproj"] == "mmproj.gguf"
    assert info["projectors"]["mmproj.gguf"]["projector"] == {
        "type": "gemma3", "projection_dim": 16, "vision": True, "audio": False,
        "image_size": 32}
    text = pyfile_cli("inspect", str(out)).stdout
    assert "projector       mmproj.gguf (gemma3, embeddings 16 wide; inputs: vision)" in text


def test_a_projector_among_the_extras_belongs_to_the_model_before_it(tmp_path, tiny_gguf):
    second = write_tiny(str(tmp_path / "second.gguf"), name="second", seed=1)
    proj = write_colour_projector(str(tmp_path / "p.gguf"), str(tiny_gguf), width=16)
    out = tmp_path / "m.pyfile"
    r = _build(tiny_gguf, second, proj, "-o", out)
    assert r.returncode == 0, r.stderr
    with Archive.open(str(out)) as arch:
        man = arch.manifest
        assert set(man.models) == {"tiny.gguf", "second.gguf"}
        assert man.default_model == "tiny.gguf"
        assert man.mmproj("second.gguf") == "p.gguf" and man.mmproj("tiny.gguf") is None


def test_a_projector_of_the_wrong_width_is_refused_in_one_line(tmp_path, tiny_gguf):
    proj = write_colour_projector(str(tmp_path / "wide.gguf"), str(tiny_gguf), width=576)
    out = tmp_path / "m.pyfile"
    r = _build(tiny_gguf, "--mmproj", proj, "-o", out)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"pyfile: {proj}: this projector makes embeddings 576 wide but tiny.gguf takes 16; "
        f"it belongs to another model"]
    assert not out.exists()


def test_a_projector_alone_or_a_model_as_mmproj_is_refused(tmp_path, tiny_gguf):
    proj = write_colour_projector(str(tmp_path / "p.gguf"), str(tiny_gguf), width=16)
    r = _build(proj, "-o", tmp_path / "a.pyfile")
    assert r.returncode == 1 and "is a multimodal projector (mmproj), not a model" in r.stderr
    r = _build(tiny_gguf, "--mmproj", tiny_gguf, "-o", tmp_path / "b.pyfile")
    assert r.returncode == 1 and "not a multimodal projector" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "a.pyfile").exists() and not (tmp_path / "b.pyfile").exists()


def test_add_pairs_a_projector_and_refuses_a_mismatch_without_writing(tmp_path, tiny_gguf):
    out = tmp_path / "m.pyfile"
    assert _build(tiny_gguf, "-o", out).returncode == 0
    wide = write_colour_projector(str(tmp_path / "wide.gguf"), str(tiny_gguf), width=576)
    size = os.path.getsize(out)
    r = pyfile_cli("add", str(out), "--mmproj", wide)
    assert r.returncode == 1 and "belongs to another model" in r.stderr
    assert os.path.getsize(out) == size
    proj = write_colour_projector(str(tmp_path / "p.gguf"), str(tiny_gguf), width=16)
    r = pyfile_cli("add", str(out), "--mmproj", proj)
    assert r.returncode == 0, r.stderr
    with Archive.open(str(out)) as arch:
        assert arch.manifest.mmproj("tiny.gguf") == "p.gguf"
        assert arch.verify() == []
