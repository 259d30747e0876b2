"""Deployment manifests: infra/compose (Docker Compose) and infra/k8s (Kubernetes + KEDA).

Every YAML file must parse; every built-in Kubernetes object must validate against the official
Kubernetes JSON schemas (bundled by ``kubernetes-validate``, no network); and the rules that tie
the manifests to the code are checked against the code itself: setting names (settings/),
topics, partitions and consumer groups (topology/), the process commands (cli/services.py), the
routes the probes hit (api/app.py) and the shutdown bounds of the consumers.
"""

from __future__ import annotations

import ast
import base64
import copy
import functools
import inspect
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from api.context import AppContext
from cli.services import API_ARGS, GROUP_ARGS, MEMBER_ARGS, system_services
from core.artifacts import MemoryArtifactStore
from core.fleet.memory_store import InMemoryFleetStore
from producers.publisher import Publisher
from settings import Settings
from tests.recording_sink import RecordingSink
from topology.groups import BY_GROUP, GROUPS, Group, group_spec
from topology.topics import DATA_TOPICS, INFERENCE_REQUESTS, Priority

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "infra" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
K8S_DIR = ROOT / "infra" / "k8s"
K8S_VERSION = "1.30"  # the oldest Kubernetes minor the manifests must work on

Obj = dict[str, Any]
T = TypeVar("T")
ENV_PREFIX = str(Settings.model_config.get("env_prefix", ""))
VALID_ENV = {f"{ENV_PREFIX}{name}".upper() for name in Settings.model_fields}
SECRET_FIELDS = {name for name, field in Settings.model_fields.items() if field.annotation is SecretStr}
PUBLISHER_CLOSE_S = float(inspect.signature(Publisher.close).parameters["timeout_s"].default)
CONSUMER_GROUPS = set(GROUP_ARGS)  # the groups we run as processes of their own


# --- loading ----------------------------------------------------------------------------------


def yaml_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.suffix in {".yaml", ".yml"})


@functools.cache  # parsed once per session; callers must not mutate (deep-copy first)
def load_docs(path: Path) -> list[Obj]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no YAML document"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: every document must be a mapping"
    return cast(list[Obj], docs)


def k8s_objects() -> list[Obj]:
    return [d for p in yaml_files(K8S_DIR) if p.name != "kustomization.yaml" for d in load_docs(p)]


def of_kind(kind: str) -> list[Obj]:
    return [o for o in k8s_objects() if o["kind"] == kind]


def by_name(kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in of_kind(kind)}


def only(items: list[T]) -> T:
    assert len(items) == 1, f"expected exactly one, found {len(items)}: {items!r:.300}"
    return items[0]


def containers(deployment: Obj) -> list[Obj]:
    return cast(list[Obj], deployment["spec"]["template"]["spec"]["containers"])


def pod_labels(workload: Obj) -> dict[str, str]:
    return cast(dict[str, str], workload["spec"]["template"]["metadata"]["labels"])


def config_data() -> dict[str, str]:
    return cast(dict[str, str], only(of_kind("ConfigMap"))["data"])


def secret_data() -> dict[str, str]:
    return cast(dict[str, str], only(of_kind("Secret"))["stringData"])


def settings_from_env(env: dict[str, str]) -> Settings:
    """The Settings a process gets from exactly these variables (validated like at start-up)."""
    return Settings.model_validate({name.removeprefix(ENV_PREFIX).lower(): value for name, value in env.items()})


def k8s_settings() -> Settings:
    return settings_from_env({**config_data(), **secret_data()})


def is_python(command: list[str]) -> bool:
    return command[0] in {"python", "python3"} or command[0].endswith("/python")


def cli_args(command: list[str]) -> list[str]:
    """The ``tributary`` subcommand a process runs: ``[tributary, args...]`` (the image's script) or
    ``[python, -m, cli, args...]`` (``tributary run``, any interpreter) -> ``[args...]``; ``[]`` for
    anything else (a shell, a one-off ``python -c``)."""
    if command[:1] == ["tributary"]:
        return command[1:]
    if is_python(command) and command[1:3] == ["-m", "cli"]:
        return command[3:]
    return []


def consumer_deployments() -> dict[str, Obj]:
    """Consumer group id -> the Deployment running its members (matched by command)."""
    found: dict[str, Obj] = {}
    for deployment in of_kind("Deployment"):
        command = containers(deployment)[0]["command"]
        for group_id, group_args in GROUP_ARGS.items():
            if cli_args(command) == list(group_args):
                assert group_id not in found, f"two Deployments run {group_id}"
                found[group_id] = deployment
    return found


def api_deployment() -> Obj:
    return only([d for d in of_kind("Deployment") if cli_args(containers(d)[0]["command"]) == list(API_ARGS)])


def app_routes() -> set[str]:
    """Every path the ingress serves (from its OpenAPI document: routers are included, not flattened)."""
    return set(create_app(Settings()).openapi()["paths"])


def is_inference_worker(command: list[str]) -> bool:
    return cli_args(command) in [list(GROUP_ARGS[Group.inference(p).value]) for p in Priority]


def quantity(value: str | int | float) -> float:
    """Kubernetes quantity -> float (cores, or bytes)."""
    text = str(value)
    suffixes = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(suffixes.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def probes(container: Obj) -> Iterator[tuple[str, Obj]]:
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        if kind in container:
            yield kind, cast(Obj, container[kind])


# --- every file -------------------------------------------------------------------------------


def test_every_manifest_parses_as_yaml() -> None:
    files = yaml_files(COMPOSE_DIR) + yaml_files(K8S_DIR)
    assert COMPOSE_FILE in files and K8S_DIR / "kustomization.yaml" in files
    for path in files:
        docs = load_docs(path)
        if path.parent == K8S_DIR:
            for doc in docs:
                assert {"apiVersion", "kind"} <= doc.keys(), f"{path}: not a Kubernetes object"
                assert doc["kind"] == "Kustomization" or doc["metadata"]["name"], path


def test_kustomization_lists_every_manifest_and_the_namespace() -> None:
    kustomization = only(load_docs(K8S_DIR / "kustomization.yaml"))
    manifests = {p.name for p in yaml_files(K8S_DIR)} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(manifests)
    namespace = only(of_kind("Namespace"))["metadata"]["name"]
    assert kustomization["namespace"] == namespace
    # the image the kustomization retags is the one every workload runs
    image_names = {c["image"].split(":")[0] for kind in ("Deployment", "Job") for o in of_kind(kind)
                   for c in o["spec"]["template"]["spec"]["containers"]}
    assert image_names == {entry["name"] for entry in kustomization["images"]}


# --- Kubernetes: schemas ----------------------------------------------------------------------


def test_builtin_objects_validate_against_the_kubernetes_schemas() -> None:
    kinds = set()
    for obj in k8s_objects():
        if obj["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: no official schema; structural rules below
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        kinds.add(obj["kind"])
    assert {"Namespace", "ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget",
            "HorizontalPodAutoscaler", "Job"} <= kinds


def test_schema_validation_is_strict_enough_to_catch_a_typo() -> None:
    broken = copy.deepcopy(api_deployment())
    containers(broken)[0]["readinesProbe"] = containers(broken)[0].pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_scaledobject_hpa_behaviour_is_a_valid_hpa_behaviour() -> None:
    # KEDA copies advanced.horizontalPodAutoscalerConfig.behavior into the HPA it creates.
    for scaled in of_kind("ScaledObject"):
        behaviour = scaled["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
        assert behaviour, f"{scaled['metadata']['name']}: scale-down must be damped (rebalances)"
        hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "x"},
               "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 1,
                        "behavior": behaviour}}
        kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)


# --- Kubernetes: structure --------------------------------------------------------------------


def test_deployments_select_their_own_pods_and_each_has_exactly_one_pdb() -> None:
    deployments = of_kind("Deployment")
    pdbs = of_kind("PodDisruptionBudget")
    assert deployments
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        labels = pod_labels(deployment)
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        others = [pod_labels(d) for d in deployments if d is not deployment]
        assert not any(deployment["spec"]["selector"]["matchLabels"].items() <= o.items() for o in others), name
        covering = [p for p in pdbs if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(covering) == 1, f"{name}: {len(covering)} PodDisruptionBudgets select it"
        budget = covering[0]["spec"]
        # never a budget that blocks every eviction (minAvailable >= replicas deadlocks node drains)
        assert "maxUnavailable" in budget and int(budget["maxUnavailable"]) >= 1, name
    assert len(pdbs) == len(deployments)


def test_every_process_of_the_system_has_a_deployment() -> None:
    consumers = consumer_deployments()
    assert set(consumers) == CONSUMER_GROUPS
    assert api_deployment()["metadata"]["name"] not in {d["metadata"]["name"] for d in consumers.values()}
    assert len(of_kind("Deployment")) == len(system_services(Settings()))


def test_every_declared_consumer_group_has_a_deployment_whose_command_starts_it() -> None:
    """No phantom groups: a group nobody runs never gets a member (degraded health, lag that only grows)."""
    commands = [cli_args(containers(d)[0]["command"]) for d in of_kind("Deployment")]
    for group in GROUPS:
        assert list(MEMBER_ARGS[group.group_id]) in commands, f"no Deployment runs a member of {group.group_id}"
    compose_commands = [cli_args(s["command"]) for s in ours().values()]
    for group in GROUPS:
        assert list(MEMBER_ARGS[group.group_id]) in compose_commands, f"no compose service runs {group.group_id}"


def test_every_consumer_deployment_is_scaled_by_keda_on_its_group_lag() -> None:
    settings = k8s_settings()
    scaled = by_name("ScaledObject")
    for group_id, deployment in consumer_deployments().items():
        name = deployment["metadata"]["name"]
        assert "replicas" not in deployment["spec"], f"{name}: the ScaledObject owns replicas"
        targeting = [s for s in scaled.values() if s["spec"]["scaleTargetRef"]["name"] == name]
        spec = only(targeting)["spec"]
        assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        assert only(targeting)["apiVersion"] == "keda.sh/v1alpha1"
        trigger = only(spec["triggers"])
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        group = group_spec(group_id)
        assert meta["consumerGroup"] == group.full_id(settings)
        assert meta["topic"] in group.input_names(settings)
        assert meta["bootstrapServers"] == settings.kafka_bootstrap
        partitions = {t.name: t for t in DATA_TOPICS}[meta["topic"].removeprefix(settings.topic_prefix)].partitions
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= min(partitions, group.max_replicas), name
        assert int(meta["lagThreshold"]) >= 1
        assert meta.get("allowIdleConsumers", "false") == "false"
        # KEDA must not count a new group as lag-free while our consumers start at the earliest offset
        assert meta["offsetResetPolicy"] == "earliest"


def test_lag_targets_are_strictest_for_high_priority() -> None:
    settings = k8s_settings()
    threshold: dict[Priority, int] = {}
    for scaled in of_kind("ScaledObject"):
        meta = only(scaled["spec"]["triggers"])["metadata"]
        for priority in Priority:
            if meta["consumerGroup"] == BY_GROUP[Group.inference(priority).value].full_id(settings):
                threshold[priority] = int(meta["lagThreshold"])
                assert meta["topic"] == INFERENCE_REQUESTS[priority].full_name(settings)
    assert set(threshold) == set(Priority)
    assert threshold[Priority.HIGH] < threshold[Priority.MEDIUM] < threshold[Priority.LOW]


def test_only_the_ingress_has_an_hpa_and_it_stays_within_the_reply_partitions() -> None:
    api = api_deployment()
    hpa = only(of_kind("HorizontalPodAutoscaler"))["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": api["metadata"]["name"]}
    assert "replicas" not in api["spec"]
    replies = BY_GROUP[Group.INGRESS_REPLIES.value]
    assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"] <= replies.max_replicas
    # a surge pod would be one member more than reply partitions at full scale
    assert api["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0


def test_config_and_secret_hold_only_real_settings_and_secrets_only_in_the_secret() -> None:
    config, secret = config_data(), secret_data()
    assert set(config) <= VALID_ENV, sorted(set(config) - VALID_ENV)
    assert set(secret) <= VALID_ENV, sorted(set(secret) - VALID_ENV)
    secret_env = {f"{ENV_PREFIX}{name}".upper() for name in SECRET_FIELDS}
    assert not set(config) & secret_env, "a secret setting in the ConfigMap"
    assert secret_env | {f"{ENV_PREFIX}S3_ACCESS_KEY"} <= set(secret)
    assert all("REPLACE_ME" in value for value in secret.values()), "Secret values must be marked placeholders"
    settings = k8s_settings()
    # external servers, so nothing local is started; a real cluster's durability settings
    assert settings.kafka_bootstrap and settings.cassandra_hosts and settings.s3_endpoint
    assert (settings.default_replication_factor, settings.default_min_insync_replicas) == (3, 2)
    replication = ast.literal_eval(settings.cassandra_replication)
    assert sum(v for k, v in replication.items() if k != "class" and isinstance(v, int)) >= 3
    assert settings.api_host == "0.0.0.0"
    # the placeholder admin key cannot authenticate anyone
    assert not re.fullmatch(r"sk_live_[A-Za-z0-9]{32}", settings.admin_api_key.get_secret_value())


def test_workloads_take_settings_from_the_configmap_and_the_secret() -> None:
    config_name = only(of_kind("ConfigMap"))["metadata"]["name"]
    secret_name = only(of_kind("Secret"))["metadata"]["name"]
    for kind in ("Deployment", "Job"):
        for obj in of_kind(kind):
            for container in obj["spec"]["template"]["spec"]["containers"]:
                refs = container["envFrom"]
                assert {"configMapRef": {"name": config_name}} in refs, obj["metadata"]["name"]
                assert {"secretRef": {"name": secret_name}} in refs, obj["metadata"]["name"]
                assert {e["name"] for e in container.get("env", [])} <= VALID_ENV


def test_init_job_applies_topology_then_migrates() -> None:
    job = only(of_kind("Job"))
    command = " ".join(only(job["spec"]["template"]["spec"]["containers"])["command"])
    assert command.index("tributary topology apply") < command.index("tributary db migrate")


def test_ingress_probes_and_ports_point_at_routes_the_app_serves() -> None:
    settings = k8s_settings()
    deployment = api_deployment()
    container = only(containers(deployment))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    routes = app_routes()
    paths: dict[str, str] = {}
    for kind, probe in probes(container):
        assert probe["httpGet"]["path"] in routes, probe
        assert ports[probe["httpGet"]["port"]] == settings.api_port
        paths[kind] = probe["httpGet"]["path"]
    assert {"livenessProbe", "readinessProbe"} <= set(paths)
    assert paths["readinessProbe"] == "/health/ready"  # the one that checks Cassandra and Kafka
    # the start-up budget covers the wait for a reply partition
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] > settings.reply_assignment_timeout_s
    service = only(of_kind("Service"))["spec"]
    assert service["selector"].items() <= pod_labels(deployment).items()
    assert all(p["targetPort"] in ports for p in service["ports"])
    # and those paths answer 200 on a healthy app
    ctx = AppContext(settings=Settings(), store=InMemoryFleetStore(), artifacts=MemoryArtifactStore(),
                     events=RecordingSink(), probes={})
    with TestClient(create_app(ctx.settings, ctx)) as client:
        for path in paths.values():
            assert client.get(path).status_code == 200, path


def test_consumers_have_no_http_port_or_probe() -> None:
    for deployment in consumer_deployments().values():
        container = only(containers(deployment))
        assert "ports" not in container
        for _, probe in probes(container):
            assert "exec" in probe, f"{deployment['metadata']['name']}: no HTTP server to probe"


def test_grace_periods_outlast_the_consumers_shutdown_bounds() -> None:
    from core.serving.service import InferenceService

    settings = k8s_settings()
    consumers = consumer_deployments()
    for group_id, deployment in consumers.items():
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        # Consumers end their graceful stop within TRIBUTARY_SHUTDOWN_TIMEOUT_S (core/shutdown.py):
        # the pod's grace must outlast it, or Kubernetes kills a consumer that is still committing.
        assert grace > settings.shutdown_timeout_s + 10, group_id
        assert grace > 2 * PUBLISHER_CLOSE_S + 10, group_id
        assert grace * 1000 > settings.delivery_timeout_ms
    api = api_deployment()["spec"]["template"]["spec"]
    default_timeout = inspect.signature(InferenceService.infer).parameters["timeout_seconds"].default
    assert api["terminationGracePeriodSeconds"] > int(default_timeout)


def test_every_container_has_requests_and_limits() -> None:
    settings = k8s_settings()
    for kind in ("Deployment", "Job"):
        for obj in of_kind(kind):
            for container in obj["spec"]["template"]["spec"]["containers"]:
                resources = container["resources"]
                for resource in ("cpu", "memory"):
                    request = quantity(resources["requests"][resource])
                    assert 0 < request <= quantity(resources["limits"][resource]), (obj["metadata"]["name"], resource)
    for deployment in consumer_deployments().values():
        if is_inference_worker(containers(deployment)[0]["command"]):
            limit = quantity(only(containers(deployment))["resources"]["limits"]["memory"])
            assert limit > settings.inference_memory_budget_mb * 2**20, "models alone would fill the pod"


# --- Compose ----------------------------------------------------------------------------------

INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?(?P<op>[-?])(?P<arg>[^}]*))?\}")


def compose() -> Obj:
    return only(load_docs(COMPOSE_FILE))


def services() -> dict[str, Obj]:
    return cast(dict[str, Obj], compose()["services"])


def resolve(value: object) -> str:
    """Compose interpolation with the defaults (``${X:-d}`` -> d; ``${X:?e}`` -> a stand-in)."""
    def sub(m: re.Match[str]) -> str:
        if m["op"] == "-":
            return m["arg"]
        return "sk_live_" + "0" * 32 if m["name"].endswith("API_KEY") else "set-by-operator"

    return INTERPOLATION.sub(sub, str(value))


def env_of(service: Obj) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): resolve(v) for k, v in env.items()}


def by_image(prefix: str) -> dict[str, Obj]:
    return {name: s for name, s in services().items() if str(s.get("image", "")).startswith(prefix)}


def ours() -> dict[str, Obj]:
    """Services running the Tributary image."""
    return {name: s for name, s in services().items() if "build" in s}


def command_text(service: Obj) -> str:
    command = service.get("command", [])
    return " ".join(command) if isinstance(command, list) else str(command)


def compose_settings(service: Obj) -> Settings:
    return settings_from_env(env_of(service))


def duration_s(text: str) -> float:
    units = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text))


def test_compose_kafka_is_three_kraft_nodes_with_a_controller_quorum() -> None:
    kafka = by_image("apache/kafka:")
    assert len(kafka) == 3
    envs = {name: env_of(s) for name, s in kafka.items()}
    voters = {e["KAFKA_CONTROLLER_QUORUM_VOTERS"] for e in envs.values()}
    assert len(voters) == 1, "every node must name the same quorum"
    quorum = {int(node_id): host for node_id, host in re.findall(r"(\d+)@([\w.-]+):\d+", voters.pop())}
    assert len(quorum) == 3
    for name, env in envs.items():
        assert "KAFKA_ZOOKEEPER_CONNECT" not in env
        roles = set(env["KAFKA_PROCESS_ROLES"].split(","))
        assert "broker" in roles, name
        node_id = int(env["KAFKA_NODE_ID"])
        if "controller" in roles:
            assert quorum[node_id] == name, f"{name} is controller {node_id} but the quorum says {quorum[node_id]}"
            assert "CONTROLLER://" in env["KAFKA_LISTENERS"]
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3" and env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # topology/ creates topics
        assert "healthcheck" in kafka[name]
    assert {int(e["KAFKA_NODE_ID"]) for e in envs.values()} == set(quorum)
    cluster_ids = {e["CLUSTER_ID"] for e in envs.values()}
    assert len(cluster_ids) == 1
    assert len(base64.urlsafe_b64decode(cluster_ids.pop() + "==")) == 16
    # every Tributary process bootstraps from the brokers' in-network listeners
    advertised = {re.search(r"PLAINTEXT://([\w.-]+:\d+)", e["KAFKA_ADVERTISED_LISTENERS"]).group(1)  # type: ignore[union-attr]
                  for e in envs.values()}
    for name, service in ours().items():
        assert set(compose_settings(service).kafka_bootstrap.split(",")) == advertised, name


def test_compose_cassandra_is_three_nodes_started_one_after_the_other() -> None:
    nodes = {name: s for name, s in services().items()
             if re.fullmatch(r"cassandra:(4\.1|5)(\.\d+)*", str(s.get("image", "")))}
    assert len(nodes) == 3
    envs = {name: env_of(s) for name, s in nodes.items()}
    assert len({e["CASSANDRA_CLUSTER_NAME"] for e in envs.values()}) == 1
    datacentres = {e["CASSANDRA_DC"] for e in envs.values()}
    assert len(datacentres) == 1
    seeds = {e["CASSANDRA_SEEDS"] for e in envs.values()}
    assert len(seeds) == 1 and set(seeds.pop().split(",")) <= set(nodes)
    order = sorted(nodes)
    for i, name in enumerate(order):
        assert "healthcheck" in nodes[name], name
        if i:
            depends = nodes[name].get("depends_on", {})
            assert depends.get(order[i - 1], {}).get("condition") == "service_healthy", name
    for name, service in ours().items():
        settings = compose_settings(service)
        assert set(settings.cassandra_contact_points) == set(nodes), name
        replication = ast.literal_eval(settings.cassandra_replication)
        assert replication["class"] == "NetworkTopologyStrategy"
        assert {k: v for k, v in replication.items() if k != "class"} == {datacentres.copy().pop(): 3}


def test_compose_minio_and_its_bucket_job_match_the_s3_settings() -> None:
    minio_name, minio = only(list(by_image("quay.io/minio/minio:").items()))
    assert "healthcheck" in minio
    job = only(list(by_image("quay.io/minio/mc:").values()))
    assert job["depends_on"][minio_name]["condition"] == "service_healthy"
    assert job.get("restart") == "no"
    raw_minio_env = minio["environment"]
    for name, service in ours().items():
        settings = compose_settings(service)
        assert settings.s3_endpoint.startswith(f"http://{minio_name}:"), name
        assert f"mb --ignore-existing tributary/{settings.s3_bucket}" in command_text(job)
        raw = service["environment"]
        assert raw["TRIBUTARY_S3_ACCESS_KEY"] == raw_minio_env["MINIO_ROOT_USER"]
        assert raw["TRIBUTARY_S3_SECRET_KEY"] == raw_minio_env["MINIO_ROOT_PASSWORD"]


def test_compose_init_job_creates_topics_and_schema_before_the_services_start() -> None:
    init_name = only([name for name, s in ours().items() if "tributary topology apply" in command_text(s)])
    job = services()[init_name]
    text = command_text(job)
    assert text.index("tributary topology apply") < text.index("tributary db migrate")
    assert job["restart"] == "no"
    servers = set(by_image("apache/kafka:")) | {n for n, s in services().items()
                                                  if str(s.get("image", "")).startswith("cassandra:")}
    assert {n for n, d in job["depends_on"].items() if d["condition"] == "service_healthy"} == servers
    for name, service in ours().items():
        if name != init_name:
            assert service["depends_on"][init_name]["condition"] == "service_completed_successfully", name


def test_compose_runs_every_process_of_the_system_from_the_project_image() -> None:
    commands = {name: s["command"] for name, s in ours().items() if cli_args(s["command"])}
    expected = [cli_args(spec.argv) for spec in system_services(Settings())]
    assert all(c[0] == "tributary" for c in commands.values()), "the image's script, not an interpreter path"
    assert sorted(cli_args(c) for c in commands.values()) == sorted(expected)
    for name, service in ours().items():
        assert service["image"] == "tributary:local", name
        build = service["build"]
        assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).resolve() == COMPOSE_DIR / "Dockerfile"


def test_compose_environment_names_are_settings_fields() -> None:
    text = COMPOSE_FILE.read_text()
    interpolated = {m["name"] for m in INTERPOLATION.finditer(text)}
    assert interpolated and interpolated <= VALID_ENV, sorted(interpolated - VALID_ENV)
    for name, service in services().items():
        env = env_of(service)
        tributary_vars = {k for k in env if k.startswith(ENV_PREFIX)}
        assert tributary_vars <= VALID_ENV, (name, sorted(tributary_vars - VALID_ENV))
        if name in ours():
            assert set(env) == tributary_vars, f"{name}: only TRIBUTARY_* settings"
            settings = compose_settings(service)  # validates every value
            assert (settings.default_replication_factor, settings.default_min_insync_replicas) == (3, 2)


def test_the_grpc_port_is_declared_where_the_ingress_listens() -> None:
    """The ingress serves gRPC beside REST (TRIBUTARY_GRPC_PORT): the container declares the port,
    the Service exposes it as h2c, and compose publishes it."""
    settings = k8s_settings()
    container = only(containers(api_deployment()))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert settings.grpc_port > 0 and ports["grpc"] == settings.grpc_port
    service = only([s for s in of_kind("Service") if s["metadata"]["name"] == "api"])
    grpc_port = only([p for p in service["spec"]["ports"] if p["name"] == "grpc"])
    assert grpc_port["targetPort"] == "grpc" and grpc_port["appProtocol"] == "kubernetes.io/h2c"
    api = only([s for s in ours().values() if cli_args(s["command"]) == list(API_ARGS)])
    assert f"{compose_settings(api).grpc_port}:{compose_settings(api).grpc_port}" in api["ports"]


def test_compose_api_is_reachable_and_its_healthcheck_hits_a_real_route() -> None:
    api = only([s for s in ours().values() if cli_args(s["command"]) == list(API_ARGS)])
    settings = compose_settings(api)
    assert settings.api_host == "0.0.0.0"
    assert any(str(p).endswith(f":{settings.api_port}") for p in api["ports"])
    url = only([part for part in api["healthcheck"]["test"] if "http://" in part])
    match = re.search(r"http://[\w.-]+:(\d+)(/[\w/.-]*)", url)
    assert match and int(match.group(1)) == settings.api_port
    assert match.group(2) in app_routes()


def test_compose_stop_grace_outlasts_the_consumers_shutdown_bounds() -> None:
    bound = Settings().shutdown_timeout_s
    for name, service in ours().items():
        command = service["command"]
        if not cli_args(command):  # the one-shot init job (a shell) stops by itself
            continue
        grace = duration_s(service["stop_grace_period"])
        assert grace > bound + 10 and grace > 2 * PUBLISHER_CLOSE_S + 10, name


def test_dockerfile_builds_the_project_with_the_pinned_cpu_torch() -> None:
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.MULTILINE)
    assert re.search(r"pip install \.(\s|$)", dockerfile)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    torch_pin = only([d for d in pyproject["project"]["dependencies"] if d.startswith("torch==")])
    assert re.search(rf"pip install .*{re.escape(torch_pin)}(\s|$)", dockerfile, re.MULTILINE)
    assert "whl/cpu" in dockerfile
    # the image's default process is a `tributary` subcommand, like every `command:` that overrides it
    cmd = json.loads(only(re.findall(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)))
    assert cli_args(cmd) == list(API_ARGS)
