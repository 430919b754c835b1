"""What a killed test session left running is stopped by the next one: every process tagged
with a gone owner, and nothing of a live owner; what old sessions left on disk is removed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from holmes_stream.devstack.process import kill_orphans_of, pid_alive, tagged_processes
from tests.conftest import prune_artifacts

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


def test_artifacts_older_than_the_limit_are_removed(tmp_path: Path) -> None:
    old_dir, new_dir = tmp_path / "llm-old", tmp_path / "llm-new"
    old_file = tmp_path / "bodies.jsonl"
    for d in (old_dir, new_dir):
        (d / "inner").mkdir(parents=True)
        (d / "inner" / "llm.log").write_text("log")
    old_file.write_text("{}")
    now = time.time()
    for entry in (old_dir, old_file):
        os.utime(entry, (now - 3 * 86400, now - 3 * 86400))
    removed = prune_artifacts(tmp_path, 2 * 86400, now=now)
    assert sorted(removed) == sorted([old_dir, old_file])
    assert not old_dir.exists() and not old_file.exists()
    assert (new_dir / "inner" / "llm.log").read_text() == "log"
    assert prune_artifacts(tmp_path, 2 * 86400, now=now) == []
