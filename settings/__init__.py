"""The one typed settings object, read from ``TRIBUTARY_*`` environment variables.

Every service (ingress, processors, workers, CLI) reads its configuration from here;
each field is documented in the README's settings table.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_intra_op_threads() -> int:
    """ONNX Runtime threads per session when not set: half the usable CPUs, at least one.

    A node runs the ingress, the broker and a worker per priority beside each model; a session
    that takes every core stalls on the one a neighbour holds (on this 2-core machine, under load,
    2 threads ran a batch-1 embedding 2-3x slower than 1 thread; see docs/benchmarks.md).
    """
    try:
        usable = len(os.sched_getaffinity(0))  # the CPUs this process may run on (cpusets, taskset)
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    return max(1, usable // 2)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRIBUTARY_", extra="ignore", frozen=True)

    # --- where the servers are -------------------------------------------------------
    # Empty means "start the local one from infra/"; set to use an existing server.
    kafka_bootstrap: str = Field("", description="Kafka bootstrap servers; empty = local Apache Kafka")
    cassandra_hosts: str = Field("", description="Comma-separated Cassandra contact points; empty = local")
    s3_endpoint: str = Field("", description="S3 endpoint URL; empty = local SeaweedFS")

    # --- local stack -----------------------------------------------------------------
    data_dir: Path = Field(REPO_ROOT / ".local", description="Data, logs and pid files of the local stack")
    kafka_port: int = 9092
    cassandra_port: int = 9042
    s3_port: int = 8333
    tools_dir: Path = Field(
        REPO_ROOT / ".local" / "opt", description="Kafka and Cassandra jars from Maven Central, shared by local stacks"
    )
    java_home: Path | None = Field(
        None, description="JDK 17 for Kafka and Cassandra; unset = JAVA_HOME, /usr/lib/jvm/*-17-*, then PATH"
    )
    kafka_heap_mb: int = Field(512, ge=128)
    cassandra_heap_mb: int = Field(1024, ge=256)
    startup_timeout_s: float = 120.0

    # --- Kafka clients -------------------------------------------------------------------
    topic_prefix: str = Field("", description="Prefix for every topic name, so environments can share a cluster")
    session_timeout_ms: int = Field(6000, ge=1000, description="Consumer group session timeout")
    shutdown_timeout_s: float = Field(
        20.0, gt=1, description="Bound on a consumer's graceful stop (finish in flight, commit, leave the group)"
    )
    # Kafka answers a waiting fetch as soon as data arrives, so this bounds only idle polling.
    fetch_max_wait_ms: int = Field(500, ge=0, description="Consumer fetch max wait (idle cost, not latency)")
    idle_fetch_max_wait_ms: int = Field(
        5000, ge=0, description="Fetch max wait of consumers whose partitions do not move while they run (each "
                                "worker's model-commands reader, each ingress's key-events reader) and of trainers "
                                "(jobs of minutes): fewer idle fetches for the broker, no added latency")
    producer_linger_ms: float = Field(
        0, ge=0, description="Producer linger; 0 sends at once (batches still form behind in-flight requests)"
    )
    producer_max_in_flight: int = Field(10_000, ge=1, description="Unacknowledged messages before back-pressure")
    delivery_timeout_ms: int = Field(10_000, ge=1000, description="Give up on a message after this long")
    publish_ack_wait_s: float = Field(
        5.0, gt=0, description="How long a request waits for the broker's acknowledgement before 503"
    )
    max_processing_attempts: int = Field(3, ge=1, description="Processing failures before dead-lettering")
    default_replication_factor: int = Field(1, ge=1)
    default_min_insync_replicas: int = Field(1, ge=1)

    # --- Cassandra -------------------------------------------------------------------
    cassandra_keyspace: str = "tributary"
    cassandra_replication: str = Field(
        "{'class': 'SimpleStrategy', 'replication_factor': 1}",
        description="Keyspace replication map in CQL syntax",
    )
    cassandra_username: str = ""
    cassandra_password: SecretStr = SecretStr("")

    # --- S3 --------------------------------------------------------------------------
    s3_bucket: str = "tributary-artifacts"
    s3_access_key: str = "tributary"
    s3_secret_key: SecretStr = SecretStr("tributary-secret")
    s3_region: str = "us-east-1"

    # --- API -------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_io_threads: int = Field(
        64, ge=1, le=1024, description="Threads of each ingress process for blocking store calls (they wait on I/O)")
    api_workers: int = Field(
        1, ge=1, le=64, description="Ingress processes (uvicorn workers) sharing the REST and gRPC ports; each is a "
                                    "replica of its own (reply-group member, rate-limit leases, audit chain)")
    api_heartbeat_fast_path: bool = Field(
        True, description="Serve well-formed heartbeats without FastAPI's per-request machinery (api/hot_path.py); "
                          "false sends them through the FastAPI route like every other call")
    trusted_proxies: str = Field(
        "", description="Comma-separated proxy addresses or networks whose X-Forwarded-For is believed; "
                        "empty = none: the connection's peer is the client")
    grpc_port: int = Field(50051, ge=0, le=65535,
                           description="gRPC (seed 001 §3) port of the ingress, beside REST; 0 = no gRPC server")
    grpc_stream_max_in_flight: int = Field(
        64, ge=1, description="Requests one InferStream call keeps in flight; reading waits beyond it")
    admin_api_key: SecretStr = SecretStr("")
    audit_hmac_key: SecretStr = SecretStr("")

    # --- fleet and federated learning -----------------------------------------------
    heartbeat_interval_s: float = Field(30.0, gt=0, description="Expected heartbeat interval of devices")
    active_device_window_s: float = Field(300.0, gt=0, description="active_devices = heartbeat within this")
    freshness_sweep_s: float = Field(5.0, gt=0, description="How often the device processor re-checks freshness")
    heartbeat_batch_max: int = Field(
        500, ge=1, description="Heartbeats the device processor applies together (reads and writes in flight at once)")
    straggler_grace_s: float = Field(10.0, ge=0, description="Wait after min_devices completed before aggregating")
    aggregation_lease_s: float = Field(
        60.0, gt=0, description="How long an aggregation attempt holds a round unrenewed before another may take over")
    aggregation_retry_s: float = Field(10.0, ge=0, description="Pause after a failed aggregation attempt")
    aggregation_max_attempts: int = Field(
        5, ge=1, description="Failed aggregation attempts after which the round is failed with the last error")
    fedavg_sum_precision: Literal["float32", "float64"] = Field(
        "float32", description="dtype of FedAvg's running sum of float32/16 parameters: float32 keeps one model "
                               "in memory, float64 two (float64 parameters are always summed in float64)")
    fedavg_checkpoint_every: int = Field(
        0, ge=0, description="Write the running FedAvg sum to S3 after this many folded updates; 0 = not by count")
    fedavg_checkpoint_interval_s: float = Field(
        300.0, ge=0, description="Write the running FedAvg sum to S3 when this long has passed since the last "
                                 "write; 0 = not by time. A restart folds the stored updates after the checkpoint")
    rate_limit_per_minute: int = Field(100, ge=1, description="Requests per minute per device key (seed 000) "
                                                              "and per address for registration")
    operator_rate_limit_per_minute: int = Field(100_000, ge=1, description="Requests per minute per operator key")
    service_rate_limit_per_minute: int = Field(100_000, ge=1, description="Requests per minute per service key")
    key_cache_max_age_s: float = Field(
        60.0, gt=0, description="Longest an ingress replica answers from a cached key lookup (the backstop "
                                "behind revocation events)")
    key_cache_size: int = Field(100_000, ge=1, description="Key lookups each ingress replica caches")
    key_propagation_timeout_s: float = Field(
        10.0, gt=0, description="How long a revoke, rotate or device delete waits for every live ingress "
                                "replica to apply it before answering that it could not confirm")
    max_upload_bytes: int = Field(100 * 1024 * 1024, ge=1024, description="Largest model or update upload")
    # 32 MiB: a 20 MiB image base64-encoded (4/3) in a JSON inference request, with room to spare.
    max_request_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Largest non-multipart request body (JSON); 413 beyond it"
    )
    learning_graph_threshold: int = Field(1000, ge=1, description="Pending graphs that trigger retraining")
    learning_graph_hmac_key: SecretStr = SecretStr("")
    learning_graph_aes_key: SecretStr = Field(SecretStr(""), description="Hex AES-256 key (64 hex chars)")
    # The round a retraining request starts (the learning-graph processor; REST callers choose their own).
    retraining_target_devices: int = Field(10, ge=1, le=2**31 - 1, description="Devices a retraining round asks for")
    retraining_min_devices: int = Field(
        2, ge=1, le=2**31 - 1, description="Updates a retraining round needs; fewer eligible devices: not started")
    retraining_round_timeout_s: int = Field(600, ge=60, le=3600, description="Timeout of a retraining round")

    # --- routing decisions (core/routing.py): defaults of every model's routing policy ---------
    routing_min_battery_pct: int = Field(
        20, ge=0, le=100, description="Below this battery level a device that is not charging is routed to the "
                                      "cloud; 0 = battery never counts")
    routing_download_networks: str = Field(
        "wifi,ethernet", description="Comma-separated networks (wifi, cellular, ethernet) devices may download "
                                     "assigned models on; on others they use the cloud until they can")
    routing_memory_headroom: float = Field(
        1.2, ge=1.0, le=10.0, description="A device runs a model itself only with resource_requirements.memory_mb "
                                          "x this much memory")

    # --- staged rollouts (core/rollouts/) ----------------------------------------------------
    rollout_cache_s: float = Field(
        2.0, gt=0, description="How stale an ingress replica's (and the rollouts processor's) view of rollouts "
                               "and catalog models may be: assignments change within this of a rollout change")
    rollout_device_cache_s: float = Field(
        300.0, gt=0, description="How long an ingress replica keeps a device's registered platform and "
                                 "capabilities for its assignments (one Cassandra read per device per this)")
    rollout_device_cache_size: int = Field(100_000, ge=1, description="Devices each ingress replica caches so")
    rollout_tick_s: float = Field(2.0, gt=0, description="How often the rollouts processor judges stage gates")

    # --- model serving -----------------------------------------------------------------
    worker_metrics_port: int = Field(
        0, ge=0, le=65533, description="Prometheus port of inference workers (+0/+1/+2 by priority); 0 = off"
    )
    inference_max_batch_size: int = Field(8, ge=1, description="Requests per model batched into one call; 1 = off")
    inference_max_wait_ms: float = Field(5.0, ge=0, description="How long a batch waits to fill before it runs")
    inference_max_in_flight: int = Field(64, ge=1, description="Requests one worker process holds at once")
    inference_memory_budget_mb: int = Field(2048, ge=64, description="Loaded models per worker, LRU-evicted")
    inference_intra_op_threads: int = Field(default_factory=default_intra_op_threads, ge=1,
                                            description="ONNX Runtime threads per model session; default: "
                                                        "half the CPUs this process may use, at least 1")
    inference_preload_models: str = Field("", description="Comma-separated model ids each worker loads at start")
    # Inputs above inference_claim_check_bytes travel as an S3 claim check, so this bound is the
    # ingress's and the workers' memory, not Kafka's 1 MB: 30 MiB takes a 20 MiB image as base64.
    inference_max_input_bytes: int = Field(
        30 * 1024 * 1024, ge=1024, description="Largest encoded input_data + parameters; 413 beyond it"
    )
    inference_claim_check_bytes: int = Field(
        256 * 1024, ge=1024, le=768 * 1024,
        description="Inputs and results whose JSON is larger ride Kafka as an S3 claim check (bucket, key, "
                    "size, sha256); at most 768 KiB, so a message stays under Kafka's 1 MB")
    claim_check_retention_days: int = Field(
        1, ge=1, description="Claim-check objects (claims/ in the bucket) expire after this many days")
    claim_check_sweep_interval_s: float = Field(
        3600.0, ge=0, description="How often the ingress deletes expired claim-check objects itself; 0 = never")
    model_load_wait_s: float = Field(
        60.0, gt=0, description="How long POST /models/{id}/load (and /unload) waits for a worker to report it"
    )
    model_residency_ttl_s: int = Field(
        30, ge=3, description="TTL of a worker's model residency rows; refreshed every third of it"
    )
    # --- onboarding user models from a URI (POST /models with source_url, then /download) ---
    model_fetch_max_bytes: int = Field(
        2 * 1024**3, ge=1024, description="Largest model file fetched from a source_url; the fetch stops beyond it")
    model_fetch_timeout_s: float = Field(
        600.0, gt=0, description="Longest a source_url fetch may take, all redirects included")
    model_fetch_allow_http: bool = Field(
        False, description="Accept plain http:// source_urls (https:// only when off)")
    model_fetch_allowed_networks: str = Field(
        "", description="Comma-separated IPs/CIDRs a source_url may reach although private, loopback or "
                        "link-local (e.g. 127.0.0.1 in tests); empty = public addresses only")
    model_source_file_root: str = Field(
        "", description="Directory file:// source_urls must lie under; empty = file:// refused")
    model_source_s3_buckets: str = Field(
        "", description="Comma-separated buckets of our S3 that s3:// source_urls may name (besides s3_bucket)")
    # --- trainers (seed 003 §2 LoRA training jobs: `tributary trainer`) ---
    trainer_torch_threads: int = Field(
        default_factory=default_intra_op_threads, ge=1,
        description="Torch intra-op threads of one trainer; unset = half the usable CPUs")
    trainer_cancel_poll_s: float = Field(
        0.5, gt=0, le=30, description="How often a running trainer reads its job row for a cancel (between batches)")
    # --- datasets (seed 003 §4: POST /api/v1/datasets, multipart or source_url) ---
    dataset_max_bytes: int = Field(
        100 * 1024 * 1024, ge=1024,
        description="Largest dataset file (upload or source_url fetch); 413 beyond it. The ingress reads it "
                    "into memory to check it, so this bounds an ingress's memory per upload")
    dataset_fetch_timeout_s: float = Field(
        60.0, gt=0, description="Longest a dataset source_url fetch may take (the request waits for it)")
    reply_assignment_timeout_s: float = Field(
        30.0, gt=0, description="How long an ingress waits at start-up for its first reply partition"
    )

    # --- carbon accounting (seed 003 §5; method in docs/operations.md "Carbon accounting") ---
    carbon_country_iso: str = Field(
        "USA", min_length=3, max_length=3, pattern="^[A-Z]{3}$",
        description="ISO 3166-1 alpha-3 country whose grid mix (codecarbon's offline data) prices a kWh in CO2")
    carbon_intensity_g_per_kwh: float | None = Field(
        None, ge=0, le=2000,
        description="Grid carbon intensity in g CO2e/kWh; set = used instead of the country's average")
    carbon_tracking_interval_s: float = Field(
        15.0, gt=0, le=3600, description="How often a training job's tracker samples power (seed: "
                                         "carbon_tracking_interval); also the spacing of its timeline")
    carbon_flush_interval_s: float = Field(
        2.0, gt=0, le=300, description="How often an inference worker writes its batches' carbon records")

    # --- derived ---------------------------------------------------------------------
    @property
    def kafka_bootstrap_servers(self) -> str:
        return self.kafka_bootstrap or f"127.0.0.1:{self.kafka_port}"

    @property
    def cassandra_contact_points(self) -> list[str]:
        if self.cassandra_hosts:
            return [h.strip() for h in self.cassandra_hosts.split(",") if h.strip()]
        return ["127.0.0.1"]

    @property
    def s3_endpoint_url(self) -> str:
        return self.s3_endpoint or f"http://127.0.0.1:{self.s3_port}"

    def prefixed(self, name: str) -> str:
        """``name`` with the environment prefix. Declared topics and groups have their own way to
        their wire name (``TopicSpec.full_name``, ``ConsumerGroupSpec.full_id``), which call this."""
        return f"{self.topic_prefix}{name}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
