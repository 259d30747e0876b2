"""The `tributary` command line: every subcommand has --help, and the processes of the system
(`api`, `worker`, `processor`) start through it with the settings and arguments they were given."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import click
import pytest
from click.testing import CliRunner

from cli.main import main
from cli.services import API_ARGS, GROUP_ARGS, system_services
from consumers.processors.kinds import PROCESSORS
from settings import Settings
from topology.topics import Priority

pytestmark = pytest.mark.unit


def every_command(group: click.Group = main, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from every_command(command, (*path, name))


def resolve(args: list[str]) -> tuple[click.Command, list[str]]:
    """The subcommand ``args`` name and the arguments left for it (no callback runs)."""
    command: click.Command = main
    rest = list(args)
    while isinstance(command, click.Group) and rest and rest[0] in command.commands:
        command = command.commands[rest.pop(0)]
    return command, rest


@pytest.mark.parametrize("path", list(every_command()), ids=" ".join)
def test_every_subcommand_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ") and " ".join(path) in result.output.splitlines()[0]
    command, _ = resolve(list(path))
    assert (command.help or "").strip(), f"tributary {' '.join(path)} has no help text"


def test_the_process_commands_are_listed_and_explained() -> None:
    top = CliRunner().invoke(main, ["--help"]).output
    for name in ("api", "worker", "processor"):
        assert f"  {name} " in top
    processor_help = CliRunner().invoke(main, ["processor", "--help"]).output
    for kind in PROCESSORS.values():  # each name with its group and topic
        assert kind.name in processor_help and kind.group.group_id in processor_help
        assert kind.topic.name in processor_help
    worker_help = CliRunner().invoke(main, ["worker", "--help"]).output
    assert all(p.value in worker_help for p in Priority)


def test_every_process_of_the_system_is_a_valid_invocation() -> None:
    """What `tributary run`, `tributary workers`, compose and Kubernetes start parses as a subcommand."""
    invocations = [list(API_ARGS), *(list(args) for args in GROUP_ARGS.values())]
    for spec in system_services(Settings()):
        assert spec.argv[1:3] == ["-m", "cli"], spec  # `tributary` on this interpreter
        invocations.append(spec.argv[3:])
    for args in invocations:
        command, rest = resolve(args)
        assert command.name in {"api", "worker", "processor", "trainer"}, args
        command.make_context(command.name or "", rest)  # raises on an unknown option or choice


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...]]]:
    """Replace the entry functions of the processes with recorders."""
    import api.serve
    import consumers.inference.worker
    import consumers.processors.fleet

    calls: list[tuple[str, tuple[Any, ...]]] = []

    def recorder(name: str) -> Any:
        def record(*args: Any) -> int:
            calls.append((name, args))
            return 0

        return record

    monkeypatch.setattr(api.serve, "main", recorder("api"))
    monkeypatch.setattr(consumers.inference.worker, "main", recorder("worker"))
    monkeypatch.setattr(consumers.processors.fleet, "main", recorder("processor"))
    return calls


def test_process_commands_call_their_entry_functions(started: list[tuple[str, tuple[Any, ...]]]) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["api"]).exit_code == 0
    assert runner.invoke(main, ["worker", "--priority", "low"]).exit_code == 0
    assert runner.invoke(main, ["processor", "rounds"]).exit_code == 0
    assert [(name, args[1:]) for name, args in started] == [
        ("api", ()), ("worker", (Priority.LOW,)), ("processor", ("rounds",))]
    assert all(isinstance(args[0], Settings) for _, args in started)


def test_process_commands_refuse_what_they_do_not_know(started: list[tuple[str, tuple[Any, ...]]]) -> None:
    runner = CliRunner()
    for args in (["worker"], ["worker", "--priority", "urgent"], ["processor"], ["processor", "jobs"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (args, result.output)  # click's usage error, before anything starts
    assert started == []


def test_a_worker_exit_code_is_the_process_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    import consumers.inference.worker

    monkeypatch.setattr(consumers.inference.worker, "main", lambda settings, priority: 1)
    assert CliRunner().invoke(main, ["worker", "--priority", "high"]).exit_code == 1


def test_topology_apply_and_verify_print_json(monkeypatch: pytest.MonkeyPatch) -> None:
    import topology.admin
    from topology.admin import ApplyReport, Drift

    drift = Drift("t.x", "partitions_high", "3", "6", "partitions can never be removed")
    monkeypatch.setattr(topology.admin, "apply", lambda _: ApplyReport(created=["t.a"], unfixable=[drift]))
    monkeypatch.setattr(topology.admin, "verify", lambda _: [drift])
    applied = CliRunner().invoke(main, ["topology", "apply", "--json"])
    assert applied.exit_code == 2  # unfixable drift, as without --json
    report = json.loads(applied.output)
    assert report["created"] == ["t.a"] and report["unfixable"] == [drift.row()]
    verified = CliRunner().invoke(main, ["topology", "verify", "--json"])
    assert verified.exit_code == 1 and json.loads(verified.output) == {"drift": [drift.row()]}
    monkeypatch.setattr(topology.admin, "verify", lambda _: [])
    clean = CliRunner().invoke(main, ["topology", "verify", "--json"])
    assert clean.exit_code == 0 and json.loads(clean.output) == {"drift": []}


def test_db_migrate_prints_json(monkeypatch: pytest.MonkeyPatch) -> None:
    import core.cassandra.migrate
    import core.cassandra.session
    from core.cassandra.migrate import Migration

    class Session:
        class cluster:  # the driver names it so
            @staticmethod
            def shutdown() -> None:
                pass

    monkeypatch.setattr(core.cassandra.session, "connect", lambda *_: Session())
    monkeypatch.setattr(core.cassandra.migrate, "migrate",
                        lambda *_: [Migration(6, "retraining_decisions", [], "sum")])
    monkeypatch.setattr(core.cassandra.migrate, "current_version", lambda *_: 6)
    result = CliRunner().invoke(main, ["db", "migrate", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"keyspace": Settings().cassandra_keyspace, "version": 6,
                                         "applied": ["0006_retraining_decisions"]}
