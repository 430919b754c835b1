"""holmes-stream itself as a child process: for `dev up`, the demo, tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from holmes_stream.devstack.kafka import pid_alive, read_pid, spawn_detached, stop_pid, wait_until

_READY_LINE = b'"event": "worker ready"'


def service_env(endpoints: dict[str, str], **overrides: str) -> dict[str, str]:
    """The environment of a service process that uses the local stack's endpoints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOLMES_STREAM_")}
    env.update(
        HOLMES_STREAM_KAFKA__BOOTSTRAP_SERVERS=endpoints["kafka_bootstrap_servers"],
        HOLMES_STREAM_REDIS__URL=endpoints["redis_url"],
        HOLMES_STREAM_LLM__API_BASE=endpoints["llm_api_base"],
        HOLMES_STREAM_LLM__MODEL="openai/scripted",
        HOLMES_STREAM_LLM__API_KEY="dummy",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        # The local stack is for development: no credentials (the service logs a warning).
        HOLMES_STREAM_AUTH__MODE="disabled",
    )
    env.update(overrides)
    return env


class ServiceProcess:
    """``holmes-stream worker|api|run`` started detached, with a pid file and a log file."""

    def __init__(self, role: str, env: dict[str, str], run_dir: Path, name: str | None = None):
        self.role = role
        self.env = env
        self.name = name or role
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.pid_file = self.run_dir / f"{self.name}.pid"
        self.log_file = self.run_dir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        host = self.env.get("HOLMES_STREAM_API__HOST", "127.0.0.1")
        return f"http://{host}:{self.env.get('HOLMES_STREAM_API__PORT', '18000')}"

    @property
    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def running(self) -> bool:
        pid = self.pid
        return pid is not None and pid_alive(pid, "holmes_stream")

    def start(self, timeout: float = 180) -> None:
        if self.running():
            return
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        argv = [sys.executable, "-m", "holmes_stream.cli", self.role]
        self._proc = spawn_detached(argv, self.log_file, env=self.env)
        self.pid_file.write_text(str(self._proc.pid))
        wait_until(
            lambda: self._ready(offset),
            timeout=timeout,
            what=f"holmes-stream {self.name}",
            alive=lambda: self._proc is not None and self._proc.poll() is None,
            log_file=self.log_file,
            interval=0.2,
        )

    def _ready(self, log_offset: int) -> bool:
        if self.role == "worker":
            with open(self.log_file, "rb") as log:
                log.seek(log_offset)
                return _READY_LINE in log.read()
        try:
            return httpx.get(self.api_url + "/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, timeout: float = 60) -> None:
        stop_pid(self.pid_file, "holmes_stream", timeout)
        self._reap()

    def kill(self) -> None:
        stop_pid(self.pid_file, "holmes_stream", 5, sig=signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait(timeout=30)
            self._proc = None

    def wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                return True
            if self._proc is None and not self.running():
                return True
            time.sleep(0.1)
        return False
