"""The Vulkan path end to end, on Mesa's software Vulkan device (lavapipe, "llvmpipe").

lavapipe is a real Vulkan driver that computes on the CPU (Debian's mesa-vulkan-drivers,
installed by scripts/install-tools.sh), so the packed Vulkan variant, its probe and its
selection run for real. The tests narrow the loader's driver list to lavapipe, so a machine
with a real GPU runs them on the same device as one without. It is slow (~1.5 tok/s on SmolLM2), so
the answers asked for are short. `make setup` builds the variant that a default build packs.
"""

import ctypes
import glob
import os
import re
import shutil
import subprocess

import pytest

from conftest import pyfile_cli, run_file

from pyfile.runtime.container.archive import Archive

pytestmark = pytest.mark.slow
SOFTWARE_OK = {"PYFILE_ALLOW_SOFTWARE_GPU": "1"}
QUESTION = ["-p", "The capital of France is", "--temp", "0"]


def lavapipe_only(env: dict) -> dict:
    """``env`` with the Vulkan loader's driver list narrowed to lavapipe: on a machine with a
    real GPU too, the Vulkan device a run sees is the software one, as on one without."""
    icds = glob.glob("/usr/share/vulkan/icd.d/lvp_icd.*.json")
    assert icds, "Mesa's lavapipe is not installed: run `make tools`"
    return {**env, "VK_DRIVER_FILES": icds[0], "VK_ICD_FILENAMES": icds[0]}


def carried_variants(path) -> dict:
    with Archive.open(str(path)) as arch:
        return dict(arch.manifest.variants)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_default_build_carries_the_vulkan_variant(smol_pyfile):
    variants = carried_variants(smol_pyfile)
    assert "vulkan" in variants, ("the default build packed no Vulkan variant: run `make setup` "
                                  "(it builds one into ~/.cache/pyfile-dev/variants/vulkan)")
    assert variants["vulkan"]["members"] == [".pyfile/variants/vulkan/libggml-vulkan.so"]
    assert variants["vulkan"]["requires"]["needs"] == ["libvulkan.so.1"]


def test_vulkan_on_lavapipe_answers_paris(smol_pyfile, cache_env):
    r = run_file(smol_pyfile, "--gpu", "vulkan", *QUESTION, "-n", "3",
                 env=lavapipe_only({**cache_env, **SOFTWARE_OK}), timeout=900)
    assert r.returncode == 0, r.stderr
    line = one_line(r.stderr)
    m = re.fullmatch(r"pyfile: backend vulkan \(llvmpipe .*, Vulkan 1\.\d, software; "
                     r"(\d+)/(\d+) layers offloaded\)", line)
    assert m and m.group(1) == m.group(2), line  # every layer on the Vulkan device
    # lavapipe's kernels round differently from the CPU backend's: compare the first word.
    assert r.stdout.split()[0].strip(".,") == "Paris", r.stdout


def test_auto_does_not_pick_the_software_device(smol_pyfile, cache_env):
    """With lavapipe the only Vulkan device, the automatic choice is never it: the CPU where
    this machine has no NVIDIA or AMD GPU (as the run's own detection finds), else that GPU's
    backend or the CPU, never Vulkan."""
    from pyfile.runtime.backend import hardware
    env = lavapipe_only({k: v for k, v in cache_env.items()
                         if k != "PYFILE_ALLOW_SOFTWARE_GPU"})
    r = run_file(smol_pyfile, *QUESTION, "-n", "2", env=env)
    assert r.returncode == 0, r.stderr
    line = one_line(r.stderr)
    if not hardware.find_nvidia(env=env).gpus and not hardware.find_amd(env=env).gpus:
        assert line.startswith("pyfile: backend cpu ("), line
    else:
        assert re.match(r"pyfile: backend (cpu|cuda|rocm) \(", line), line
    assert "llvmpipe" not in line.split(";")[0], line


def test_explicit_vulkan_with_only_a_software_device_is_an_error(smol_pyfile, cache_env):
    env = lavapipe_only({k: v for k, v in cache_env.items()
                         if k != "PYFILE_ALLOW_SOFTWARE_GPU"})
    r = run_file(smol_pyfile, "--gpu", "vulkan", *QUESTION, "-n", "2", env=env)
    assert r.returncode == 1  # BackendError: the documented status for a backend that can't run
    assert one_line(r.stderr).startswith(
        "pyfile: --gpu vulkan: only a software Vulkan device (llvmpipe"), r.stderr
    assert "PYFILE_ALLOW_SOFTWARE_GPU=1" in r.stderr and r.stdout == ""


def test_explicit_vulkan_without_a_device_is_an_error(smol_pyfile, cache_env):
    # The loader finds no driver at all: point both of its driver lists at nothing.
    env = {**cache_env, **SOFTWARE_OK, "VK_ICD_FILENAMES": "/nonexistent/icd.json",
           "VK_DRIVER_FILES": "/nonexistent/icd.json"}
    r = run_file(smol_pyfile, "--gpu", "vulkan", *QUESTION, "-n", "2", env=env)
    assert r.returncode == 1
    assert one_line(r.stderr).startswith("pyfile: --gpu vulkan: no Vulkan device"), r.stderr


def _loader_file() -> str:
    """The real file behind libvulkan.so.1, as the dynamic loader resolves it."""
    ctypes.CDLL("libvulkan.so.1")
    with open("/proc/self/maps") as f:
        paths = {ln.split()[-1] for ln in f if "libvulkan.so" in ln}
    assert paths, "libvulkan.so.1 is not installed: run `make tools`"
    return os.path.realpath(sorted(paths)[0])


def test_explicit_vulkan_without_a_loader_is_an_error(smol_pyfile, cache_env):
    # Hide the loader in a private mount namespace (root, as in CI): an empty file over it.
    assert shutil.which("unshare"), "unshare (util-linux) is needed"
    script = f'mount --bind /dev/null "{_loader_file()}" && exec "$@"'
    r = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(smol_pyfile),
                        "--gpu", "vulkan", *QUESTION, "-n", "2"],
                       capture_output=True, text=True, env={**cache_env, **SOFTWARE_OK},
                       stdin=subprocess.DEVNULL, timeout=300)
    assert r.returncode == 1, r.stderr
    assert one_line(r.stderr).startswith(
        "pyfile: --gpu vulkan: no Vulkan loader: libvulkan.so.1 not found"), r.stderr


def test_build_without_gpu_variants_and_without_a_built_variant(real_model, tmp_path):
    out = tmp_path / "no-gpu.pyfile"
    r = pyfile_cli("build", str(real_model), "-o", str(out), "--slim", "--no-gpu-variants")
    assert r.returncode == 0, r.stderr
    assert carried_variants(out) == {} and "Vulkan" not in r.stderr
    # No variant built on this machine: the build still works and says so in one line.
    empty = tmp_path / "variants"
    empty.mkdir()
    out2 = tmp_path / "none-built.pyfile"
    env = {**os.environ, "PYFILE_VARIANTS": str(empty)}
    r = pyfile_cli("build", str(real_model), "-o", str(out2), "--slim", env=env)
    assert r.returncode == 0, r.stderr
    notes = [ln for ln in r.stderr.splitlines() if "Vulkan" in ln]
    assert notes == [f"pyfile: this file carries no Vulkan variant (none built in {empty}; "
                     "`make setup` or scripts/build-variant.sh vulkan builds it)"], r.stderr
    assert carried_variants(out2) == {}
