"""The RPC server supervisor's restarts (rpc/supervisor.py): they back off, and give up with
one line instead of respawning in a tight loop. The supervisor runs for real, in its own
process; its engine child is a small stand-in that stops the way a server child does when
ggml aborts on a lost worker (it announces its port, then exits), or that never starts."""

import subprocess
import sys
import textwrap

from conftest import run_env

CHILD = """\
#!{python}
import os, socket, sys, time
from pyfile.runtime import ready
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(f"{{time.monotonic()}}\\n")
if os.environ["FAKE_MODE"] == "never":
    sys.exit(3)
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
ready.announce("127.0.0.1", s.getsockname()[1], None)
time.sleep(0.05)
sys.exit(4)
"""

PARENT = """\
import sys
from pyfile.runtime.errors import PyfileError
from pyfile.runtime.rpc import supervisor
supervisor.RESTART_DELAY_S = 0.1
try:
    supervisor.supervise_server(sys.argv[1], [], [], "127.0.0.1", 0)
except PyfileError as e:
    print(f"pyfile: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
"""


def supervise(tmp_path, mode):
    child = tmp_path / "child"
    child.write_text(CHILD.format(python=sys.executable))
    child.chmod(0o755)
    log = tmp_path / "spawns"
    r = subprocess.run([sys.executable, "-c", PARENT, str(child)], capture_output=True,
                       text=True, timeout=60,
                       env=run_env(FAKE_MODE=mode, FAKE_LOG=str(log)))
    return r, [float(x) for x in log.read_text().split()]


def test_a_child_that_never_serves_is_not_respawned(tmp_path):
    r, spawns = supervise(tmp_path, "never")
    assert r.returncode == 1, r.stderr
    assert len(spawns) == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("pyfile:")]
    assert errors == ["pyfile: the engine stopped (exit 3) before it served"], r.stderr


def test_restarts_back_off_then_give_up_with_one_line(tmp_path):
    from pyfile.runtime.rpc.supervisor import MAX_RESTARTS
    r, spawns = supervise(tmp_path, "dies")
    assert r.returncode == 1, r.stderr
    assert len(spawns) == MAX_RESTARTS + 1, spawns
    gaps = [b - a for a, b in zip(spawns, spawns[1:])]
    # 0.1, 0.2, 0.4, 0.8, 1.6 s of back-off, plus each child's own start and life
    assert all(gap >= 0.1 * 2 ** i for i, gap in enumerate(gaps)), gaps
    assert all(later > earlier for earlier, later in zip(gaps, gaps[1:])), gaps
    lines = r.stderr.splitlines()
    assert sum("restarting locally in" in line for line in lines) == MAX_RESTARTS
    assert lines[-1] == textwrap.dedent(f"""\
        pyfile: the engine stopped {MAX_RESTARTS + 1} times in a row, each within 60 s (last \
exit 4; RPC worker(s) lost: none); giving up"""), r.stderr
