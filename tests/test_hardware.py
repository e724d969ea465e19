"""GPU detection and the GPU plan, against simulated /proc, /sys and /dev trees and fake
probe results (we have no GPU here; the device-machine check runs the real thing)."""

import glob
import os

import pytest

from pyfile.runtime.backend import hardware
from pyfile.runtime.backend import choice as backends
from pyfile.runtime.backend.choice import Variant, find_runtime_libs, plan_gpu
from pyfile.runtime.backend.hardware import GPU, Finding, find_amd, find_nvidia

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


def _loads(lib):
    import ctypes
    try:
        ctypes.CDLL(lib)
        return True
    except OSError:
        return False


def test_real_cuda_probe_is_an_exact_answer_not_a_crash():
    """The CUDA probe on this machine's real driver (or none), checked against what the
    machine has: no libcuda -> exactly the loader error; a driver without a usable device ->
    cuInit's error code; else every GPU with its exact fields, one per /dev/nvidiaN node."""
    answer = hardware.run_cuda_probe()
    if not _loads("libcuda.so.1"):
        assert set(answer) == {"error"}, answer
        assert answer["error"].startswith("libcuda.so.1 not found (libcuda.so.1: "), answer
    elif "code" in answer:
        assert set(answer) == {"error", "code"}, answer
        assert isinstance(answer["code"], int) and answer["code"] != 0
        assert answer["error"] == f"cuInit failed with CUDA error {answer['code']}"
    else:
        assert set(answer) == {"gpus", "driver_cuda"}, answer
        assert isinstance(answer["driver_cuda"], int) and answer["driver_cuda"] >= 1000
        nodes = glob.glob("/dev/nvidia[0-9]*")
        assert len(answer["gpus"]) == len(nodes) > 0, (answer, nodes)
        for g in answer["gpus"]:
            assert set(g) == {"name", "major", "minor", "memory", "integrated"}, g
            assert isinstance(g["name"], str) and g["name"]
            assert isinstance(g["major"], int) and g["major"] >= 3 and g["minor"] >= 0
            assert isinstance(g["memory"], int) and g["memory"] > 0
            assert isinstance(g["integrated"], bool)


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
    cuda, rocm, vulkan = (backends.get(k).arch_ok for k in ("cuda", "rocm", "vulkan"))
    assert cuda(GPU("nvidia", 0, "x", 0, "sm_86"), ["80-real"])
    assert not cuda(GPU("nvidia", 0, "x", 0, "sm_90"), ["80-real", "86-real"])
    assert not rocm(GPU("amd", 0, "x", 0, "gfx1101"), ["gfx1100"])
    assert rocm(GPU("amd", 0, "x", 0, "gfx1101"), [])
    assert vulkan(GPU("vulkan", 0, "x", 0, "Vulkan 1.2"), [])
    assert not vulkan(GPU("vulkan", 0, "x", 0, "Vulkan 1.1"), [])


def sm(arch):
    return GPU("nvidia", 0, "x", 0, arch)


def test_cuda_arch_forms():
    """CMake's spellings, as build-variant.sh records them: "-real" is machine code for one
    major (newer minors run it), "-virtual" is PTX the driver compiles for any newer GPU, a
    bare number is both, "120a" machine code runs on 12.0 only."""
    ok = backends.get("cuda").arch_ok
    full = ["75-real", "80-real", "86-real", "89-real", "90-real", "120-real", "90-virtual"]
    assert [a for a in ("sm_61", "sm_75", "sm_87", "sm_100", "sm_121") if ok(sm(a), full)] == \
        ["sm_75", "sm_87", "sm_100", "sm_121"]  # sm_61 predates them; 100/121 via PTX 90
    assert ok(sm("sm_120"), ["75-virtual"]) and not ok(sm("sm_70"), ["75-virtual"])
    assert ok(sm("sm_90"), ["80"]) and not ok(sm("sm_90"), ["80-real"])
    assert ok(sm("sm_120"), ["120a-real"]) and not ok(sm("sm_121"), ["120a-real"])


def test_plan_driver_too_old_for_the_variant():
    """A driver whose CUDA version is older than the variant's toolkit is turned down before
    anything loads, naming both versions and the driver to install."""
    f = Finding("nvidia", [H100_GPU], None, True, "535.104.05", api=12020)
    v = Variant("cuda", {"archs": ["90-real"], "needs": [], "cuda": "13.0"}, "/x.so")
    gpu, problem, _ = plan_gpu("nvidia", f, v, libs_ok)
    assert gpu is None
    assert problem == ("the NVIDIA driver 535.104.05 supports CUDA 12.2, the CUDA variant needs "
                       "CUDA 13.0 (update the driver to 580 or newer)")
    f.api = 13000
    assert plan_gpu("nvidia", f, v, libs_ok)[0] is H100_GPU


def test_plan_glibc_too_old_for_the_variant(monkeypatch):
    """A variant linked against a newer glibc than the system's is turned down with both
    versions (ld.so would refuse it with a less helpful message)."""
    monkeypatch.setattr(hardware, "glibc_version", lambda: "2.28")
    v = Variant("cuda", {"archs": ["90-real"], "needs": [], "glibc": "2.31"}, "/x.so")
    gpu, problem, _ = plan_gpu("nvidia", finding(H100_GPU), v, libs_ok)
    assert gpu is None and problem == "the CUDA variant needs glibc 2.31, this system has 2.28"
    monkeypatch.setattr(hardware, "glibc_version", lambda: "2.31")
    assert plan_gpu("nvidia", finding(H100_GPU), v, libs_ok)[0] is H100_GPU


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


# -- the registry ---------------------------------------------------------------------------

def test_registry_drives_options_builder_and_order():
    from pyfile import variants
    from pyfile.runtime import options
    from pyfile.runtime.errors import UsageError
    assert [b.kind for b in backends.BACKENDS] == ["cuda", "rocm", "vulkan"]  # --gpu auto order
    assert backends.LIB_OF == {"cuda": "libggml-cuda.so", "rocm": "libggml-hip.so",
                               "vulkan": "libggml-vulkan.so"}
    with pytest.raises(UsageError, match="KIND one of cuda, rocm, vulkan$"):
        variants.read_specs(["metal=/nowhere"])  # what `pyfile build --backend` accepts
    for b in backends.BACKENDS:
        for name in (b.gpu, b.kind, *b.aliases):
            assert options.parse(["--gpu", name]).gpu == b.gpu
    assert "vulkan" in options.parser().format_help()


def test_a_new_record_is_a_new_choice(monkeypatch):
    from pyfile.runtime import options
    fake = backends.Backend("metal", "apple", ("mps",), "Metal", "Apple", "libggml-metal.so",
                            lambda root, env, explicit: Finding("apple", problem="none"),
                            (), lambda env: [], lambda gpu, archs: True, "n/a")
    monkeypatch.setattr(backends, "BACKENDS", (*backends.BACKENDS, fake))
    assert options.parse(["--gpu", "mps"]).gpu == "apple"
    assert backends.get("metal") is fake


# -- Vulkan ---------------------------------------------------------------------------------

def vk_device(name, dtype, api=(1, 3), memory=8 << 30, fp16=True):
    return {"name": name, "type": dtype, "api": (api[0] << 22) | (api[1] << 12), "driver": 1,
            "vendor": 0x1002, "memory": memory, "fp16": fp16}


LAVAPIPE = vk_device("llvmpipe (LLVM 15.0.6, 256 bits)", 4, memory=2 << 30)
RENDER_NODE = {"dev/dri/renderD128": ""}


def test_vulkan_without_gpu_nodes_skips_the_probe_unless_asked(tmp_path):
    f = hardware.find_vulkan(str(tmp_path), {}, probe=never)
    assert not f.gpus and "no GPU device node" in f.problem and not f.present
    f = hardware.find_vulkan(str(tmp_path), {}, probe=lambda: {"devices": [LAVAPIPE]},
                             explicit=True)
    assert not f.gpus and f.problem.startswith("only a software Vulkan device (llvmpipe")


def test_vulkan_prefers_discrete_then_integrated(tmp_path):
    root = tree(tmp_path, RENDER_NODE)
    devices = [vk_device("Intel(R) UHD Graphics", 1, memory=1 << 30), LAVAPIPE,
               vk_device("AMD Radeon RX 7900 XTX (RADV NAVI31)", 2, memory=24 << 30)]
    f = hardware.find_vulkan(root, {}, probe=lambda: {"devices": devices})
    assert [(g.index, g.name) for g in f.gpus] == [(2, "AMD Radeon RX 7900 XTX (RADV NAVI31)")]
    assert f.gpus[0].describe() == "AMD Radeon RX 7900 XTX (RADV NAVI31), 24 GiB, Vulkan 1.3"
    f = hardware.find_vulkan(root, {}, probe=lambda: {"devices": devices[:2]})
    assert [g.index for g in f.gpus] == [0] and f.gpus[0].integrated


def test_vulkan_software_device_counts_only_when_allowed(tmp_path):
    root = tree(tmp_path, RENDER_NODE)
    f = hardware.find_vulkan(root, {}, probe=lambda: {"devices": [LAVAPIPE]})
    assert not f.gpus and "PYFILE_ALLOW_SOFTWARE_GPU=1" in f.problem and f.present
    f = hardware.find_vulkan(str(tmp_path / "none"), {"PYFILE_ALLOW_SOFTWARE_GPU": "1"},
                             probe=lambda: {"devices": [LAVAPIPE]})
    assert f.gpus and f.gpus[0].software and f.gpus[0].describe().endswith("software")


def test_vulkan_loader_and_driver_problems(tmp_path):
    root = tree(tmp_path, RENDER_NODE)
    f = hardware.find_vulkan(root, {}, probe=lambda: {"error": "loader", "detail": "x"})
    assert f.problem.startswith("no Vulkan loader: libvulkan.so.1 not found")
    f = hardware.find_vulkan(root, {}, probe=lambda: {"error": "instance", "code": -9})
    assert f.problem.startswith("no Vulkan device") and "VK_ERROR_INCOMPATIBLE_DRIVER" in f.problem
    f = hardware.find_vulkan(root, {}, probe=lambda: {"devices": []})
    assert "reports no devices" in f.problem
    old = vk_device("Old GPU", 2, fp16=False)
    f = hardware.find_vulkan(root, {}, probe=lambda: {"devices": [old]})
    assert "16-bit storage" in f.problem


def test_vulkan_visible_devices(tmp_path):
    root = tree(tmp_path, RENDER_NODE)
    two = [vk_device("GPU A", 2), vk_device("GPU B", 2)]
    f = hardware.find_vulkan(root, {"GGML_VK_VISIBLE_DEVICES": "1"}, probe=lambda: {"devices": two})
    assert [g.name for g in f.gpus] == ["GPU B"]
    f = hardware.find_vulkan(root, {"GGML_VK_VISIBLE_DEVICES": ""}, probe=lambda: {"devices": two})
    assert not f.gpus and "GGML_VK_VISIBLE_DEVICES" in f.problem


def test_real_vulkan_probe_is_an_exact_answer_not_a_crash():
    """The Vulkan probe on this machine's real loader and drivers, checked against what the
    machine has: no loader -> exactly the loader error; else every device with its exact
    fields, lavapipe (when its driver is installed) as the one Mesa CPU device, and a
    hardware device exactly when there are GPU device nodes."""
    answer = hardware.run_vulkan_probe()
    if not _loads("libvulkan.so.1"):
        assert set(answer) == {"error", "detail"} and answer["error"] == "loader", answer
        return
    assert set(answer) == {"devices"}, answer
    devices = answer["devices"]
    for d in devices:
        assert set(d) == {"name", "type", "api", "driver", "vendor", "memory", "fp16"}, d
        assert isinstance(d["name"], str) and d["name"]
        assert d["type"] in hardware.VK_DEVICE_TYPES, d
        assert d["api"] >> 22 == 1 and (d["api"] >> 12) & 0x3FF >= 0, d  # Vulkan 1.x
        assert isinstance(d["driver"], int) and isinstance(d["vendor"], int)
        assert isinstance(d["memory"], int) and d["memory"] > 0, d
        assert isinstance(d["fp16"], bool)
    lavapipe = glob.glob("/usr/share/vulkan/icd.d/lvp_icd.*.json")
    software = [d for d in devices if d["type"] == 4]
    if lavapipe:
        assert len(software) == 1 and software[0]["name"].startswith("llvmpipe"), devices
        assert software[0]["vendor"] == 0x10005  # VK_VENDOR_ID_MESA
    gpu_nodes = [p for pattern in hardware.GPU_NODES for p in glob.glob("/" + pattern)]
    hardware_devices = [d for d in devices if d["type"] in (1, 2)]
    if not gpu_nodes:  # no GPU here: nothing may claim to be one
        assert hardware_devices == [], devices
    nvidia_icd = [p for d in ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d")
                  for p in glob.glob(d + "/nvidia_icd*.json")]
    if glob.glob("/dev/nvidia[0-9]*") and nvidia_icd:  # an NVIDIA GPU with its Vulkan driver
        assert any(d["vendor"] == 0x10DE for d in hardware_devices), devices


def test_plan_vulkan_without_variant_and_without_loader_libs(tmp_path):
    gpu = GPU("vulkan", 0, "AMD Radeon RX 7900 XTX", 24 << 30, "Vulkan 1.3")
    f = Finding("vulkan", [gpu], None, True)
    _, problem, _ = plan_gpu("vulkan", f, None, libs_ok)
    assert "carries no Vulkan variant" in problem and "build-variant.sh vulkan" in problem
    variant = Variant("vulkan", {"needs": ["libvulkan.so.1"]}, "/x.so")
    _, problem, _ = plan_gpu("vulkan", f, variant,
                             lambda k, r: find_runtime_libs(k, {"needs": ["libnope.so.1"]},
                                                            [str(tmp_path)]))
    assert "Vulkan runtime libraries are missing: libnope.so.1" in problem
    old = Finding("vulkan", [GPU("vulkan", 0, "Old", 1 << 30, "Vulkan 1.1")], None, True)
    _, problem, _ = plan_gpu("vulkan", old, variant, libs_ok)
    assert "Vulkan 1.1" in problem


def test_a_variant_that_needs_only_the_driver_preloads_nothing():
    found, missing = find_runtime_libs("cuda", {"needs": []}, [])
    assert found == [] and missing == []
    found, missing = find_runtime_libs("cuda", {}, [])  # no variant.json: CUDA's defaults
    assert "libcudart.so.13" in missing + [os.path.basename(p) for p in found]


def test_rpc_worker_serves_an_integrated_gpu_when_there_is_no_dedicated_one():
    """ggml lists a laptop's or an APU's Vulkan device as an integrated GPU (its device type
    2), a discrete card as type 1: a worker for a GPU backend takes the dedicated one first,
    else the integrated one; a CPU worker the CPU. (The machines here have neither GPU: the
    registry's answers are given.)"""
    from pyfile.runtime.rpc.worker import worker_device
    igpu_only = {0: "cpu0", 2: "igpu0"}.get
    both = {0: "cpu0", 1: "gpu0", 2: "igpu0"}.get
    assert worker_device(igpu_only, "vulkan") == "igpu0"
    assert worker_device(both, "vulkan") == "gpu0"
    assert worker_device(both, "cpu") == "cpu0"
    assert worker_device({0: "cpu0"}.get, "cuda") is None  # "no device to serve"
