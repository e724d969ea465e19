"""Which published GPU variants a build packs by default (no engine or model needed)."""

import io
import json
import subprocess
import tarfile

from pyfile import variants

#: C sources of stand-in libraries: one needing only old glibc symbols, one needing
#: GLIBC_2.34 (pthread_create moved into libc then), newer than every pyfile promises.
OLD_GLIBC = '#include <stdio.h>\nint f(void) { return puts("1"); }\n'
NEW_GLIBC = ("#include <pthread.h>\nstatic void *g(void *a) { return a; }\n"
             "int f(void) { pthread_t t; return pthread_create(&t, 0, g, 0); }\n")


def compile_lib(path, code):
    src = path.with_suffix(".c")
    src.write_text(code)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(path), str(src)], check=True)
    src.unlink()


def publish(root, kind, lib, code=OLD_GLIBC, **meta):
    folder = root / kind
    folder.mkdir(parents=True)
    compile_lib(folder / lib, code)
    (folder / "variant.json").write_text(json.dumps(
        {"kind": kind, "engine": "llama-cpp-python 0.3.36", **meta}))
    return folder


def test_published_variants_are_packed_and_checked(tmp_path, monkeypatch):
    """A variant is left out when it is built for another engine, or when its library needs
    a newer glibc than a pyfile promises: read from the library itself, whatever its
    variant.json says; a file that is not a shared library is left out too."""
    monkeypatch.setenv("PYFILE_BUILD_CACHE", str(tmp_path / "cache"))
    publish(tmp_path, "vulkan", "libggml-vulkan.so", needs=["libvulkan.so.1"], glibc="2.27")
    cuda = publish(tmp_path, "cuda", "libggml-cuda.so", NEW_GLIBC, needs=[],
                   glibc="2.27")  # says 2.27; the library needs 2.34
    publish(tmp_path, "rocm", "libggml-hip.so", engine="llama-cpp-python 0.3.35")
    notes = []
    found = variants.published("0.3.36", [], notes, {"PYFILE_VARIANTS": str(tmp_path)})
    assert list(found) == ["vulkan"] and found["vulkan"].libs == ["libggml-vulkan.so"]
    assert found["vulkan"].requires["glibc"] == "2.2.5"  # what the library needs, recorded
    assert notes == [
        f"left out the CUDA variant in {cuda}: it needs GLIBC_2.34, newer than the 2.31 a "
        f"pyfile runs on (--backend cuda={cuda} packs it anyway)",
        f"left out the ROCm variant in {tmp_path / 'rocm'}: built for llama-cpp-python 0.3.35, "
        f"this engine is llama-cpp-python 0.3.36"]
    # An explicit --backend packs what it is given.
    assert variants.read_specs([f"cuda={cuda}"])["cuda"].requires["glibc"] == "2.27"
    (tmp_path / "vulkan" / "libggml-vulkan.so").write_bytes(b"\x7fELF not really")
    notes = []
    assert variants.published("0.3.36", ["cuda", "rocm"], notes,
                              {"PYFILE_VARIANTS": str(tmp_path)}) == {}
    assert len(notes) == 1 and "libggml-vulkan.so is not a shared library" in notes[0]


def test_each_missing_kind_is_one_note_naming_its_make_target_and_skip_wins(tmp_path):
    """Nothing published: one line per kind, naming what builds it (CUDA is the long,
    optional `make gpu`); kinds left out on purpose are not mentioned."""
    notes = []
    assert variants.published("0.3.36", [], notes, {"PYFILE_VARIANTS": str(tmp_path)}) == {}
    assert notes == [f"this file carries no {title} variant (none built in {tmp_path}; "
                     f"`{target}` or scripts/build-variant.sh {kind} builds it)"
                     for title, target, kind in (("CUDA", "make gpu", "cuda"),
                                                 ("ROCm", "make setup", "rocm"),
                                                 ("Vulkan", "make setup", "vulkan"))]
    notes = []
    variants.published("0.3.36", ["vulkan", "cuda", "rocm"], notes,
                       {"PYFILE_VARIANTS": str(tmp_path)})
    assert notes == []


def test_rocm_sources_are_packed_as_files_and_kinds_can_be_chosen(tmp_path, monkeypatch):
    """A source variant (variant.json "compile") is every file in its folder, checked for
    ggml's GPU backend, packed as one tar with nothing of the builder's (times, owners);
    `--gpu-variants` packs only the kinds it names and refuses an unknown kind with one line
    and exit status 2."""
    from conftest import pyfile_cli
    from ggufgen import write_tiny
    from pyfile.runtime.container.archive import Archive

    monkeypatch.setenv("PYFILE_BUILD_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "variants"
    publish(root, "vulkan", "libggml-vulkan.so")
    src = root / "rocm"
    (src / "ggml" / "src" / "ggml-cuda").mkdir(parents=True)
    (src / "ggml" / "src" / "ggml-cuda" / "ggml-cuda.cu").write_text("// ggml\n")
    (src / "blas").mkdir()
    (src / "blas" / "blas.cu").write_text("// blas\n")
    (src / "variant.json").write_text(json.dumps(
        {"kind": "rocm", "engine": "llama-cpp-python 0.3.36", "compile": "ggml-cuda", "needs": []}))
    found = variants.published("0.3.36", ["cuda"], [], {"PYFILE_VARIANTS": str(root)})
    assert found["rocm"].libs == ["blas/blas.cu", "ggml/src/ggml-cuda/ggml-cuda.cu"]
    model = write_tiny(str(tmp_path / "m.gguf"))
    env = {**__import__("os").environ, "PYFILE_VARIANTS": str(root)}
    out = tmp_path / "rocm.pyfile"
    r = pyfile_cli("build", model, "-o", str(out), "--slim", "--gpu-variants", "rocm", env=env)
    assert r.returncode == 0, r.stderr
    with Archive.open(str(out)) as arch:
        assert list(arch.manifest.variants) == ["rocm"]
        assert arch.manifest.variants["rocm"]["members"] == [".pyfile/variants/rocm/sources.tar"]
        assert arch.manifest.variants["rocm"]["requires"]["compile"] == "ggml-cuda"
        tar = tarfile.open(fileobj=io.BytesIO(arch.read(".pyfile/variants/rocm/sources.tar")))
    assert tar.getnames() == ["blas/blas.cu", "ggml/src/ggml-cuda/ggml-cuda.cu"]
    assert tar.extractfile("blas/blas.cu").read() == b"// blas\n"
    assert {(m.mtime, m.mode, m.uid) for m in tar.getmembers()} == {(0, 0o644, 0)}
    r = pyfile_cli("build", model, "-o", str(tmp_path / "x.pyfile"), "--slim",
                   "--gpu-variants", "vulkan,metal", env=env)
    assert r.returncode == 2
    assert r.stderr.strip() == ("pyfile: --gpu-variants: unknown kind 'metal' (choose from "
                                "cuda, rocm, vulkan)")
    assert not (tmp_path / "x.pyfile").exists()


def test_default_folder_follows_xdg_cache_home(tmp_path):
    assert variants.variants_dir({"XDG_CACHE_HOME": str(tmp_path)}) == str(
        tmp_path / "pyfile-dev" / "variants")


def test_a_rewritten_library_is_packed_anew(tmp_path, monkeypatch):
    """A variant library's digests and deflate stream are reused from the build cache only
    while the file is the same one: rewritten in place with the same size and modification
    time, the next build packs (and records) the new bytes."""
    import hashlib
    import os

    from conftest import pyfile_cli
    from ggufgen import write_tiny
    from pyfile.runtime.container.archive import Archive

    monkeypatch.setenv("PYFILE_BUILD_CACHE", str(tmp_path / "cache"))
    model = write_tiny(str(tmp_path / "m.gguf"))
    folder = publish(tmp_path / "variants", "vulkan", "libggml-vulkan.so")
    lib = folder / "libggml-vulkan.so"
    packed: list = []
    versions = []
    for n in (1, 2):  # two libraries of the same size that differ in one constant
        compile_lib(tmp_path / f"v{n}.so", OLD_GLIBC.replace("1", str(n)))
        versions.append((tmp_path / f"v{n}.so").read_bytes())
    assert len(versions[0]) == len(versions[1]) and versions[0] != versions[1]
    for content in versions:
        st = lib.stat()
        lib.write_bytes(content)
        os.utime(lib, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime
        out = tmp_path / f"{len(packed)}.pyfile"
        r = pyfile_cli("build", model, "-o", str(out), "--slim", "--no-gpu-variants",
                       "--backend", f"vulkan={folder}")
        assert r.returncode == 0, r.stderr
        with Archive.open(str(out)) as arch:
            name = ".pyfile/variants/vulkan/libggml-vulkan.so"
            assert arch.read(name) == content
            assert arch.manifest_entry(name)["sha256"] == hashlib.sha256(content).hexdigest()
            assert arch.verify() == []
        packed.append(content)
    kept = os.listdir(tmp_path / "cache" / "objects")  # two digests, two deflate streams
    assert sorted(n.rsplit(".", 1)[1] for n in kept if not n.endswith((".marshal", ".runtime"))
                  ) == ["deflate6", "deflate6", "library", "library"]
