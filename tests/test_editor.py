"""In-place edits: `pyfile args --set` and `pyfile add` append, never rewrite the weights."""

import os

from conftest import pyfile_cli
from ggufgen import write_tiny
from pyfile.runtime.container.archive import Archive


def built(tmp_path, src, args="-n 3"):
    out = tmp_path / "t.pyfile"
    r = pyfile_cli("build", str(src), "-o", str(out), "--args", args)
    assert r.returncode == 0, r.stderr
    return out


def _extents(path, length):
    """The physical extents (logical, physical, length) of ``path``'s first ``length`` bytes
    (FIEMAP, flushed first), or None where the filesystem cannot say."""
    import fcntl
    import struct
    count = 512
    req = struct.pack("=QQIIII", 0, length, 1, 0, count, 0)  # FIEMAP_FLAG_SYNC
    buf = bytearray(req + bytes(56 * count))
    with open(path, "rb") as f:
        try:
            fcntl.ioctl(f.fileno(), 0xC020660B, buf)  # FS_IOC_FIEMAP
        except OSError:
            return None
    mapped = struct.unpack_from("=I", buf, 20)[0]
    return [struct.unpack_from("=QQQ", buf, 32 + 56 * i) for i in range(mapped)]


#: Runs `pyfile ARGS...` and reports, on its last stderr line, how many bytes it wrote
#: (/proc/self/io's wchar: every write and pwrite, whatever it wrote to).
COUNTING = """
import sys
from pyfile.cli import main
try:
    main(sys.argv[1:])
finally:
    io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
    sys.stderr.write("wchar " + io["wchar"] + "\\n")
"""


def test_args_print_and_set_in_place(tmp_path):
    """``args --set`` appends: the file keeps its inode, every byte (and on filesystems that
    say so, every block) of the old file stays where it was, and the edit writes a few KiB,
    not the 32 MiB of weights or the runtime."""
    import subprocess
    import sys
    from conftest import run_env
    src = write_tiny(str(tmp_path / "m.gguf"), big_tensor=32 << 20)
    out = built(tmp_path, src)
    assert pyfile_cli("args", str(out)).stdout == "-n 3"
    before = os.stat(out)
    old = out.read_bytes()
    old_extents = _extents(out, before.st_size)
    with Archive.open(str(out)) as arch:
        model = arch.member("m.gguf")
        assert model.size > 32 << 20
    r = subprocess.run([sys.executable, "-c", COUNTING, "args", str(out), "--set",
                        "--server --port 9000 ..."], capture_output=True, text=True,
                       env=run_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    written = int(r.stderr.strip().splitlines()[-1].split()[1])
    assert written < 256 << 10, f"the edit wrote {written} bytes"
    after = os.stat(out)
    assert after.st_ino == before.st_ino  # edited in place, not replaced
    assert before.st_size < after.st_size < before.st_size + 64 * 1024
    assert out.read_bytes()[:before.st_size] == old  # the old file, byte for byte
    if old_extents is not None:  # and block for block: nothing was rewritten or moved
        assert _extents(out, before.st_size) == old_extents
    assert pyfile_cli("args", str(out)).stdout == "--server --port 9000 ..."
    assert pyfile_cli("verify", str(out)).returncode == 0
    with Archive.open(str(out)) as arch:
        assert arch.member("m.gguf").offset == model.offset
        assert arch.manifest_entry(".args")["size"] == len("--server --port 9000 ...")


def test_args_set_rejects_bad_syntax_and_leaves_file(tmp_path, tiny_gguf):
    out = built(tmp_path, tiny_gguf)
    data = out.read_bytes()
    r = pyfile_cli("args", str(out), "--set", '"unterminated')
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == data


def test_add_model_and_prompt(tmp_path, tiny_gguf):
    out = built(tmp_path, tiny_gguf)
    second = write_tiny(str(tmp_path / "second.gguf"), name="second", seed=2)
    note = tmp_path / "system.txt"
    note.write_text("be brief")
    r = pyfile_cli("add", str(out), second, str(note), "--align", "16384")
    assert r.returncode == 0, r.stderr
    with Archive.open(str(out)) as arch:
        assert arch.member("second.gguf").offset % 16384 == 0
        assert arch.read("system.txt") == b"be brief"
        assert arch.manifest.models["second.gguf"]["name"] == "second"
        assert arch.default_model == "tiny.gguf"
        assert arch.verify() == []
    r = pyfile_cli("add", str(out), str(note))
    assert r.returncode == 2 and "already holds" in r.stderr
    assert pyfile_cli("verify", str(out)).returncode == 0
