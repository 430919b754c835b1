"""A single-node KRaft Kafka broker run from Maven Central jars, for development and tests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path

from holmes_stream.devstack.process import ManagedProcess, file_lock, tcp_open

DEFAULT_KAFKA_VERSION = "4.4.0"

# --------------------------------------------------------------------------------------------
# Kafka jars
# --------------------------------------------------------------------------------------------

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>holmes-stream</groupId>
  <artifactId>kafka-devstack</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <!-- Kafka logs through slf4j 1.7; without this binding server.log stays empty. -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j_version}</version>
    </dependency>
  </dependencies>
</project>
"""

_CLASSPATH_FILE = "classpath.txt"
# The log4j release that kafka_2.13 4.4.0 itself depends on.
_LOG4J_VERSION = "2.25.5"


def kafka_cache_root(cache_dir: Path | None = None) -> Path:
    """Directory holding one ``kafka-<version>/`` folder per fetched version."""
    if cache_dir is not None:
        return cache_dir
    env = os.environ.get("HOLMES_STREAM_KAFKA_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "holmes-stream"


def ensure_kafka_classpath(
    version: str = DEFAULT_KAFKA_VERSION, cache_dir: Path | None = None
) -> str:
    """Fetch the broker's runtime jars once with Maven and return the Java classpath.

    ``cache_dir`` (or ``$HOLMES_STREAM_KAFKA_CACHE``, default ``~/.cache/holmes-stream``) holds
    ``kafka-<version>/``. A lock file serialises concurrent callers, and the jars are
    downloaded into a temporary directory renamed into place, so a half-finished fetch is
    never mistaken for a complete one.
    """
    root = kafka_cache_root(cache_dir)
    target = root / f"kafka-{version}"
    cached = _read_classpath(target)
    if cached:
        return cached
    with file_lock(root / f"kafka-{version}.lock"):
        cached = _read_classpath(target)
        if cached:
            return cached
        _fetch_into(target, version)
    cached = _read_classpath(target)
    if not cached:
        raise RuntimeError(f"Kafka classpath missing in {target} after fetch")
    return cached


def _read_classpath(target: Path) -> str | None:
    marker = target / _CLASSPATH_FILE
    if not marker.exists():
        return None
    jars = marker.read_text().split(os.pathsep)
    # Absolute paths are recorded relative to the folder so the cache can be moved.
    return os.pathsep.join(str(target / "lib" / jar) for jar in jars if jar)


def _fetch_into(target: Path, version: str) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("Maven (mvn) is required to fetch the Kafka jars")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".kafka-{version}-", dir=target.parent))
    try:
        (tmp / "pom.xml").write_text(_POM.format(version=version, log4j_version=_LOG4J_VERSION))
        subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(tmp / "pom.xml"),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={tmp / 'lib'}",
                "-DincludeScope=runtime",
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=600,
        )
        jars = sorted(p.name for p in (tmp / "lib").glob("*.jar"))
        if not jars:
            raise RuntimeError("Maven fetched no Kafka jars")
        (tmp / _CLASSPATH_FILE).write_text(os.pathsep.join(jars))
        if target.exists():
            shutil.rmtree(target)  # an incomplete leftover: no classpath file
        os.rename(tmp, target)
    except subprocess.CalledProcessError as exc:
        out = (exc.stdout or b"").decode(errors="replace")[-4000:]
        raise RuntimeError(f"Maven failed to fetch Kafka {version}:\n{out}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# The broker
# --------------------------------------------------------------------------------------------

_LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log_file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""


# A development broker shares a small machine with everything it serves. C2 (the optimising
# JIT) kept recompiling for minutes after start-up and took as much CPU as the broker's request
# handling: 6-10 ms of broker CPU per investigation end to end, 2.2-2.9 ms with C1 alone. A heap
# of a few hundred megabytes needs no concurrent collector threads either.
BROKER_JVM_FLAGS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")


def random_cluster_id() -> str:
    """Same format as ``StorageTool random-uuid``, without paying for a JVM start."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # Kafka refuses ids that look like a CLI flag
            return cid


class KafkaBroker(ManagedProcess):
    """A combined broker+controller KRaft node whose data lives in ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        port: int = 19092,
        controller_port: int = 19093,
        version: str = DEFAULT_KAFKA_VERSION,
        heap: str = "512m",
        host: str = "127.0.0.1",
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.controller_port = controller_port
        self.version = version
        self.heap = heap
        self.host = host
        super().__init__()

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "kafka.pid"

    @property
    def log_file(self) -> Path:
        """stdout/stderr of the JVM; the broker's own log is ``server.log`` beside it."""
        return self.data_dir / "kafka.out"

    @property
    def _properties(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def _marker(self) -> str:
        return str(self._properties)

    def start(self, timeout: float = 90) -> None:
        """Start the broker (no-op if already running) and wait until it serves metadata."""
        if self.running():
            return
        classpath = ensure_kafka_classpath(self.version)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._format_storage(classpath)
        self._launch(
            self._java_argv(classpath, "kafka.Kafka"),
            self.log_file,
            ready=self._ready,
            what=f"Kafka broker on {self.bootstrap_servers}",
            timeout=timeout,
            interval=0.25,
            failure_log=self.data_dir / "server.log",
        )

    def _write_config(self) -> None:
        logs = self.data_dir / "logs"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:"
                f"{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(logs),
            "num.partitions": "4",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            # Large enough for the service's 1 MB alert limit plus envelope.
            "message.max.bytes": "2097152",
        }
        self._properties.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        log4j = _LOG4J2.format(log_file=self.data_dir / "server.log")
        (self.data_dir / "log4j2.properties").write_text(log4j)

    def _formatted(self) -> bool:
        return (self.data_dir / "logs" / "meta.properties").exists()

    def _format_storage(self, classpath: str) -> None:
        if self._formatted():
            return
        cluster_id = random_cluster_id()
        (self.data_dir / "cluster.id").write_text(cluster_id)
        argv = self._java_argv(classpath, "kafka.tools.StorageTool")
        argv += ["format", "--ignore-formatted", "-t", cluster_id, "-c", str(self._properties)]
        result = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
        if result.returncode != 0:
            out = (result.stdout + result.stderr).decode(errors="replace")[-4000:]
            raise RuntimeError(f"Kafka storage format failed:\n{out}")

    def _java_argv(self, classpath: str, main: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("Java (17+) is required to run the Kafka broker")
        return [
            java,
            f"-Xmx{self.heap}",
            *BROKER_JVM_FLAGS,
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            classpath,
            main,
            *([str(self._properties)] if main == "kafka.Kafka" else []),
        ]

    def _ready(self) -> bool:
        # A listening socket comes before the broker registers with its controller; only a
        # metadata answer naming a broker means producers and consumers will work.
        if not tcp_open(self.host, self.port):
            return False
        return _metadata_has_broker(self.bootstrap_servers)


def _metadata_has_broker(bootstrap_servers: str, timeout: float = 5.0) -> bool:
    """Ask for cluster metadata with aiokafka; run in a thread so callers may hold a loop."""

    async def probe() -> bool:
        from aiokafka import AIOKafkaClient

        client = AIOKafkaClient(
            bootstrap_servers=bootstrap_servers,
            request_timeout_ms=int(timeout * 1000),
            metadata_max_age_ms=1000,
        )
        try:
            await asyncio.wait_for(client.bootstrap(), timeout)
            return bool(client.cluster.brokers())
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    result: list[bool] = [False]

    def run() -> None:
        result[0] = asyncio.run(probe())

    thread = threading.Thread(target=run, name="kafka-probe", daemon=True)
    thread.start()
    thread.join(timeout + 2)
    return result[0]
