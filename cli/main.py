"""``tributary``: the operator's command line (local stack, topology, migrations, running) and the one
way every process of the system starts (``api``, ``worker``, ``processor``)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from consumers.processors.kinds import PROCESSORS
from infra.local_stack import LocalStack, StackError
from settings import get_settings
from topology.topics import Priority

console = Console()


def _progress(line: str) -> None:
    console.print(f"[cyan]•[/cyan] {line}")


@click.group()
def main() -> None:
    """Tributary: event-driven ML platform for device fleets."""


@main.command()
def up() -> None:
    """Install what is missing and start the local broker, Cassandra and S3 (idempotent)."""
    try:
        started = LocalStack(get_settings()).up(_progress)
    except StackError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)
    console.print(f"started: {', '.join(started) or 'nothing (all running)'}")


@main.command()
def down() -> None:
    """Stop exactly the local servers that `up` started (by pid)."""
    stopped = LocalStack(get_settings()).down(_progress)
    console.print(f"stopped: {', '.join(stopped) or 'nothing'}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(as_json: bool) -> None:
    """Say what runs where: pid, endpoint, health."""
    rows = LocalStack(get_settings()).status()
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in rows], indent=2))
        return
    table = Table(title="Tributary local stack")
    for col in ("server", "endpoint", "managed", "pid", "running", "healthy"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.name, r.endpoint, "local" if r.managed else "external", str(r.pid or "-"),
            _yes(r.running), _yes(r.healthy),
        )
    console.print(table)
    if not all(r.healthy for r in rows):
        sys.exit(1)


def _yes(flag: bool) -> str:
    return "[green]yes[/green]" if flag else "[red]no[/red]"


# --- the processes of the system: compose, Kubernetes, `run` and `workers` start these -------------


@main.command(short_help="Serve the ingress (REST and gRPC).")
def api() -> None:
    """Serve the ingress: REST on TRIBUTARY_API_HOST:TRIBUTARY_API_PORT and gRPC on TRIBUTARY_GRPC_PORT.

    Stateless; each replica is a member of the `ingress-replies` group (its sync-inference replies).
    Logs are JSON lines on stderr; SIGTERM lets in-flight requests finish.
    """
    from api.serve import main as serve

    serve(get_settings())


@main.command(short_help="Run one inference worker of one priority.")
@click.option("--priority", required=True, type=click.Choice([p.value for p in Priority]),
              help="Which request topic to serve; each priority is its own group, scaled on its own.")
def worker(priority: str) -> None:
    """Run one inference worker: a member of the `inference-workers-<priority>` group.

    Answers the priority's inference requests and async jobs, applies model load/unload commands.
    Logs are JSON lines on stderr; SIGTERM finishes in-flight requests, commits and leaves the group.
    """
    from consumers.inference.worker import main as serve

    sys.exit(serve(get_settings(), Priority(priority)))


@main.command(short_help="Run one trainer (LoRA training jobs).")
def trainer() -> None:
    """Run one trainer: a member of the `trainers` group, running one seed 003 training job at a time.

    Commits a job's message only when the job ends, so a killed trainer's job is redelivered and
    resumes from its newest checkpoint. SIGTERM stops the run at the next batch and leaves the group.
    """
    from consumers.training.worker import main as serve

    sys.exit(serve(get_settings()))


def _processor_help() -> str:
    rows = "\n".join(f"  {k.name:<16} group {k.group.group_id}, reads {k.topic.name}\n  {'':<16} {k.summary}"
                     for k in PROCESSORS.values())
    return ("Run one state processor (a faust app): a member of its consumer group.\n\n"
            f"\b\n{rows}\n\n"
            "Logs are JSON lines on stderr; SIGTERM flushes events, commits and leaves the group.")


@main.command(help=_processor_help(), short_help=f"Run one state processor: {', '.join(PROCESSORS)}.")
@click.argument("name", type=click.Choice(list(PROCESSORS)))
def processor(name: str) -> None:
    from consumers.processors.fleet import main as serve

    serve(get_settings(), name)


@main.group()
def db() -> None:
    """Cassandra schema."""


@db.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of progress lines.")
def migrate(as_json: bool) -> None:
    """Create the keyspace and apply pending CQL migrations (idempotent)."""
    from core.cassandra.migrate import current_version
    from core.cassandra.migrate import migrate as run_migrations
    from core.cassandra.session import connect

    settings = get_settings()
    session = connect(settings)
    try:
        applied = run_migrations(session, settings)
        version = current_version(session, settings)
        if as_json:
            click.echo(json.dumps({"keyspace": settings.cassandra_keyspace, "version": version,
                                   "applied": [f"{m.version:04d}_{m.name}" for m in applied]}, indent=2))
            return
        for m in applied:
            _progress(f"applied {m.version:04d}_{m.name}")
        console.print(f"keyspace {settings.cassandra_keyspace} at version {version} ({len(applied)} applied)")
    finally:
        session.cluster.shutdown()


@main.group()
def topology() -> None:
    """Kafka topics: apply and verify the declared topology."""


@topology.command("apply")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def topology_apply(as_json: bool) -> None:
    """Create missing topics, raise low partition counts, report drift that cannot be fixed (exit 2)."""
    from topology.admin import apply

    report = apply(get_settings())
    if as_json:
        click.echo(json.dumps({"created": report.created, "partitions_raised": report.partitions_raised,
                               "configs_altered": report.configs_altered,
                               "unfixable": [d.row() for d in report.unfixable], "notes": report.notes}, indent=2))
    else:
        _print_rows("topology apply", report.rows())
    if report.unfixable:
        sys.exit(2)


@topology.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def topology_verify(as_json: bool) -> None:
    """Exit non-zero on any drift between the declared and the actual topics."""
    from topology.admin import verify

    drift = verify(get_settings())
    if as_json:
        click.echo(json.dumps({"drift": [d.row() for d in drift]}, indent=2))
        sys.exit(1 if drift else 0)
    if drift:
        _print_rows("topology drift", [d.row() for d in drift])
        sys.exit(1)
    console.print("[green]topology matches the declaration[/green]")


@main.command()
@click.option("--group", "group_ids", multiple=True, help="Only these consumer groups (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def lag(group_ids: tuple[str, ...], as_json: bool) -> None:
    """Consumer lag per group, topic and partition, with totals per group."""
    from topology.groups import BY_GROUP, GROUPS
    from topology.lag import all_lag, totals

    unknown = [g for g in group_ids if g not in BY_GROUP]
    if unknown:
        raise click.BadParameter(f"unknown group(s) {unknown}; known: {sorted(BY_GROUP)}")
    groups = tuple(BY_GROUP[g] for g in group_ids) or GROUPS
    rows = all_lag(get_settings(), groups)
    by_group = totals(rows)
    if as_json:
        click.echo(json.dumps({"partitions": [r.row() for r in rows], "totals": by_group,
                               "total": sum(by_group.values())}, indent=2))
        return
    _print_rows("consumer lag", [r.row() for r in rows if r.lag or group_ids])
    _print_rows("lag per group", [{"group": g, "lag": n} for g, n in by_group.items()])
    console.print(f"total lag: {sum(by_group.values())}")


@main.command()
@click.option("--group", "group_id", required=True, help="Consumer group, e.g. device-processor.")
@click.option("--replicas", type=click.IntRange(1, 64), default=1, show_default=True)
def workers(group_id: str, replicas: int) -> None:
    """Run N members of one consumer group; restart one that crashes; Ctrl-C stops them gracefully."""
    from cli.services import GROUP_COMMANDS, group_replicas
    from cli.supervisor import Supervisor
    from topology.groups import BY_GROUP

    if group_id not in GROUP_COMMANDS:
        raise click.BadParameter(f"choose one of {sorted(GROUP_COMMANDS)}", param_hint="--group")
    settings = get_settings()
    limit = BY_GROUP[group_id].max_replicas
    if replicas > limit:
        console.print(f"[yellow]note:[/yellow] {group_id} reads {limit} partition(s); "
                      f"{replicas - limit} replica(s) will sit idle")
    supervisor = Supervisor(group_replicas(group_id, replicas), settings.data_dir / "logs", progress=_progress)
    supervisor.run_forever()


@main.group()
def rounds() -> None:
    """Training rounds, through the REST API (the operator never edits the database)."""


@rounds.command("cancel")
@click.argument("round_id")
@click.option("--url", default=None, help="API base URL (default: http://TRIBUTARY_API_HOST:TRIBUTARY_API_PORT).")
@click.option("--api-key", default=None, help="An operator key (default: TRIBUTARY_ADMIN_API_KEY).")
@click.option("--json", "as_json", is_flag=True, help="Print the round as JSON instead of a table.")
def rounds_cancel(round_id: str, url: str | None, api_key: str | None, as_json: bool) -> None:
    """Cancel a pending, active or aggregating round: it frees the active slot and takes no more updates."""
    from sdk.client import ApiError, TributaryClient

    settings = get_settings()
    base_url = url or f"http://{settings.api_host}:{settings.api_port}"
    with TributaryClient(base_url, api_key or settings.admin_api_key.get_secret_value() or None) as client:
        try:
            round_ = client.cancel_round(round_id)
        except ApiError as exc:
            console.print(f"[red]error:[/red] {exc}")
            sys.exit(1)
    if as_json:
        click.echo(json.dumps(round_, indent=2))
        return
    _print_rows("round cancelled", [{k: round_.get(k) for k in (
        "id", "round_number", "status", "participated_devices", "completed_devices", "failure_reason")}])


def _operator_client(url: str | None, api_key: str | None) -> Any:
    from sdk.client import TributaryClient

    settings = get_settings()
    base_url = url or f"http://{settings.api_host}:{settings.api_port}"
    return TributaryClient(base_url, api_key or settings.admin_api_key.get_secret_value() or None)


_URL = click.option("--url", default=None, help="API base URL (default: http://TRIBUTARY_API_HOST:TRIBUTARY_API_PORT).")
_KEY = click.option("--api-key", default=None, help="An operator key (default: TRIBUTARY_ADMIN_API_KEY).")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
KEY_COLUMNS = ("key_id", "role", "subject", "label", "created_at", "created_by", "revoked_at", "rate_limit_per_minute")


def _call(fn: Any, *args: Any) -> Any:
    from sdk.client import ApiError

    try:
        return fn(*args)
    except ApiError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)


def _print_key(title: str, body: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    _print_rows(title, [{k: body.get(k) for k in KEY_COLUMNS if k in body}])
    if body.get("api_key"):
        console.print(f"api_key: [bold]{body['api_key']}[/bold]  (shown once: store it now)")
    propagation = body.get("propagation")
    if propagation and not propagation.get("confirmed"):
        console.print(f"[yellow]not every replica confirmed the old key's revocation:[/yellow] {propagation}")


ROLLOUT_COLUMNS = ("rollout_id", "model_id", "version", "baseline_version", "status", "current_stage",
                   "current_percent", "reason", "updated_at")


@main.group()
def rollouts() -> None:
    """Staged rollouts of model versions to devices, through the REST API."""


@rollouts.command("list")
@click.option("--model", "model_id", default=None, help="Only this model's rollouts.")
@_URL
@_KEY
@_JSON
def rollouts_list(model_id: str | None, url: str | None, api_key: str | None, as_json: bool) -> None:
    """Every rollout, newest first."""
    with _operator_client(url, api_key) as client:
        rows = _call(client.list_rollouts, model_id)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _print_rows("rollouts", [{k: row.get(k) for k in ROLLOUT_COLUMNS} for row in rows])


@rollouts.command("show")
@click.argument("rollout_id")
@_URL
@_KEY
@_JSON
def rollouts_show(rollout_id: str, url: str | None, api_key: str | None, as_json: bool) -> None:
    """One rollout: its stages, each stage's last gate judgement, telemetry and devices per version."""
    with _operator_client(url, api_key) as client:
        body = _call(client.get_rollout, rollout_id)
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    _print_rows("rollout", [{k: body.get(k) for k in ROLLOUT_COLUMNS}])
    _print_rows("stages", [{"stage": i, **stage, "gate": (body["gates"].get(str(i)) or {}).get("verdict"),
                            "why": (body["gates"].get(str(i)) or {}).get("reason")}
                           for i, stage in enumerate(body["stages"])])
    _print_rows("telemetry of the current stage", [{"version": v, **t} for v, t in body["telemetry"].items()])
    devices = body["devices"]
    _print_rows(f"devices (cohort {devices['cohort']})", [
        {"version": v, "assigned": devices["assigned"].get(v, 0), "installed": devices["installed"].get(v, 0)}
        for v in sorted(set(devices["assigned"]) | set(devices["installed"]), key=int)])


@rollouts.command("command")
@click.argument("rollout_id")
@click.argument("command", type=click.Choice(["pause", "resume", "advance", "rollback"]))
@click.option("--reason", default=None, help="Why, for the event and the audit trail.")
@_URL
@_KEY
def rollouts_command(rollout_id: str, command: str, reason: str | None, url: str | None,
                     api_key: str | None) -> None:
    """Pause, resume, advance or roll back a rollout (the rollouts processor applies it)."""
    with _operator_client(url, api_key) as client:
        body = _call(client.command_rollout, rollout_id, command, reason)
    console.print(body["message"])


@main.group()
def keys() -> None:
    """API keys (device, service, operator), through the REST API: the key is shown once, never stored."""


@keys.command("create")
@click.option("--role", required=True, type=click.Choice(["device", "service", "operator"]))
@click.option("--subject", default=None, help="Device id for a device key; a name otherwise (default: the label).")
@click.option("--label", default=None, help="What the key is for.")
@click.option("--rate-limit", "rate_limit", type=click.IntRange(1), default=None,
              help="Requests per minute for this key (default: its role's).")
@_URL
@_KEY
@_JSON
def keys_create(role: str, subject: str | None, label: str | None, rate_limit: int | None, url: str | None,
                api_key: str | None, as_json: bool) -> None:
    """Create a key; its secret is printed this once."""
    with _operator_client(url, api_key) as client:
        body = _call(client.create_key, role, subject, label, rate_limit)
    _print_key("key created", body, as_json)


@keys.command("list")
@click.option("--subject", default=None, help="Only this subject's keys (e.g. a device id).")
@_URL
@_KEY
@_JSON
def keys_list(subject: str | None, url: str | None, api_key: str | None, as_json: bool) -> None:
    """Every key (never a secret or a hash)."""
    with _operator_client(url, api_key) as client:
        rows = _call(client.list_keys, subject)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _print_rows("keys", [{k: row.get(k) for k in KEY_COLUMNS} for row in rows])


@keys.command("rotate")
@click.argument("key_id")
@_URL
@_KEY
@_JSON
def keys_rotate(key_id: str, url: str | None, api_key: str | None, as_json: bool) -> None:
    """Replace a key: a new one with the same role, subject and limit; the old one stops working."""
    with _operator_client(url, api_key) as client:
        body = _call(client.rotate_key, key_id)
    _print_key("key rotated", body, as_json)


@keys.command("revoke")
@click.argument("key_id")
@_URL
@_KEY
@_JSON
def keys_revoke(key_id: str, url: str | None, api_key: str | None, as_json: bool) -> None:
    """Revoke a key; answers once every ingress replica refuses it (exit 1 if that was not confirmed)."""
    with _operator_client(url, api_key) as client:
        body = _call(client.revoke_key, key_id)
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    _print_rows("key revoked", [{k: row.get(k) for k in KEY_COLUMNS} for row in body["revoked"]])


@main.group()
def devices() -> None:
    """Devices, through the REST API."""


@devices.command("delete")
@click.argument("device_id")
@_URL
@_KEY
@_JSON
def devices_delete(device_id: str, url: str | None, api_key: str | None, as_json: bool) -> None:
    """Delete a device: its row goes, its keys stop working on every replica, an event says so."""
    with _operator_client(url, api_key) as client:
        body = _call(client.delete_device, device_id)
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    _print_rows("device deleted", [{"device_id": body["device_id"],
                                    "revoked_keys": ", ".join(k["key_id"] for k in body["revoked"])}])


@main.group()
def audit() -> None:
    """The audit trail."""


@audit.command("replay")
@click.option("--from", "start", required=True, type=click.DateTime(), help="Start (UTC), e.g. 2026-11-24T10:00:00")
@click.option("--to", "end", required=True, type=click.DateTime(), help="End (UTC), inclusive")
@click.option("--filter", "filters", multiple=True, help="field=prefix, e.g. actor=key_ab or action=round.")
@click.option("--verify", is_flag=True, help="Verify the hash chains; exit 1 at the first broken link.")
@click.option("--out", type=click.File("w"), default="-", help="JSON lines go here (default stdout).")
def audit_replay(start: Any, end: Any, filters: tuple[str, ...], verify: bool, out: Any) -> None:
    """Print (or write) the audit records of a time window as JSON lines, optionally verifying them."""
    from core.audit import verify_chain
    from core.audit_replay import matches, read_audit
    from schemas.codec import Codec

    settings = get_settings()
    conditions = dict(f.split("=", 1) for f in filters)
    codec = Codec()
    seen: list[dict[str, Any]] = []
    count = 0
    for record in read_audit(settings, start, end, codec=codec):
        if verify:
            seen.append(record)  # the chain is verified over every record, filters only shape the output
        if matches(record, conditions):
            out.write(json.dumps(codec.to_json("audit_event", record)) + "\n")
            count += 1
    err = Console(stderr=True)
    err.print(f"{count} record(s)")
    if verify:
        key = settings.audit_hmac_key.get_secret_value().encode() or None
        result = verify_chain(seen, key, from_start=False)
        if not result.ok and result.first_broken is not None:
            broken = result.first_broken
            err.print(f"[red]chain broken[/red] at {broken.chain_id} seq {broken.seq}: {broken.reason}")
            sys.exit(1)
        err.print(f"[green]verified[/green] {result.checked} record(s) in {result.chains} chain(s)")


@main.group()
def dlq() -> None:
    """Dead-letter topics: what is in them, and sending it back."""


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def dlq_list(as_json: bool) -> None:
    """Messages waiting in each group's dead-letter topic."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from topology.groups import GROUPS
    from topology.lag import log_end

    settings = get_settings()
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "tributary-dlq-list"})
    rows = []
    try:
        for group in GROUPS:
            topic = group.dead_letters.full_name(settings)
            total: int | str = 0
            try:
                for partition in range(group.dead_letters.partitions):
                    low, high = log_end(consumer, TopicPartition(topic, partition))
                    total = int(total) + max(0, high - low)
            except KafkaException:
                total = "topic missing (run: tributary topology apply)"
            rows.append({"group": group.group_id, "dead-letter topic": topic, "messages": total})
    finally:
        consumer.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _print_rows("dead letters", rows)


@dlq.command("redrive")
@click.argument("group_id")
@click.option("--limit", type=int, default=None, help="At most this many messages.")
@click.option("--dry-run", is_flag=True, help="Count what would be sent back; send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def dlq_redrive(group_id: str, limit: int | None, dry_run: bool, as_json: bool) -> None:
    """Send a group's dead letters back to the topics they came from."""
    from messaging.redrive import redrive
    from topology.topics import dead_letter_topic

    settings = get_settings()
    report = redrive(settings, dead_letter_topic(group_id).full_name(settings), limit=limit, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps({"by_origin": report.by_origin, "redriven": report.redriven,
                               "skipped": report.skipped, "dry_run": dry_run}, indent=2))
        return
    _print_rows("redrive", [{"origin": k, "messages": v} for k, v in report.by_origin.items()])
    console.print(f"redriven: {report.redriven}, skipped (no origin header): {report.skipped}"
                  + (" (dry run)" if dry_run else ""))


def _print_rows(title: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        console.print(f"{title}: nothing to do")
        return
    table = Table(title=title)
    for col in rows[0]:
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)


@main.command()
def run() -> None:
    """Start the local stack, apply topology and migrations, run the API and one of each consumer.

    Ctrl-C stops the services and the servers this command started.
    """
    import os

    from rich.panel import Panel

    from cli.services import system_services
    from cli.supervisor import Supervisor
    from core.api_keys import new_api_key

    settings = get_settings()
    stack = LocalStack(settings)
    try:
        started = stack.up(_progress)
    except StackError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)
    try:
        ctx = click.get_current_context()
        ctx.invoke(migrate)
        from topology.admin import apply

        report = apply(settings)
        _print_rows("topology apply", report.rows())  # drift it cannot fix is shown, not fatal here
        admin_key = settings.admin_api_key.get_secret_value()
        env: dict[str, str] = {}
        if not admin_key:
            admin_key = new_api_key()
            env["TRIBUTARY_ADMIN_API_KEY"] = admin_key
            os.environ["TRIBUTARY_ADMIN_API_KEY"] = admin_key
        supervisor = Supervisor(system_services(settings, env), settings.data_dir / "logs", progress=_progress)
        rows = "\n".join(f"{s.name:10} {s.endpoint}" for s in stack.status())
        console.print(
            Panel(
                f"API        http://{settings.api_host}:{settings.api_port}  (docs: /docs)\n"
                + (f"gRPC       {settings.api_host}:{settings.grpc_port}  (modelmora.v1, reflection on)\n"
                   if settings.grpc_port else "")
                + f"{rows}\n"
                f"logs       {settings.data_dir / 'logs'}\n"
                f"operator API key: [bold]{admin_key}[/bold]\n\nCtrl-C stops everything.",
                title="Tributary is running",
            )
        )
        supervisor.run_forever()
    finally:
        for server in stack:
            if server.name in started:
                server.stop()
                _progress(f"{server.name}: stopped")

