"""GPU detection and the GPU plan, against simulated /proc, /sys and /dev trees and fake
probe results (we have no GPU here; the device-machine check runs the real thing)."""

import os

import pytest

from pyfile.runtime import hardware
from pyfile.runtime.backends import Variant, _arch_supported, find_runtime_libs, plan_gpu
from pyfile.runtime.hardware import GPU, Finding, find_amd, find_nvidia

H100 = {"gpus": [{"name": "NVIDIA H100 80GB HBM3", "major": 9, "minor": 0,
                  "memory": 85520809984, "integrated": False}], "driver_cuda": 13000}


def tree(root, files):
    for rel, text in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(text)
    return str(root)


NV_DRIVER = {"proc/driver/nvidia/version":
             "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.159.04  Thu Oct 2 2025\n",
             "dev/nvidia0": "", "dev/nvidiactl": ""}


def never(*a, **k):
    raise AssertionError("the CUDA probe must not run here")


def test_no_nvidia(tmp_path):
    f = find_nvidia(str(tmp_path), {}, probe=never)
    assert not f.present and f.problem == "no NVIDIA GPU found"


def test_nvidia_found(tmp_path):
    f = find_nvidia(tree(tmp_path, NV_DRIVER), {}, probe=lambda: H100)
    assert f.driver == "580.159.04" and f.gpus[0].arch == "sm_90"
    assert f.gpus[0].describe() == "NVIDIA H100 80GB HBM3, 80 GiB, sm_90"


def test_container_without_device_nodes(tmp_path):
    root = tree(tmp_path, {"proc/driver/nvidia/version": NV_DRIVER["proc/driver/nvidia/version"]})
    f = find_nvidia(root, {}, probe=never)
    assert f.present and "no /dev/nvidia* device nodes" in f.problem


def test_nodes_without_driver(tmp_path):
    f = find_nvidia(tree(tmp_path, {"dev/nvidia0": ""}), {}, probe=never)
    assert "no driver is loaded" in f.problem


def test_wsl_uses_dxg_and_probe(tmp_path):
    f = find_nvidia(tree(tmp_path, {"dev/dxg": ""}), {}, probe=lambda: H100)
    assert f.gpus and f.gpus[0].name.startswith("NVIDIA H100")


@pytest.mark.parametrize("value", ["", "-1", "none"])
def test_cuda_visible_devices_hides_all(tmp_path, value):
    f = find_nvidia(tree(tmp_path, NV_DRIVER), {"CUDA_VISIBLE_DEVICES": value}, probe=never)
    assert "CUDA_VISIBLE_DEVICES" in f.problem and not f.gpus


def test_driver_without_cuda_and_init_errors(tmp_path):
    root = tree(tmp_path, NV_DRIVER)
    f = find_nvidia(root, {}, probe=lambda: {"error": "libcuda.so.1 not found (x)"})
    assert "libcuda.so.1 not found" in f.problem
    f = find_nvidia(root, {}, probe=lambda: {"error": "cuInit failed with CUDA error 999",
                                             "code": 999})
    assert "container" in f.problem
    f = find_nvidia(root, {}, probe=lambda: {"gpus": []})
    assert f.problem == "the NVIDIA driver reports no devices"


def test_real_cuda_probe_without_driver_is_an_answer_not_a_crash():
    answer = hardware.run_cuda_probe()
    assert "error" in answer or "gpus" in answer


def kfd_node(n, gfx, minor, simd=64, cpu_cores=0):
    return {f"sys/class/kfd/kfd/topology/nodes/{n}/properties":
            f"cpu_cores_count {cpu_cores}\nsimd_count {simd}\n"
            f"gfx_target_version {gfx}\ndrm_render_minor {minor}\n"}


def amd_tree(tmp_path, *nodes, kfd=True, vram=24 << 30):
    files = {}
    files.update(kfd_node(0, 0, -1, simd=0, cpu_cores=16))  # the CPU node
    for i, (gfx, minor) in enumerate(nodes, start=1):
        files.update(kfd_node(i, gfx, minor))
        files[f"sys/class/drm/renderD{minor}/device/mem_info_vram_total"] = str(vram)
        files[f"sys/class/drm/renderD{minor}/device/product_name"] = "Radeon RX 7900 XTX"
    if kfd:
        files["dev/kfd"] = ""
    return tree(tmp_path, files)


def test_amd_found_with_gfx_names(tmp_path):
    f = find_amd(amd_tree(tmp_path, (110000, 128), (90010, 129)), {})
    assert [g.arch for g in f.gpus] == ["gfx1100", "gfx90a"]
    assert f.gpus[0].name == "Radeon RX 7900 XTX" and f.gpus[0].memory == 24 << 30


def test_amd_without_kfd_or_permission(tmp_path):
    f = find_amd(amd_tree(tmp_path / "a", (110000, 128), kfd=False), {})
    assert "/dev/kfd is missing" in f.problem
    f = find_amd(amd_tree(tmp_path / "b", (110000, 128)), {}, access=lambda p, m: False)
    assert "'render' and 'video' groups" in f.problem


def test_amd_override_and_visible_devices(tmp_path):
    root = amd_tree(tmp_path, (100302, 128), (110000, 129))
    f = find_amd(root, {"HSA_OVERRIDE_GFX_VERSION": "10.3.0"})
    assert {g.arch for g in f.gpus} == {"gfx1030"}
    f = find_amd(root, {"HIP_VISIBLE_DEVICES": "1"})
    assert [g.arch for g in f.gpus] == ["gfx1100"]
    f = find_amd(root, {"HIP_VISIBLE_DEVICES": "-1"})
    assert not f.gpus and "HIP_VISIBLE_DEVICES" in f.problem


def test_amd_igpu_ignored_unless_allowed(tmp_path):
    root = amd_tree(tmp_path, (110300, 128), vram=512 << 20)
    f = find_amd(root, {})
    assert not f.gpus and "integrated" in f.problem
    f = find_amd(root, {"PYFILE_ALLOW_IGPU": "1"})
    assert f.gpus and f.gpus[0].integrated


def cuda_variant(archs=("90",)):
    return Variant("cuda", {"archs": list(archs), "needs": ["libcudart.so.13"]}, "/x.so")


def libs_ok(kind, req):
    return ["/usr/local/cuda/lib64/libcudart.so.13"], []


def finding(*gpus):
    return Finding("nvidia", list(gpus), None, True, "580")


H100_GPU = GPU("nvidia", 0, "NVIDIA H100", 80 << 30, "sm_90")


def test_plan_picks_the_gpu():
    gpu, problem, libs = plan_gpu("nvidia", finding(H100_GPU), cuda_variant(), libs_ok)
    assert gpu is H100_GPU and problem is None and libs


def test_plan_without_variant():
    gpu, problem, _ = plan_gpu("nvidia", finding(H100_GPU), None, libs_ok)
    assert gpu is None and "carries no CUDA variant" in problem


def test_plan_too_old_compute_capability():
    old = GPU("nvidia", 0, "Tesla P100", 16 << 30, "sm_60")
    gpu, problem, _ = plan_gpu("nvidia", finding(old), cuda_variant(("75", "90")), libs_ok)
    assert gpu is None and "sm_60" in problem and "no kernels" in problem


def test_arch_rules():
    assert _arch_supported(GPU("nvidia", 0, "x", 0, "sm_86"), {"archs": ["80"]})
    assert not _arch_supported(GPU("nvidia", 0, "x", 0, "sm_90"), {"archs": ["80", "86"]})
    assert not _arch_supported(GPU("amd", 0, "x", 0, "gfx1101"), {"archs": ["gfx1100"]})
    assert _arch_supported(GPU("amd", 0, "x", 0, "gfx1101"), {})


def test_plan_driver_without_runtime_libraries(tmp_path):
    gpu, problem, _ = plan_gpu("nvidia", finding(H100_GPU), cuda_variant(),
                               lambda k, r: find_runtime_libs(k, {"needs": ["libnope.so.13"]},
                                                              [str(tmp_path)]))
    assert gpu is None and "runtime libraries are missing: libnope.so.13" in problem
    assert "pip install nvidia-cuda-runtime nvidia-cublas" in problem


def test_runtime_libs_found_in_a_wheel_layout(tmp_path):
    lib = tmp_path / "site" / "nvidia" / "cu13" / "lib"
    lib.mkdir(parents=True)
    for n in ("libcudart.so.13", "libcublas.so.13"):
        (lib / n).write_text("")
    found, missing = find_runtime_libs("cuda", {"needs": ["libcudart.so.13", "libcublas.so.13"]},
                                       [str(lib)])
    assert missing == [] and all(p.startswith(str(lib)) for p in found)


def test_plan_unsupported_gfx():
    amd = Finding("amd", [GPU("amd", 0, "RX 6600", 8 << 30, "gfx1032")], None, True)
    gpu, problem, _ = plan_gpu("amd", amd, Variant("rocm", {"archs": ["gfx1100"]}), libs_ok)
    assert gpu is None and "gfx1032" in problem and "ROCm" in problem


def test_plan_passes_through_detection_problem():
    empty = Finding("amd", [], "no AMD GPU found", False)
    gpu, problem, _ = plan_gpu("amd", empty, None, libs_ok)
    assert gpu is None and problem == "no AMD GPU found"
