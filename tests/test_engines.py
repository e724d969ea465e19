"""The portability checks on engines and the ELF reader behind them (fast: no model)."""

import subprocess
import zipfile

import pytest

from pyfile import elf, engines, wheels
from pyfile.runtime.errors import InputError, UsageError
from pyfile.runtime.container.manifest import Manifest
from pyfile.runtime.errors import ArchiveError


def _compile(tmp_path, name, code, *flags):
    src = tmp_path / f"{name}.c"
    src.write_text(code)
    out = tmp_path / f"{name}.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(out), str(src), *flags], check=True)
    return out


def test_elf_reader_agrees_with_objdump(tmp_path):
    """GLIBC versions and DT_NEEDED of a library gcc built here, checked against objdump."""
    lib = _compile(tmp_path, "t", "#include <pthread.h>\n#include <math.h>\n"
                   "static void *f(void *a) { return a; }\n"
                   "double g(double x) { pthread_t t; pthread_create(&t, 0, f, 0);"
                   " return cos(x); }\n", "-lm")
    needs = elf.read_file_needs(str(lib))
    dump = subprocess.run(["objdump", "-p", str(lib)], capture_output=True, text=True).stdout
    for soname in needs.libraries:
        assert f"NEEDED               {soname}" in dump
    assert "libc.so.6" in needs.libraries
    assert needs.newest("GLIBC") == (2, 34)  # pthread_create moved into libc in 2.34
    assert needs.newest("GLIBCXX") is None


def test_elf_reader_rejects_other_files(tmp_path):
    with pytest.raises(elf.ELFError):
        elf.read_needs(b"#!/bin/sh\n" + b"\0" * 100)
    with pytest.raises(elf.ELFError):
        elf.read_needs(b"\x7fELF\x01\x01" + b"\0" * 100)  # 32-bit


def _engine(files, version="0.3.36"):
    eng = engines.Engine("test", dict(files), version)
    return eng


def test_problems_name_a_native_build_and_a_new_glibc(tmp_path):
    new = _compile(tmp_path, "new", "#include <pthread.h>\nstatic void *f(void *a)"
                   " { return a; }\nint s(void) { pthread_t t;"
                   " return pthread_create(&t, 0, f, 0); }\n").read_bytes()
    old = _compile(tmp_path, "old", "int s(void) { return 1; }\n").read_bytes()
    native = engines.problems(_engine({"llama_cpp/lib/libggml-cpu.so": old}))
    assert len(native) == 1 and "native build without CPU variants" in native[0]
    fine = engines.problems(_engine({"llama_cpp/lib/libggml-cpu-haswell.so": old}))
    assert fine == []
    too_new = engines.problems(_engine({"llama_cpp/lib/libggml-cpu-haswell.so": old,
                                        "llama_cpp/lib/libllama.so": new}))
    assert too_new == ["libllama.so needs GLIBC_2.34, newer than glibc 2.31 of Debian 11"]
    other = engines.problems(_engine({"llama_cpp/lib/libggml-cpu-x64.so": old}, "0.3.30"))
    assert other == ["it is llama-cpp-python 0.3.30, pyfile needs 0.3.36"]


def test_from_wheel_refuses_what_is_not_an_engine(tmp_path):
    bad = tmp_path / "x.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable wheel"):
        engines.from_wheel(str(bad))
    other = tmp_path / "numpy-1-py3-none-any.whl"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("numpy/__init__.py", "")
    with pytest.raises(InputError, match="not a llama-cpp-python wheel"):
        engines.from_wheel(str(other))


def test_parse_pythons():
    assert wheels.parse_pythons(None) == ["3.9", "3.10", "3.11", "3.12", "3.13", "3.14"]
    assert wheels.parse_pythons("3.12, 3.10,3.12") == ["3.10", "3.12"]
    for bad in ("3.8", "", "3.10,", "py3.11"):
        with pytest.raises(UsageError):
            wheels.parse_pythons(bad or ",")


def test_missing_requirements_use_the_target_markers(tmp_path):
    """anyio needs exceptiongroup on 3.9/3.10 only, whatever Python runs the build."""
    wheel = tmp_path / "anyio-4.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("anyio-4.0.dist-info/METADATA",
                    "Name: anyio\nVersion: 4.0\n"
                    "Requires-Dist: idna>=2.8\n"
                    "Requires-Dist: exceptiongroup>=1.0.2; python_version < \"3.11\"\n"
                    "Requires-Dist: trio>=0.26; extra == \"trio\"\n")
    assert wheels.missing_requirements(str(tmp_path), "3.9") == ["idna>=2.8",
                                                                  "exceptiongroup>=1.0.2"]
    assert wheels.missing_requirements(str(tmp_path), "3.12") == ["idna>=2.8"]


def test_manifest_round_trip_and_damage():
    m = Manifest(tool="pyfile 0", engine="0.3.36", source_date_epoch=5)
    m.members.append({"name": "a.gguf", "kind": "model", "offset": 4096, "size": 10,
                      "sha256": "00", "align": 4096})
    m.default_model = "a.gguf"
    m.runtimes = [{"python": "3.9"}, {"python": "3.14"}]
    back = Manifest.parse(m.to_bytes(), "x")
    assert back == m and back.pythons == ["3.9", "3.14"] and back.names("model") == ["a.gguf"]
    assert m.to_bytes() == back.to_bytes()
    for raw, why in ((b"[]", "not a JSON object"), (b'{"format": 1}', "'members' must be"),
                     (b'{"format": 1, "members": [], "runtimes": {}}', "'runtimes' must be"),
                     (b'{"format": 1, "members": [], "default_model": "b"}', "default_model")):
        with pytest.raises(ArchiveError, match=why):
            Manifest.parse(raw, "x")
    with pytest.raises(ArchiveError, match="newer pyfile"):
        Manifest.parse(b'{"format": 99, "members": []}', "x")


def test_installed_engine_is_checked_once_and_read_only_when_packed(tmp_path, monkeypatch):
    """The llama-cpp-python of this venv (installed by `make setup` from the portable wheel):
    listed by its files' identity, its check made once and then remembered, its ~100 MB read
    only when a runtime bundle must be assembled from it."""
    import os
    monkeypatch.setenv("PYFILE_BUILD_CACHE", str(tmp_path))
    first = engines.installed()
    assert first is not None and first.version == "0.3.36"
    assert first.checked is not None and first.checked["problems"] == []
    assert first.checked["glibc"] == "2.27"
    memos = [n for n in os.listdir(tmp_path / "objects") if n.endswith(".check")]
    assert len(memos) == 1
    second = engines.installed()
    assert second.identity == first.identity and second.checked == first.checked
    assert second.files == {}  # remembered: nothing read
    lib = next(rel for rel in second.paths if rel.endswith("lib/libllama.so"))
    with open(second.paths[lib], "rb") as f:
        assert second.load().files[lib] == f.read()


def test_toolchain_compiles_for_old_glibc(tmp_path):
    """`pyfile engine toolchain`: the zig compilers the engine (and the Vulkan variant) are
    built with. A library using pthread_create, which needs GLIBC_2.34 from the system's gcc
    here, needs no GLIBC newer than the 2.28 target from them."""
    import os
    from conftest import pyfile_cli
    r = pyfile_cli("engine", "toolchain", timeout=600)
    assert r.returncode == 0, r.stderr
    folder = r.stdout.strip()
    assert sorted(os.listdir(folder)) == ["zig-ar", "zig-c++", "zig-cc", "zig-ranlib"]
    src = tmp_path / "t.c"
    src.write_text("#include <pthread.h>\nstatic void *g(void *a) { return a; }\n"
                   "int f(void) { pthread_t t; return pthread_create(&t, 0, g, 0); }\n")
    out = tmp_path / "t.so"
    subprocess.run([os.path.join(folder, "zig-cc"), "-shared", "-fPIC", "-o", str(out),
                    str(src)], check=True, capture_output=True)
    newest = elf.read_file_needs(str(out)).newest("GLIBC")
    assert newest is not None and newest <= (2, 28)
