"""A detached child process with a pid file: started, probed, stopped or killed.

Every devstack piece (Kafka, Redis, the test servers, holmes-stream itself) is one; the pid
file lets a different process (``dev down``, a test's teardown) stop what another started.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import ClassVar


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


Marker = str | tuple[str, ...] | None


def pid_alive(pid: int, marker: Marker = None) -> bool:
    """True if ``pid`` runs and, when given, its command line contains ``marker`` (or one of).

    The marker guards against a stale pid file whose pid was reused by another program.
    Zombies count as dead: a process we started but did not reap yet has already exited.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        state = stat.rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            _reap(pid)
            return False
        if marker is not None:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            markers = (marker,) if isinstance(marker, str) else marker
            return any(m.encode() in cmdline for m in markers)
    except (OSError, IndexError):
        return False
    return True


def _reap(pid: int) -> None:
    # Only succeeds for our own children; for others the zombie belongs to their parent.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def spawn_detached(
    argv: Sequence[str],
    log_file: Path,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session so it outlives us and ignores our terminal's Ctrl-C."""
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
        )


def wait_for_exit(pid: int, marker: Marker, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid, marker):
            return True
        time.sleep(0.05)
    return not pid_alive(pid, marker)


def stop_pid(pid_file: Path, marker: Marker, timeout: float, sig: int = signal.SIGTERM) -> bool:
    """Signal the process named in ``pid_file``, escalate to SIGKILL after ``timeout``.

    Returns True if a live process was found. The pid file is removed in every case.
    """
    pid = read_pid(pid_file)
    found = pid is not None and pid_alive(pid, marker)
    if pid is not None and found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if sig != signal.SIGKILL and not wait_for_exit(pid, marker, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for_exit(pid, marker, 10.0)
    with contextlib.suppress(FileNotFoundError):
        pid_file.unlink()
    return found


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    alive: Callable[[], bool] | None = None,
    log_file: Path | None = None,
    interval: float = 0.1,
) -> None:
    """Poll ``ready`` until true; fail fast with the log tail if the process died."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return
        if alive is not None and not alive():
            raise RuntimeError(f"{what} exited during start-up{_log_tail(log_file)}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f}s{_log_tail(log_file)}")
        time.sleep(interval)


def _log_tail(log_file: Path | None, lines: int = 30) -> str:
    if log_file is None or not log_file.exists():
        return ""
    tail = log_file.read_text(errors="replace").splitlines()[-lines:]
    return f"; last lines of {log_file}:\n" + "\n".join(tail)


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock across processes (released if the holder dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class ManagedProcess:
    stop_timeout: ClassVar[float] = 30.0

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid_file(self) -> Path:
        raise NotImplementedError

    @property
    def _marker(self) -> Marker:
        """What the process's command line contains: guards against a reused pid."""
        raise NotImplementedError

    def running(self) -> bool:
        pid = read_pid(self.pid_file)
        return pid is not None and pid_alive(pid, self._marker)

    def _launch(
        self,
        argv: Sequence[str],
        log_file: Path,
        *,
        ready: Callable[[], bool],
        what: str,
        timeout: float,
        interval: float,
        failure_log: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        """Spawn, record the pid, wait until ``ready``; a start that fails leaves nothing."""
        self._proc = spawn_detached(argv, log_file, env=env, cwd=cwd)
        self.pid_file.write_text(str(self._proc.pid))
        try:
            wait_until(
                ready,
                timeout=timeout,
                what=what,
                # The child, not the pid file: before exec its command line is still ours.
                alive=lambda: self._proc is not None and self._proc.poll() is None,
                log_file=failure_log or log_file,
                interval=interval,
            )
        except BaseException:
            self.kill()
            raise

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; works from any process via the pid file."""
        stop_pid(self.pid_file, self._marker, timeout or self.stop_timeout)
        self._reap()

    def kill(self) -> None:
        """SIGKILL, as in a crash."""
        stop_pid(self.pid_file, self._marker, 10.0, sig=signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=30)
            self._proc = None


def tagged_processes(name: str) -> dict[int, str]:
    """Our processes whose environment has the variable ``name``: pid → its value.

    A variable set in a process is inherited by everything it starts, however it starts it (a
    broker, a server, a child's child), so it tells what belongs to whom after the owner died.
    """
    prefix = name.encode() + b"="
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours
            continue
        for item in environ.split(b"\0"):
            if item.startswith(prefix):
                found[int(entry.name)] = item[len(prefix) :].decode(errors="replace")
                break
    return found


def kill_orphans_of(name: str, owner_marker: Marker) -> list[int]:
    """SIGKILL the processes tagged ``name=<pid>`` whose owner (that pid, its command line
    naming ``owner_marker``) is gone: what a killed session left running. Those of a live
    owner, this process's included, are left alone. Returns once the killed ones are gone."""
    killed = []
    for pid, owner in tagged_processes(name).items():
        if pid == os.getpid() or not owner.isdigit() or pid_alive(int(owner), owner_marker):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    for pid in killed:
        wait_for_exit(pid, None, timeout=10)
    return killed
