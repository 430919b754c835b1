"""A private Redis server with an append-only file, for development and tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

from holmes_stream.devstack.process import ManagedProcess, file_lock

_APT_LOCK = Path("/tmp/holmes-stream-apt-redis.lock")


def ensure_redis_server() -> str:
    """Path of ``redis-server``; installs Debian's package (as root) when it is missing."""
    found = _find_redis_server()
    if found:
        return found
    # Serialise installs: two test processes must not run apt-get at once.
    with file_lock(_APT_LOCK):
        found = _find_redis_server()
        if found:
            return found
        if os.geteuid() != 0:
            raise RuntimeError("redis-server is missing; install it (apt-get install redis-server)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "redis-server"],
            check=True,
            env=env,
            capture_output=True,
        )
    found = _find_redis_server()
    if not found:
        raise RuntimeError("apt-get installed redis-server but it is not on PATH")
    return found


def _find_redis_server() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


def redis_ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True once the server answers PONG (while loading the AOF it answers -LOADING)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(ManagedProcess):
    """``redis-server`` on its own port and directory, persisted with ``appendonly yes``."""

    def __init__(self, data_dir: Path, port: int = 16379, host: str = "127.0.0.1") -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.host = host
        super().__init__()

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def _conf(self) -> Path:
        return self.data_dir / "redis.conf"

    @property
    def _marker(self) -> tuple[str, str]:
        # A Redis started from an older config (set-proc-title on) shows "... HOST:PORT".
        return (str(self._conf), f"{self.host}:{self.port}")

    def start(self, timeout: float = 30) -> None:
        """Start the server (no-op if already running) and wait until it answers PING."""
        if self.running():
            return
        binary = ensure_redis_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        # stdout only catches start-up failures; redis itself logs to redis.log.
        self._launch(
            [binary, str(self._conf)],
            self.data_dir / "redis.out",
            ready=lambda: redis_ping(self.host, self.port),
            what=f"Redis on {self.host}:{self.port}",
            timeout=timeout,
            interval=0.05,
            failure_log=self.log_file,
            cwd=self.data_dir,
        )

    def _write_config(self) -> None:
        conf = {
            "bind": self.host,
            "port": str(self.port),
            "dir": str(self.data_dir),
            "daemonize": "no",
            "logfile": str(self.log_file),
            "appendonly": "yes",
            "appendfsync": "everysec",
            # The AOF is the persistence; RDB snapshots would only add fork pauses.
            "save": '""',
            # A rewritten process title overwrites the environment /proc shows, and with it
            # the tag that lets a test session stop what a killed one left running.
            "set-proc-title": "no",
            "protected-mode": "yes",
        }
        self._conf.write_text("".join(f"{k} {v}\n" for k, v in conf.items()))
