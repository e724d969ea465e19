"""Shared by the bench scripts: run pyfiles with this interpreter's environment."""

import os
import re
import subprocess
import sys
import time


def venv_env() -> dict:
    """The environment a pyfile needs to find this venv's Python (and its engine)."""
    e = dict(os.environ)
    bindir = os.path.dirname(sys.executable)
    e["VIRTUAL_ENV"] = os.path.dirname(bindir)
    e["PATH"] = bindir + os.pathsep + e.get("PATH", "")
    return e


def timed(cmd, env):
    """(seconds from exec to exit, the completed process); a failure ends the bench."""
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if r.returncode:
        raise SystemExit(f"failed: {cmd}: {r.stderr}")
    return time.perf_counter() - t, r


def proc_mib(pid: int, key: str, table: str = "status") -> float:
    """One memory figure of a process in MiB: ``key`` ("VmRSS", "RssFile", "Anonymous"...)
    from ``/proc/PID/<table>`` ("status", or "smaps_rollup"); 0 when absent."""
    with open(f"/proc/{pid}/{table}") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def eval_rate(stderr: str) -> float:
    """llama.cpp's own generation speed (tokens/s) from its -v log."""
    m = re.search(r"^\S*\s+eval time =.*?([\d.]+) tokens per second", stderr, re.M)
    if not m:
        raise SystemExit("no eval timing in the log")
    return float(m.group(1))
