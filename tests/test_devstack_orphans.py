"""What a killed test session left running is stopped by the next one: every process tagged
with a gone owner, and nothing of a live owner."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from holmes_stream.devstack.process import kill_orphans_of, pid_alive, tagged_processes

TAG = "HS_TEST_ORPHANS"


def sleeper(owner: int) -> subprocess.Popen[bytes]:
    # A grandchild too: the tag reaches whatever the tagged process starts.
    code = (
        "import subprocess, sys, time;"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        "time.sleep(60)"
    )
    return subprocess.Popen([sys.executable, "-c", code], env=os.environ | {TAG: str(owner)})


def test_processes_of_a_gone_owner_are_killed_and_a_live_owners_are_not() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    orphan, ours = sleeper(gone.pid), sleeper(os.getpid())
    try:
        deadline = time.monotonic() + 10
        while len(tagged_processes(TAG)) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        tagged = tagged_processes(TAG)
        assert sorted(tagged.values()) == sorted([str(gone.pid)] * 2 + [str(os.getpid())] * 2)
        killed = kill_orphans_of(TAG, owner_marker="pytest")
        assert sorted(killed) == sorted(p for p, o in tagged.items() if o == str(gone.pid))
        orphan.wait(timeout=10)
        assert all(not pid_alive(p) for p in killed)
        assert ours.poll() is None and kill_orphans_of(TAG, owner_marker="pytest") == []
    finally:
        for p in tagged_processes(TAG):
            os.kill(p, 9)
        ours.wait(timeout=10)
