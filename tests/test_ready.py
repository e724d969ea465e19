"""The readiness channel (runtime/ready.py): a child's address reaches its parent as JSON."""

import subprocess
import sys

from pyfile.runtime import ready

CHILD = "from pyfile.runtime.ready import announce; import os; {body}"


def test_announcement_reaches_the_parent():
    proc, where = ready.start([sys.executable, "-c", CHILD.format(
        body="announce('127.0.0.1', 8080, 'http://127.0.0.1:8080/'); "
             "assert 'PYFILE_READY_FD' not in os.environ")])
    assert proc.wait(timeout=30) == 0
    assert where == {"host": "127.0.0.1", "port": 8080, "url": "http://127.0.0.1:8080/"}


def test_a_child_that_ends_before_it_is_ready():
    proc, where = ready.start([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert where is None and proc.wait(timeout=30) == 3


def test_a_child_that_is_never_ready_times_out():
    proc, where = ready.start([sys.executable, "-c", "import time; time.sleep(30)"],
                              timeout=0.5)
    try:
        assert where is None and proc.poll() is None  # still running: the caller decides
    finally:
        proc.kill()
        proc.wait()


def test_delegated_to_a_grandchild():
    """A parent that serves through a child (``pyfile worker``) hands the channel on."""
    body = ("import subprocess, sys; from pyfile.runtime.ready import delegated_fds; "
            "sys.exit(subprocess.call([sys.executable, '-c', "
            "'from pyfile.runtime.ready import announce; announce(\"::1\", 9, None)'], "
            "pass_fds=delegated_fds()))")
    proc, where = ready.start([sys.executable, "-c", body])
    assert proc.wait(timeout=30) == 0
    assert where == {"host": "::1", "port": 9, "url": None}


def test_without_a_channel_announce_does_nothing():
    r = subprocess.run([sys.executable, "-c", CHILD.format(body="announce('h', 1)")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""
