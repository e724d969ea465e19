"""Splitting a model across machines with llama.cpp's RPC backend (two workers on loopback)."""

import re
import signal
import socket
import socketserver
import struct
import subprocess
import threading

import pytest

from conftest import run_file

pytestmark = pytest.mark.slow
PARIS = ["-p", "The capital of France is", "--temp", "0", "-n", "16"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_worker(pyfile, env, port, host="127.0.0.1"):
    p = subprocess.Popen([str(pyfile), "--rpc-worker", "--host", host, "--port", str(port)],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    while True:
        line = p.stderr.readline()
        assert line, "".join(lines)
        lines.append(line)
        if "RPC worker listening" in line:
            return p, lines


@pytest.fixture
def workers(smol_pyfile, cache_env):
    procs = []
    ports = [free_port(), free_port()]
    for port in ports:
        procs.append(start_worker(smol_pyfile, cache_env, port)[0])
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
    p, lines = start_worker(smol_pyfile, cache_env, port, host="0.0.0.0")
    try:
        assert any("unauthenticated" in line for line in lines)
        busy = run_file(smol_pyfile, "--rpc-worker", "--port", str(port), env=cache_env,
                        timeout=60)
        assert busy.returncode == 2 and "cannot listen" in busy.stderr
    finally:
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=30) == 0
