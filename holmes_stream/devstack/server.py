"""A devstack HTTP test server run as a detached ``python -m <module>`` subprocess."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, ClassVar

from holmes_stream.devstack.process import ManagedProcess

_JSON = "application/json"


def child_env() -> dict[str, str]:
    # The repo may not be installed in the interpreter's site-packages; make it importable.
    repo_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH")) if p)
    return env


class ServerProcess(ManagedProcess):
    """Start, probe, control and stop one server; a pid file makes it stoppable from anywhere.

    Subclasses name their module, file stem and label, and say when the server answers.
    """

    module: ClassVar[str]
    stem: ClassVar[str]
    label: ClassVar[str]
    stop_timeout = 10.0

    def __init__(self, port: int, host: str, data_dir: Path | None, config: dict[str, Any]) -> None:
        super().__init__()
        self.port = port
        self.host = host
        self._config_changes = config
        self.data_dir = Path(data_dir).resolve() if data_dir else None
        self._tmp_dir: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def _dir(self) -> Path:
        if self.data_dir is not None:
            return self.data_dir
        if self._tmp_dir is None:
            self._tmp_dir = tempfile.mkdtemp(prefix=f"{self.stem}-")
        return Path(self._tmp_dir)

    @property
    def pid_file(self) -> Path:
        return self._dir / f"{self.stem}.pid"

    @property
    def log_file(self) -> Path:
        return self._dir / f"{self.stem}.log"

    @property
    def _marker(self) -> str:
        return f"{self.module.rsplit('.', 1)[-1]} --host {self.host} --port {self.port}"

    def start(self, timeout: float = 30) -> None:
        """Spawn the server (no-op if running) and wait until it answers."""
        if self.running():
            return
        self._dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", self.module, "--host", self.host, "--port", str(self.port)]
        argv += ["--config-json", json.dumps(self._config_changes)]
        self._launch(
            argv,
            self.log_file,
            ready=self._answers,
            what=f"{self.label} on {self.base_url}",
            timeout=timeout,
            interval=0.05,
            env=child_env(),
        )

    def _answers(self) -> bool:
        raise NotImplementedError

    def _call(
        self, method: str, path: str, body: Any = None, timeout: float = 5.0
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers={"Content-Type": _JSON}
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            result: dict[str, Any] = json.loads(resp.read())
            return result
