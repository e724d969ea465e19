"""Splitting a model across machines with llama.cpp's RPC backend (two workers on loopback)."""

import re
import signal
import socket
import socketserver
import struct
import subprocess
import threading
import time

import pytest

from conftest import run_file
from pyfile.runtime import ready

pytestmark = pytest.mark.slow
PARIS = ["-p", "The capital of France is", "--temp", "0", "-n", "16"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_worker(pyfile, env, port, host="127.0.0.1"):
    p, where = ready.start([str(pyfile), "--rpc-worker", "--host", host, "--port", str(port)],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if where is None:
        p.kill()
        raise AssertionError("worker did not start: " + p.communicate()[1])
    assert where == {"host": host, "port": port, "url": None}
    return p


@pytest.fixture
def workers(smol_pyfile, cache_env):
    procs = []
    ports = [free_port(), free_port()]
    for port in ports:
        procs.append(start_worker(smol_pyfile, cache_env, port))
    yield ports, procs
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=30) == 0


def test_split_run_equals_local_run(smol_pyfile, cache_env, workers):
    ports, _ = workers
    rpc = ",".join(f"127.0.0.1:{p}" for p in ports)
    local = run_file(smol_pyfile, *PARIS, env=cache_env)
    split = run_file(smol_pyfile, "--rpc", rpc, *PARIS, "-v", env=cache_env)
    assert split.returncode == 0, split.stderr[-2000:]
    assert split.stdout == local.stdout and "Paris" in split.stdout
    assert re.search(r"layer +\d+ assigned to device RPC0", split.stderr)
    assert re.search(r"layer +\d+ assigned to device RPC1", split.stderr)
    weighted = run_file(smol_pyfile, "--rpc", rpc, "--tensor-split", "3,1", *PARIS,
                        env=cache_env)
    assert weighted.returncode == 0 and weighted.stdout == local.stdout


def test_worker_killed_mid_run_is_a_clean_error(smol_pyfile, cache_env, workers):
    ports, procs = workers
    rpc = ",".join(f"127.0.0.1:{p}" for p in ports)
    run = subprocess.Popen([str(smol_pyfile), "--rpc", rpc, "-p", "Once upon a time", "-n",
                            "100000", "--temp", "1"], env=cache_env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    out = run.stdout.read(20)  # generation is under way
    assert out
    procs[1].kill()
    procs[1].wait()
    _, err = run.communicate(timeout=120)
    assert run.returncode == 1
    assert f"RPC worker 127.0.0.1:{ports[1]} stopped answering" in err.strip().splitlines()[-1]
    assert "Traceback" not in err


def test_unreachable_worker(smol_pyfile, cache_env):
    r = run_file(smol_pyfile, "--rpc", f"127.0.0.1:{free_port()}", *PARIS, env=cache_env)
    assert r.returncode == 1 and "is unreachable" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_incompatible_worker(smol_pyfile, cache_env):
    class Old(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.recv(1 + 8 + 24)
            self.request.sendall(struct.pack("<Q", 28) + bytes([6, 0, 1, 0]) + b"\0" * 24)

    srv = socketserver.TCPServer(("127.0.0.1", 0), Old)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        r = run_file(smol_pyfile, "--rpc", f"127.0.0.1:{srv.server_address[1]}", *PARIS,
                     env=cache_env)
    finally:
        srv.shutdown()
    assert r.returncode == 1 and "speaks protocol 6.0.1" in r.stderr


def test_worker_warns_beyond_loopback_and_refuses_a_busy_port(smol_pyfile, cache_env):
    port = free_port()
    p = start_worker(smol_pyfile, cache_env, port, host="0.0.0.0")
    try:
        line = ""
        while "unauthenticated" not in line:  # written before the worker announced itself
            line = p.stderr.readline()
            assert line, "no warning about listening beyond loopback"
        busy = run_file(smol_pyfile, "--rpc-worker", "--port", str(port), env=cache_env,
                        timeout=60)
        assert busy.returncode == 2 and "cannot listen" in busy.stderr
    finally:
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=30) == 0


def test_server_survives_a_lost_worker(smol_pyfile, cache_env, workers):
    """--server --rpc: the request in flight gets a 503 naming the worker; the server stays
    up and goes on with the workers that still answer."""
    import json
    import urllib.error
    import urllib.request
    ports, procs = workers
    port = free_port()
    rpc = ",".join(f"127.0.0.1:{p}" for p in ports)
    srv, where = ready.start([str(smol_pyfile), "--server", "--port", str(port), "--rpc", rpc],
                             env=cache_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    lines = []
    threading.Thread(target=lambda: lines.extend(srv.stderr), daemon=True).start()
    try:
        assert where is not None and where["port"] == port, "".join(lines)
        url = f"{where['url']}v1/completions"

        def post(body, timeout=120):
            req = urllib.request.Request(url, json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=timeout) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        ok = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
        assert post(ok)[0] == 200
        result = {}
        t = threading.Thread(target=lambda: result.update(r=post(
            {"prompt": "Once upon a time", "max_tokens": 4000, "ignore_eos": True,
             "temperature": 1})))
        t.start()
        import time
        time.sleep(2)
        procs[1].kill()
        procs[1].wait()
        t.join(timeout=120)
        status, body = result["r"]
        assert status == 503 and body["error"]["code"] == "rpc_worker_lost"
        assert f"127.0.0.1:{ports[1]}" in body["error"]["message"]
        for _ in range(60):  # the engine restarts with the remaining worker
            try:
                status, body = post(ok, timeout=30)
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert status == 200 and "Paris" in body["choices"][0]["text"]
    finally:
        srv.send_signal(signal.SIGTERM)
        assert srv.wait(timeout=60) == 0
    assert any("lost; restarting with 1 worker" in line for line in lines)


def test_standalone_worker_skips_a_crashing_variant(tmp_path, smol_pyfile, cache_env):
    """`pyfile worker` (no model file): a CPU variant that dies with SIGILL at load is
    remembered and the worker comes back on the next variant."""
    import sys
    src = tmp_path / "fake.c"
    src.write_text("int ggml_backend_score(void) { return 1 << 24; }\n"
                   "void *ggml_backend_init(void) { __builtin_trap(); return 0; }\n")
    (tmp_path / "v").mkdir()
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(tmp_path / "v" / "libggml-cpu-fakeamx.so"),
                    str(src)], check=True)
    env = dict(cache_env, PYFILE_BACKEND_DIR=str(tmp_path / "v"),
               PYFILE_CACHE_DIR=str(tmp_path / "cache"))
    port = free_port()
    w, where = ready.start([sys.executable, "-m", "pyfile", "worker", "--port", str(port)],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    threading.Thread(target=lambda: lines.extend(w.stderr), daemon=True).start()
    try:
        assert where == {"host": "127.0.0.1", "port": port, "url": None}, "".join(lines)
        for _ in range(50):  # written before the second child announced itself
            if any("fakeamx variant crashed (SIGILL)" in ln for ln in lines):
                break
            time.sleep(0.1)
        assert any("fakeamx variant crashed (SIGILL)" in ln for ln in lines), "".join(lines)
        r = run_file(smol_pyfile, "--rpc", f"127.0.0.1:{port}", *PARIS, env=cache_env)
        assert r.returncode == 0 and "Paris" in r.stdout
    finally:
        w.send_signal(signal.SIGTERM)
        assert w.wait(timeout=30) == 0
    with socket.socket() as s:  # the worker child went away with it
        assert s.connect_ex(("127.0.0.1", port)) != 0
