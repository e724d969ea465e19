"""CPU variant choice: a variant that dies with SIGILL is caught in a child and skipped,
and the verdict is remembered. The crashing variant is a real shared library whose init
executes an illegal instruction (ud2), standing in for the AMX variant on hosts that hide
AMX state (the crash our machines showed)."""

import json
import re
import subprocess

import pytest

from conftest import need, run_env, run_file

pytestmark = pytest.mark.slow
PARIS = ["-p", "The capital of France is", "--temp", "0", "-n", "8"]
FAKE = r"""
#include <stdio.h>
#include <stdlib.h>
int ggml_backend_score(void) { return 1 << 24; }
void *ggml_backend_init(void) {
    const char *marker = getenv("FAKE_VARIANT_MARKER");
    if (marker) { FILE *f = fopen(marker, "a"); if (f) { fputs("x", f); fclose(f); } }
    __builtin_trap();
    return 0;
}
"""


@pytest.fixture
def crashing_variant(tmp_path):
    need("cc")
    src = tmp_path / "fake.c"
    src.write_text(FAKE)
    d = tmp_path / "variants"
    d.mkdir()
    lib = d / "libggml-cpu-fakeamx.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return d


def test_sigill_variant_is_skipped_and_remembered(tmp_path, smol_pyfile, crashing_variant):
    marker = tmp_path / "marker"
    cache = tmp_path / "cache"
    env = run_env(PYFILE_BACKEND_DIR=str(crashing_variant), PYFILE_CACHE_DIR=str(cache),
                  FAKE_VARIANT_MARKER=str(marker))
    first = run_file(smol_pyfile, *PARIS, env=env)
    assert first.returncode == 0, first.stderr
    assert "Paris" in first.stdout
    assert "skipped: fakeamx crashed with SIGILL" in first.stderr
    assert re.search(r"backend cpu \(\w+ variant", first.stderr)
    assert marker.read_text() == "x"  # probed once, in a child
    verdicts = json.loads((cache / "verdicts.json").read_text())
    assert {v["variant"]: v["ok"] for v in verdicts.values() if "variant" in v}["fakeamx"] \
        is False

    second = run_file(smol_pyfile, *PARIS, env=env)
    assert second.returncode == 0 and second.stdout == first.stdout
    assert "skipped: fakeamx crashed with SIGILL" in second.stderr
    assert marker.read_text() == "x"  # the verdict came from the cache: no second probe


SCORED = r"""
#include <stdio.h>
#include <stdlib.h>
int ggml_backend_score(void) {
    FILE *f = fopen(getenv("FAKE_SCORE_MARKER"), "a"); if (f) { fputs("s", f); fclose(f); }
    return 7;
}
"""


def test_variant_scores_remembered(tmp_path, monkeypatch):
    """Ranking loads every variant library once per CPU and set of files, not at each start."""
    import types
    from pyfile.runtime.backend import cpu
    need("cc")
    (tmp_path / "pkg" / "lib").mkdir(parents=True)
    src = tmp_path / "scored.c"
    src.write_text(SCORED)
    for name in ("alpha", "beta"):
        subprocess.run(["cc", "-shared", "-fPIC", "-o",
                        str(tmp_path / "pkg" / "lib" / f"libggml-cpu-{name}.so"), str(src)],
                       check=True)
    marker = tmp_path / "marker"
    monkeypatch.setenv("FAKE_SCORE_MARKER", str(marker))
    for var in ("PYFILE_BACKEND_DIR", "LLAMA_CPP_LIB_PATH", "PYFILE_CPU_VARIANT"):
        monkeypatch.delenv(var, raising=False)
    engine = types.SimpleNamespace(__file__=str(tmp_path / "pkg" / "__init__.py"))
    path = str(tmp_path / "verdicts.json")
    first = cpu.candidates(engine, cpu.Verdicts(path))
    assert marker.read_text() == "ss"  # both scored
    again = cpu.candidates(engine, cpu.Verdicts(path))  # a later start
    assert marker.read_text() == "ss"  # from the cache: no library loaded
    assert [(c.variant, c.score) for c in again] == [(c.variant, c.score) for c in first]
    assert {c.variant for c in again} == {"alpha", "beta"}


def test_forced_variant(tmp_path, smol_pyfile):
    env = run_env(PYFILE_CPU_VARIANT="haswell", PYFILE_CACHE_DIR=str(tmp_path))
    r = run_file(smol_pyfile, *PARIS, env=env)
    assert r.returncode == 0 and "Paris" in r.stdout
    assert "backend cpu (haswell variant, AVX2" in r.stderr
    env["PYFILE_CPU_VARIANT"] = "pentium"
    r = run_file(smol_pyfile, *PARIS, env=env)
    assert r.returncode == 1 and "no such CPU variant" in r.stderr


def test_only_crashing_variants_is_a_clean_error(tmp_path, smol_pyfile, crashing_variant):
    env = run_env(PYFILE_BACKEND_DIR=str(crashing_variant), PYFILE_CACHE_DIR=str(tmp_path),
                  PYFILE_CPU_VARIANT="fakeamx")
    r = run_file(smol_pyfile, *PARIS, env=env)
    assert r.returncode == 1
    assert "no CPU variant of the engine can run this model here" in r.stderr
    assert "SIGILL" in r.stderr and len(r.stderr.strip().splitlines()) == 1
