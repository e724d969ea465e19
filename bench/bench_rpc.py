"""Generation speed local vs split across two RPC workers on loopback (same machine).

    python bench/bench_rpc.py MODEL.gguf [--tokens 128]
"""

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import venv_env  # noqa: E402


env = venv_env


def rate(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env())
    m = re.search(r"^\S*\s+eval time =.*?([\d.]+) tokens per second", r.stderr, re.M)
    if r.returncode or not m:
        raise SystemExit(f"failed: {r.stderr[-500:]}")
    return float(m.group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=128)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        pf = os.path.join(d, "m.pyfile")
        subprocess.run([sys.executable, "-m", "pyfile", "build", a.model, "-o", pf], check=True,
                       capture_output=True)
        ports, workers = [], []
        for _ in range(2):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
            s.close()
            workers.append(subprocess.Popen([pf, "--rpc-worker", "--port", str(ports[-1])],
                                            env=env(), stderr=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL))
        time.sleep(4)
        try:
            gen = ["-p", "Once upon a time", "-n", str(a.tokens), "--temp", "0", "-v"]
            local = [rate([pf, *gen]) for _ in range(3)]
            rpc = ",".join(f"127.0.0.1:{p}" for p in ports)
            split = [rate([pf, "--rpc", rpc, *gen]) for _ in range(3)]
        finally:
            for w in workers:
                w.terminate()
                w.wait()
    lm, sm = statistics.median(local), statistics.median(split)
    print(f"local                  {lm:.1f} tok/s (median of 3, {a.tokens} tokens)")
    print(f"2 RPC workers, loopback {sm:.1f} tok/s")
    print(f"split / local          {sm / lm:.2f}x")


if __name__ == "__main__":
    main()
